"""The account of a corpus output: manifest.json (counts, quarantine by reason, mix, latent statistics) and
its printed form. It is computed from the tables themselves, so it covers earlier runs too."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict

import numpy as np

from pipelines import storage
from pipelines.corpus.captions import mix_report
from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.ledger import ledger_of, read_account
from schemas import SCHEMA_VERSION, constants
from schemas.manifest import MANIFEST


def build_manifest(config: CorpusConfig, kit, sources: list[dict], dims: dict, latent: np.ndarray,
              run: Counter, wall: float) -> dict:
    """The account over the whole output (earlier runs included), from the tables themselves."""
    corpus, quarantine = read_account(config.output)
    ledger = ledger_of(corpus, quarantine)
    previous = _previous_manifest(config.output)
    stats = np.asarray(previous.get("latent_stats", {}).get("_sums", [0.0, 0.0, 0]), float) + latent
    mean = stats[0] / stats[2] if stats[2] else 0.0
    std = float(np.sqrt(max(stats[1] / stats[2] - mean**2, 0.0))) if stats[2] else 0.0
    scaling = vae_scaling_factor(kit)
    sources_by_id = {s["track_id"] for s in sources}
    incomplete = sorted(t for t in sources_by_id if not ledger.complete(t))
    hours = sum(corpus["duration_seconds"]) / 3600
    return {
        "schema_version": SCHEMA_VERSION,
        "kit": config.kit,
        "kit_models": kit.models(),
        "vae_scaling_factor": scaling,
        "t5_dim": dims["t5_dim"], "clap_dim": dims["clap_dim"],
        "config": asdict(config),
        "counts": {
            "inputs": len(sources),
            "tracks_ok": len(set(corpus["track_id"]) & sources_by_id),
            "clips": len(corpus["track_id"]),
            "hours": round(hours, 4),
            "quarantined": dict(sorted(Counter(quarantine["reason"]).items())),
            "incomplete_tracks": len(incomplete),
            "this_run": {"items": run["items"], "clips": run["clips"]},
        },
        "incomplete": incomplete[:100],
        "splits": dict(Counter(corpus["split"])),
        "caption_mix": {**mix_report(corpus["caption_source"]),
                        "target_original_probability": config.original_caption_probability},
        "latent_stats": {"mean": mean, "std": std, "scaled_std": std * scaling,
                         "_sums": stats.tolist()},
        "wall_seconds": round(wall, 2),
        "throughput": {"clips_per_second": round(run["clips"] / wall, 3) if wall else 0.0,
                       "audio_seconds_per_second": round(run["clips"] * constants.CLIP_SECONDS / wall, 2) if wall else 0.0},
    }


def vae_scaling_factor(kit) -> float:
    """From the VAE's config alone (no weights loaded): training multiplies latents by it."""
    from diffusers import AutoencoderKL

    ref = kit.vae
    config = AutoencoderKL.load_config(ref.location(), **({"subfolder": ref.subfolder} if ref.subfolder else {}))
    return float(config["scaling_factor"])


def _previous_manifest(output: str) -> dict:
    uri = storage.join(output, MANIFEST)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else {}


def format_account(manifest: dict) -> str:
    c = manifest["counts"]
    lines = [
        f"inputs            {c['inputs']}",
        f"tracks ok         {c['tracks_ok']}",
        f"clips             {c['clips']}  ({c['hours']:.3f} h of audio; splits {manifest['splits']})",
        f"quarantined       {sum(c['quarantined'].values())}  " + ", ".join(f"{k}: {v}" for k, v in c["quarantined"].items()),
        f"incomplete tracks {c['incomplete_tracks']}",
        f"caption mix       {manifest['caption_mix']['original']} original / {manifest['caption_mix']['synthetic']} synthetic",
        f"wall time         {manifest['wall_seconds']:.1f} s, {manifest['throughput']['clips_per_second']} clips/s, "
        f"{manifest['throughput']['audio_seconds_per_second']} s of audio per s",
    ]
    return "\n".join(lines)

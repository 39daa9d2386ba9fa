"""The account of a corpus output: manifest.json (counts, quarantine by reason, mix, latent statistics) and
its printed form. It is computed from the shard index (one entry per committed shard), so it covers earlier
runs too and costs O(shards)."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict

import numpy as np

from pipelines.corpus.captions import mix_report
from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.failures import split_reasons
from pipelines.corpus.index import OutputIndex, sum_map
from pipelines.corpus.ledger import ledger_of
from schemas import SCHEMA_VERSION, constants
from schemas.manifest import CORPUS_DIR, QUARANTINE_DIR


def latent_stats(sums: np.ndarray, sumsqs: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """(mean, std) of every latent value from per-shard sums, sums of squares and counts (pure)."""
    total = float(np.sum(counts))
    if not total:
        return 0.0, 0.0
    mean = float(np.sum(sums)) / total
    return mean, float(np.sqrt(max(float(np.sum(sumsqs)) / total - mean**2, 0.0)))


def build_manifest(config: CorpusConfig, kit, sources: list[dict], dims: dict, index: OutputIndex,
                   run: Counter, wall: float) -> dict:
    """The account over the whole output (earlier runs included), from the shard index."""
    ledger = ledger_of(index)
    corpus, quarantine = index.table(CORPUS_DIR), index.table(QUARANTINE_DIR)
    mean, std = latent_stats(*(corpus[c].to_numpy() for c in ("latent_sum", "latent_sumsq", "latent_count")))
    scaling = vae_scaling_factor(kit)
    sources_by_id = {s["track_id"] for s in sources}
    incomplete = sorted(t for t in sources_by_id if not ledger.complete(t))
    hours = float(np.sum(corpus["duration_seconds"].to_numpy())) / 3600
    splits = {"train": int(np.sum(corpus["train_rows"].to_numpy())), "valid": int(np.sum(corpus["valid_rows"].to_numpy()))}
    return {
        "schema_version": SCHEMA_VERSION,
        "kit": config.kit,
        "kit_models": kit.models(),
        "vae_scaling_factor": scaling,
        "t5_dim": dims["t5_dim"], "clap_dim": dims["clap_dim"],
        "config": asdict(config),
        "counts": {
            "inputs": len(sources),
            "tracks_ok": len(ledger.corpus_tracks & sources_by_id),
            "clips": int(np.sum(corpus["rows"].to_numpy())),
            "hours": round(hours, 4),
            "quarantined": sum_map(quarantine["reasons"]),
            "incomplete_tracks": len(incomplete),
            "this_run": {"items": run["items"], "clips": run["clips"]},
        },
        "incomplete": incomplete[:100],
        "shards": {"corpus": corpus.num_rows, "quarantine": quarantine.num_rows},
        "splits": {k: v for k, v in splits.items() if v},
        "caption_mix": {**mix_report(Counter(sum_map(corpus["caption_sources"])).elements()),
                        "target_original_probability": config.original_caption_probability},
        "latent_stats": {"mean": mean, "std": std, "scaled_std": std * scaling},   # recomputed from the shards
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


def format_account(manifest: dict) -> str:
    """The printed account; the quarantine split into rejects for the input's content (too short, silent, a
    duplicate...) and failures of ours (a model, a worker, our code: pipelines/corpus/failures.py)."""
    c = manifest["counts"]
    content, ours = split_reasons(c["quarantined"])
    lines = [
        f"inputs            {c['inputs']}",
        f"tracks ok         {c['tracks_ok']}",
        f"clips             {c['clips']}  ({c['hours']:.3f} h of audio; splits {manifest['splits']})",
        f"rejected (content) {sum(content.values())}  " + ", ".join(f"{k}: {v}" for k, v in content.items()),
        f"failed (ours)     {sum(ours.values())}  " + ", ".join(f"{k}: {v}" for k, v in ours.items()),
        f"incomplete tracks {c['incomplete_tracks']}",
        f"caption mix       {manifest['caption_mix']['original']} original / {manifest['caption_mix']['synthetic']} synthetic",
        f"wall time         {manifest['wall_seconds']:.1f} s, {manifest['throughput']['clips_per_second']} clips/s, "
        f"{manifest['throughput']['audio_seconds_per_second']} s of audio per s",
    ]
    return "\n".join(lines)

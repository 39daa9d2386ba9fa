"""The corpus pipeline: every stage wired into one streamed Ray Data pipeline, with a resume ledger.

discover -> front end (decode, resample, segment, gates; CPU tasks) -> log-mel (CPU) -> VAE (actors)
-> tags (actors) -> captions (actors, or vLLM) -> 20/80 mix (CPU) -> T5 + CLAP (actors) -> writer (CPU).

Every item a track produces (clip or rejection) reaches the writer, which puts it in `corpus/` or
`quarantine/`; a track is complete when both together hold `track_clip_count` rows of it. A re-run skips
complete tracks and the finished clips of incomplete ones, so nothing is computed or written twice.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from pipelines import constants, storage
from pipelines.dedup import DedupRegistry, start_registry  # noqa: F401 - DedupRegistry lived here
from schemas import CORPUS, NULL_TEXT, QUARANTINE, SCHEMA_VERSION, conform

CORPUS_DIR, QUARANTINE_DIR, NULL_TEXT_DIR, MANIFEST = "corpus", "quarantine", "null_text", "manifest.json"

# Track metadata travels as a dict with these keys only, so every block has the same Arrow struct type.
METADATA_KEYS = ("title", "artist", "album", "genre", "mood", "tags", "caption", "comment", "bpm", "key", "date", "extra")


@dataclass
class CorpusConfig:
    inputs: list[str]
    output: str
    kit: str = "tiny"
    limit: int | None = None
    min_clip_seconds: float = constants.MIN_CLIP_SECONDS
    silence_dbfs: float = -60.0
    valid_fraction: float = 0.02
    original_caption_probability: float = constants.CAPTION_ORIGINAL_PROBABILITY
    caption_backend: str = "transformers"   # or "vllm" (GPU clusters)
    seed: int = 0
    batch_size: int = 8
    actors_per_stage: int = 1
    cpus_per_actor: float = 0.5            # fractional: whole-CPU actors starve the CPU tasks on small machines
    gpus_per_actor: float = 0.0


# ----------------------------------------------------------------------------- ledger (resume)

@dataclass
class Ledger:
    """What an output already holds: item ids per track, expected counts, content hashes of kept tracks."""
    items: dict[str, set[str]]
    expected: dict[str, int]
    hashes: dict[str, str]                    # content_hash -> track_id (kept tracks)

    def complete(self, track_id: str) -> bool:
        return track_id in self.expected and len(self.items.get(track_id, ())) >= self.expected[track_id]


# The columns the account needs: small, read from every output file once per use.
CORPUS_ACCOUNT = ["clip_id", "track_id", "track_clip_count", "content_hash", "duration_seconds", "split", "caption_source"]
QUARANTINE_ACCOUNT = ["item_id", "track_id", "track_clip_count", "reason"]


def read_account(output: str) -> tuple[dict[str, list], dict[str, list]]:
    """(corpus, quarantine) columns of the account over everything the output holds."""
    return (_read_all(storage.join(output, CORPUS_DIR), CORPUS_ACCOUNT),
            _read_all(storage.join(output, QUARANTINE_DIR), QUARANTINE_ACCOUNT))


def ledger_of(corpus: dict[str, list], quarantine: dict[str, list]) -> Ledger:
    items: dict[str, set[str]] = {}
    expected: dict[str, int] = {}
    for ids, tracks, counts in ((corpus["clip_id"], corpus["track_id"], corpus["track_clip_count"]),
                                (quarantine["item_id"], quarantine["track_id"], quarantine["track_clip_count"])):
        for item, track, count in zip(ids, tracks, counts):
            items.setdefault(track, set()).add(item)
            expected[track] = count
    hashes: dict[str, str] = {}
    for content_hash, track in zip(corpus["content_hash"], corpus["track_id"]):
        hashes.setdefault(content_hash, track)
    return Ledger(items, expected, hashes)


def read_ledger(output: str) -> Ledger:
    return ledger_of(*read_account(output))


# ----------------------------------------------------------------------------- stages (thin wiring)

def _normalise_metadata(metadata: dict) -> dict:
    out = {k: "" for k in METADATA_KEYS}
    extra = []
    for key, value in (metadata or {}).items():
        key, value = str(key).lower(), "" if value is None else str(value)
        if key in out and key != "extra":
            out[key] = value
        elif value:
            extra.append(f"{key}={value}")
    out["extra"] = "; ".join(extra)
    return out


def front_end(source: dict, *, registry, min_clip_seconds: float, silence_dbfs: float) -> list[dict]:
    """One track -> its rows; an exact duplicate of an earlier track becomes one track-level rejection."""
    import ray

    from pipelines.frontend import process_track

    rows = process_track(source, min_clip_seconds=min_clip_seconds, silence_dbfs=silence_dbfs,
                         skip_clip_ids=frozenset(source.get("skip_ids", ())))
    content_hash = next((r["content_hash"] for r in rows if r["content_hash"]), "")
    ok = [r for r in rows if not r["reject_reason"]]
    if content_hash and ok:
        original = ray.get(registry.claim.remote(content_hash, source["track_id"], source["source_uri"]))
        if original:
            first = rows[0]
            rows = [dict(first, clip_id=source["track_id"], clip_index=-1, track_clip_count=1,
                         audio=np.zeros(constants.CLIP_SAMPLES, np.float32), duration_seconds=0.0,
                         reject_stage="quality", reject_reason="duplicate", reject_detail=f"same audio as {original}")]
    for row in rows:
        row["metadata"] = _normalise_metadata(row.get("metadata"))
    return rows


def add_log_mel(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from pipelines.audio import clips_to_log_mel

    ok = batch["reject_reason"] == ""
    mel = np.zeros((len(ok), constants.MEL_FRAMES, constants.N_MELS), np.float32)
    if ok.any():
        lengths = np.round(np.asarray(batch["duration_seconds"][ok]) * constants.SAMPLE_RATE).astype(np.int64)
        mel[ok] = clips_to_log_mel(np.asarray(batch["audio"][ok], np.float32), lengths=lengths)
    batch["mel"] = mel
    return batch


def split_of(track_id: str, valid_fraction: float) -> str:
    """By track, deterministic: no track ever has clips in both splits."""
    u = int(hashlib.sha256(f"split:{track_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "valid" if u < valid_fraction else "train"


class CorpusWriter:
    """Writes each batch as one corpus file and one quarantine file, atomically, named by their item ids,
    and returns one summary row per item for the driver's account."""

    def __init__(self, output: str, valid_fraction: float):
        self.output, self.valid_fraction = output, valid_fraction

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["clip_id"])
        ok = np.array([r == "" for r in batch["reject_reason"]], bool)
        self._write_corpus(batch, ok)
        self._write_quarantine(batch, ~ok)
        latent = [np.frombuffer(b, np.float16).astype(np.float64) for b in batch["latent_mean"][ok]] if ok.any() else []
        return {
            "item_id": np.asarray(batch["clip_id"]), "track_id": np.asarray(batch["track_id"]),
            "ok": ok, "reason": np.asarray(batch["reject_reason"]), "stage": np.asarray(batch["reject_stage"]),
            "duration_seconds": np.where(ok, batch["duration_seconds"], 0.0).astype(np.float64),
            "caption_source": np.where(ok, batch.get("caption_source", np.full(n, "")), ""),
            "latent_sum": np.array([float(x.sum()) for x in latent] + [0.0] * (n - len(latent))),
            "latent_sumsq": np.array([float((x * x).sum()) for x in latent] + [0.0] * (n - len(latent))),
            "latent_count": np.array([x.size for x in latent] + [0] * (n - len(latent)), np.int64),
        }

    def _name(self, ids) -> str:
        return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:24] + ".parquet"

    def _write_corpus(self, batch, ok) -> None:
        if not ok.any():
            return
        cols = {name: list(np.asarray(batch[name])[ok]) for name in CORPUS.names if name not in ("split",)}
        cols["split"] = [split_of(t, self.valid_fraction) for t in cols["track_id"]]
        cols["latent_mean"] = [_as_bytes(x) for x in cols["latent_mean"]]
        cols["latent_std"] = [_as_bytes(x) for x in cols["latent_std"]]
        cols["t5"] = [_as_bytes(x) for x in cols["t5"]]
        cols["clap"] = [_as_bytes(x) for x in cols["clap"]]
        cols["tags"] = [list(t) for t in cols["tags"]]
        cols["caption_original"] = [c if c else None for c in cols["caption_original"]]
        table = conform(pa.table({n: cols[n] for n in CORPUS.names}), CORPUS)
        storage.write_parquet_atomic(table, storage.join(self.output, CORPUS_DIR, self._name(cols["clip_id"])))

    def _write_quarantine(self, batch, bad) -> None:
        if not bad.any():
            return
        pick = lambda name: list(np.asarray(batch[name])[bad])  # noqa: E731
        table = conform(pa.table({
            "item_id": pick("clip_id"), "track_id": pick("track_id"), "source_uri": pick("source_uri"),
            "clip_index": pick("clip_index"), "track_clip_count": pick("track_clip_count"),
            "stage": pick("reject_stage"), "reason": pick("reject_reason"), "detail": pick("reject_detail"),
        }), QUARANTINE)
        storage.write_parquet_atomic(table, storage.join(self.output, QUARANTINE_DIR, self._name(table["item_id"].to_pylist())))


def _as_bytes(x) -> bytes:
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    return np.ascontiguousarray(np.asarray(x, np.float16)).tobytes()


# ----------------------------------------------------------------------------- the pipeline

def build_dataset(config: CorpusConfig, sources: list[dict], registry):
    """The streamed Ray Data pipeline from discovered tracks to writer summaries (lazy)."""
    import ray.data

    from pipelines.captions import CaptionStage, add_vllm_caption_stage, mix_captions
    from pipelines.encoders import TextEncoder, VaeEncoder
    from pipelines.tags import TagStage

    env = _worker_env()
    actor = dict(compute=ray.data.ActorPoolStrategy(size=config.actors_per_stage), num_cpus=config.cpus_per_actor,
                 num_gpus=config.gpus_per_actor, batch_size=config.batch_size,
                 fn_constructor_kwargs={"kit_name_or_path": config.kit}, **env)
    ds = ray.data.from_items(sources, override_num_blocks=max(1, len(sources)))
    ds = ds.flat_map(front_end, num_cpus=1, fn_kwargs=dict(registry=registry, min_clip_seconds=config.min_clip_seconds,
                                                           silence_dbfs=config.silence_dbfs), **env)
    ds = ds.map_batches(add_log_mel, num_cpus=1, batch_size=config.batch_size, **env)
    ds = ds.map_batches(VaeEncoder, **actor)
    ds = ds.map_batches(TagStage, **actor)
    if config.caption_backend == "vllm":
        ds = add_vllm_caption_stage(ds, config.kit, concurrency=config.actors_per_stage, seed=config.seed)
    else:
        ds = ds.map_batches(CaptionStage, **dict(actor, fn_constructor_kwargs={
            "kit_name_or_path": config.kit, "backend": config.caption_backend, "seed": config.seed}))
    ds = ds.map_batches(mix_captions, num_cpus=0.25, batch_size=config.batch_size,
                        fn_kwargs=dict(p_original=config.original_caption_probability, seed=config.seed), **env)
    ds = ds.map_batches(TextEncoder, **actor)
    return ds.map_batches(CorpusWriter, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25, batch_size=config.batch_size,
                          fn_constructor_kwargs=dict(output=config.output, valid_fraction=config.valid_fraction), **env)


def _worker_env() -> dict:
    """The S3 variables of this process for the stages that read or write storage: workers of a Ray started
    before they were set (a notebook, a test session) would otherwise not see them. Empty on a cluster
    whose nodes use an instance profile."""
    env = storage.ray_worker_env()
    return {"runtime_env": {"env_vars": env}} if env else {}


def write_null_text(config: CorpusConfig) -> dict:
    """The empty-caption embeddings, through the very same TextEncoder stage as every caption."""
    import ray.data

    from pipelines.encoders import TextEncoder

    ds = ray.data.from_items([{"caption": "", "reject_reason": "", "reject_stage": "", "reject_detail": ""}])
    row = ds.map_batches(TextEncoder, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor,
                         fn_constructor_kwargs={"kit_name_or_path": config.kit}).take(1)[0]
    t5, clap = _as_bytes(row["t5"]), _as_bytes(row["clap"])
    table = conform(pa.table({"t5": [t5], "t5_length": [int(row["t5_length"])], "clap": [clap]}), NULL_TEXT)
    storage.write_parquet_atomic(table, storage.join(config.output, NULL_TEXT_DIR, "null_text.parquet"))
    return {"t5_dim": len(t5) // 2 // max(1, int(row["t5_length"])), "clap_dim": len(clap) // 2}


def prepare_corpus(config: CorpusConfig, progress=print) -> dict:
    """Run the whole pipeline on a started Ray; return (and write) the manifest with the full account."""
    import ray

    from model.kits import load_kit
    from pipelines.sources import discover_all

    started = time.time()
    kit = load_kit(config.kit)
    kit.check()                                   # a missing model fails now, not after hours
    discovery = discover_all(config.inputs)
    sources = discovery.sources
    if config.limit:
        sources = sources[: config.limit]
    ledger = read_ledger(config.output)
    pending = [dict(s, skip_ids=sorted(ledger.items.get(s["track_id"], ()))) for s in sources
               if not ledger.complete(s["track_id"])]
    progress(f"{len(sources)} inputs discovered, {len(sources) - len(pending)} already complete, {len(pending)} to do")

    run = Counter()
    latent = np.zeros(3)
    if pending:
        registry = start_registry(config.output, pending, ledger.hashes, min_clip_seconds=config.min_clip_seconds,
                                  silence_dbfs=config.silence_dbfs)
        for batch in build_dataset(config, pending, registry).iter_batches(batch_size=256, batch_format="numpy"):
            run["items"] += len(batch["item_id"])
            run["clips"] += int(batch["ok"].sum())
            latent += [batch["latent_sum"].sum(), batch["latent_sumsq"].sum(), batch["latent_count"].sum()]
    dims = write_null_text(config)
    manifest = _manifest(config, kit, sources, dims, latent, run, time.time() - started)
    manifest["ignored"] = discovery.ignored.as_dict()      # every file that is not audio, by kind
    storage.write_bytes_atomic(storage.join(config.output, MANIFEST), json.dumps(manifest, indent=2).encode())
    return manifest


def _manifest(config: CorpusConfig, kit, sources: list[dict], dims: dict, latent: np.ndarray,
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
    mix = Counter(corpus["caption_source"])
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
        "caption_mix": {"original": mix.get("original", 0), "synthetic": mix.get("synthetic", 0),
                        "original_fraction": round(mix.get("original", 0) / max(1, sum(mix.values())), 4),
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


def _read_all(uri: str, columns: list[str]) -> dict[str, list]:
    tables = [storage.read_parquet(u, columns=columns) for u in storage.list_files(uri, ".parquet")]
    if not tables:
        return {c: [] for c in columns}
    return pa.concat_tables(tables).to_pydict()


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

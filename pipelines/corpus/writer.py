"""The corpus job's last stage: items -> corpus/ and quarantine/ Parquet files (atomic), and the null text.

Each batch becomes one corpus file and one quarantine file named by their item ids; the writer returns one
summary row per item for the driver's account.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from pipelines import storage
from pipelines.corpus.config import CorpusConfig
from schemas import CORPUS, NULL_TEXT, QUARANTINE, conform
from schemas.manifest import CORPUS_DIR, NULL_TEXT_DIR, NULL_TEXT_FILE, QUARANTINE_DIR


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


def write_null_text(config: CorpusConfig) -> dict:
    """The empty-caption embeddings, through the very same TextStage as every caption."""
    import ray.data

    from pipelines.corpus.encode import TextStage

    ds = ray.data.from_items([{"caption": "", "reject_reason": "", "reject_stage": "", "reject_detail": ""}])
    row = ds.map_batches(TextStage, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=config.cpus_per_actor, num_gpus=config.gpus_per_actor,
                         fn_constructor_kwargs={"kit_name_or_path": config.kit}).take(1)[0]
    t5, clap = _as_bytes(row["t5"]), _as_bytes(row["clap"])
    table = conform(pa.table({"t5": [t5], "t5_length": [int(row["t5_length"])], "clap": [clap]}), NULL_TEXT)
    storage.write_parquet_atomic(table, storage.join(config.output, NULL_TEXT_DIR, NULL_TEXT_FILE))
    return {"t5_dim": len(t5) // 2 // max(1, int(row["t5_length"])), "clap_dim": len(clap) // 2}

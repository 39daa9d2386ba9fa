"""A small valid training corpus (schemas.CORPUS + NULL_TEXT + manifest.json) without running prepare_corpus:
random latent posteriors, real tiny-kit T5/CLAP embeddings of varied captions (pipelines.models.encoders.TextEncoder)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines import storage
from pipelines.corpus.index import entry_of, write_entry
from schemas.constants import CLIP_SECONDS, LATENT_SHAPE
from schemas.tables import CORPUS, NULL_TEXT, SCHEMA_VERSION, conform

_GENRES = ["jazz", "techno", "folk", "ambient", "rock", "classical", "hip hop", "reggae"]
_MOODS = ["calm", "energetic", "dark", "happy", "melancholic", "dreamy"]
_INSTRUMENTS = ["piano", "guitar", "synth pads", "strings", "drums", "saxophone"]


def captions(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"a {rng.choice(_MOODS)} {rng.choice(_GENRES)} piece with {rng.choice(_INSTRUMENTS)}"
            + (f" at {int(rng.integers(60, 180))} bpm" if i % 2 else "") for i in range(n)]


def _fp16(array) -> bytes:
    if hasattr(array, "detach"):
        array = array.detach().float().cpu().numpy()
    return np.asarray(array, dtype="<f2").tobytes()


def write_tiny_corpus(directory: str | Path, *, n_clips: int = 16, kit: str = "tiny", seed: int = 0,
                      clips_per_track: int = 2, files: int = 2, index: bool = True) -> dict:
    """Write DIR/corpus/*.parquet (+ DIR/index/ entries), DIR/null_text/null_text.parquet, DIR/manifest.json;
    return the manifest.

    Every 4th track is in the valid split; rows are spread over `files` Parquet files.
    """
    from pipelines.models.encoders import TextEncoder
    from pipelines.models.kits import ensure_tiny_kit, load_kit

    if kit == "tiny":
        ensure_tiny_kit()
    directory = str(directory)
    rng = np.random.default_rng(seed)
    texts = captions(n_clips, seed)
    encoder = TextEncoder(kit)
    t5_states, clap = encoder.encode(texts)
    null_t5, null_clap = encoder.encode([""])
    t5_dim, clap_dim = int(t5_states[0].shape[-1]), int(clap.shape[-1])

    rows = []
    for i in range(n_clips):
        track = i // clips_per_track
        source_uri = f"/music/track_{track:03d}.flac"
        track_id = hashlib.sha256(source_uri.encode()).hexdigest()[:16]
        clip_index = i % clips_per_track
        mean = rng.standard_normal(LATENT_SHAPE).astype(np.float32)
        std = np.exp(0.5 * rng.uniform(-4.0, -1.0, LATENT_SHAPE)).astype(np.float32)
        rows.append({
            "clip_id": f"{track_id}-{clip_index:05d}", "track_id": track_id, "source_uri": source_uri,
            "clip_index": clip_index, "start_seconds": clip_index * CLIP_SECONDS, "duration_seconds": CLIP_SECONDS,
            "track_clip_count": clips_per_track, "content_hash": hashlib.sha256(source_uri.encode()).hexdigest(),
            "loudness_lufs": -18.0, "true_peak_dbtp": -1.0, "clipped_fraction": 0.0,
            "split": "valid" if track % 4 == 3 else "train",
            "latent_mean": _fp16(mean), "latent_std": _fp16(std),
            "tags": [{"tag": texts[i].split()[2], "source": "metadata", "score": 1.0}],
            "caption": texts[i], "caption_source": "synthetic", "caption_original": None,
            "caption_synthetic": texts[i],
            "t5": _fp16(t5_states[i]), "t5_length": int(t5_states[i].shape[0]), "clap": _fp16(clap[i]),
        })
    for part, chunk in enumerate(np.array_split(np.arange(n_clips), files)):
        table = conform(pa.Table.from_pylist([rows[j] for j in chunk]), CORPUS)
        shard = f"corpus/part-{part:03d}.parquet"
        nbytes = storage.write_parquet_atomic(table, storage.join(directory, shard))
        if index:                     # as prepare_corpus writes it; without it training falls back to a scan
            write_entry(directory, entry_of(table, "corpus", shard, nbytes))
    null = conform(pa.table({"t5": [_fp16(null_t5[0])], "t5_length": [int(null_t5[0].shape[0])],
                             "clap": [_fp16(null_clap[0])]}), NULL_TEXT)
    storage.write_parquet_atomic(null, storage.join(directory, "null_text", "null_text.parquet"))

    loaded = load_kit(kit)
    scaling = (loaded.vae_scaling_factor() if hasattr(loaded, "vae_scaling_factor")
               else float(loaded.load_vae().config.scaling_factor))
    splits = {s: sum(r["split"] == s for r in rows) for s in ("train", "valid")}
    manifest = {
        "schema_version": SCHEMA_VERSION, "kit": kit, "kit_models": loaded.models(),
        "vae_scaling_factor": float(scaling), "t5_dim": t5_dim, "clap_dim": clap_dim, "config": {"fixture": True},
        "counts": {"inputs": n_clips // clips_per_track, "tracks_ok": n_clips // clips_per_track, "clips": n_clips,
                   "hours": round(n_clips * CLIP_SECONDS / 3600, 4), "quarantined": {}},
        "caption_mix": {"original": 0, "synthetic": n_clips, "original_fraction": 0.0},
        "latent_stats": {"mean": 0.0, "std": 1.0, "scaled_std": float(scaling)}, "splits": splits,
        "wall_seconds": 0.0,
    }
    storage.write_bytes_atomic(storage.join(directory, "manifest.json"), json.dumps(manifest, indent=2).encode())
    return manifest

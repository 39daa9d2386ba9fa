"""pyarrow schemas: the single source of truth for every table the pipeline writes.

Tensors are stored as raw little-endian bytes (``pa.binary()``) in the dtype and shape given in
``TENSOR_LAYOUT``: portable to any Parquet reader, no extension types, and variable-length T5 states
need no padding. Each schema carries its name and version in the Parquet key-value metadata.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 2             # 2: clips and corpus carry the clip's loudness (issue 14)
_META_NAME = b"fluxmusic.table"
_META_VERSION = b"fluxmusic.schema_version"

TAG = pa.struct([("tag", pa.string()), ("source", pa.string()), ("score", pa.float32())])

# column -> (numpy dtype, shape); "t5_dim"/"clap_dim" come from the model kit and are recorded in the manifest.
TENSOR_LAYOUT = {
    "latent_mean": ("float16", (8, 256, 16)),
    "latent_std": ("float16", (8, 256, 16)),
    "t5": ("float16", ("t5_length", "t5_dim")),
    "clap": ("float16", ("clap_dim",)),
}


def _schema(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={_META_NAME: name.encode(), _META_VERSION: str(SCHEMA_VERSION).encode()})


# Provenance shared by every per-clip table.
_CLIP_IDENTITY = [
    pa.field("clip_id", pa.string(), nullable=False),      # f"{track_id}-{clip_index:05d}"
    pa.field("track_id", pa.string(), nullable=False),     # stable hash of the source's identity
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("clip_index", pa.int32(), nullable=False),
    pa.field("start_seconds", pa.float64(), nullable=False),
    pa.field("duration_seconds", pa.float64(), nullable=False),  # true audio length; the rest is zero padding
    pa.field("track_clip_count", pa.int32(), nullable=False),   # items the track produced (kept + quarantined)
    pa.field("content_hash", pa.string(), nullable=False),      # sha256 of the decoded 16 kHz track
]

# The clip's loudness, measured on its real samples before any normalisation (pipelines/corpus/loudness.py).
# NaN on track-level reject rows (nothing was measured).
_LOUDNESS = [
    pa.field("loudness_lufs", pa.float32(), nullable=False),     # EBU R128 integrated loudness
    pa.field("true_peak_dbtp", pa.float32(), nullable=False),    # 4x oversampled peak
    pa.field("clipped_fraction", pa.float32(), nullable=False),  # samples at |x| >= 0.999 full scale
]

# What leaves the audio front end: one row per 10.24 s clip (16 kHz mono, float32, not yet normalised).
CLIPS = _schema("clips", _CLIP_IDENTITY + _LOUDNESS + [
    pa.field("audio", pa.binary(), nullable=False),          # float32 [163840]
    pa.field("metadata", pa.map_(pa.string(), pa.string()), nullable=False),  # track metadata: title, artist, caption...
])

# Everything that did not become a corpus row, with why. Track-level rejects have clip_index -1.
QUARANTINE = _schema("quarantine", [
    pa.field("item_id", pa.string(), nullable=False),        # clip_id, or track_id for a whole track
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("clip_index", pa.int32(), nullable=False),
    pa.field("track_clip_count", pa.int32(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),          # discover, decode, segment, quality, vae, tags, caption, text
    pa.field("reason", pa.string(), nullable=False),         # machine-readable: unreadable, empty, too_short, ...
    pa.field("detail", pa.string(), nullable=False),         # the error text
])

# The training corpus: one row per clip.
CORPUS = _schema("corpus", _CLIP_IDENTITY + _LOUDNESS + [
    pa.field("split", pa.string(), nullable=False),          # "train" | "valid", by track
    pa.field("latent_mean", pa.binary(), nullable=False),
    pa.field("latent_std", pa.binary(), nullable=False),
    pa.field("tags", pa.list_(TAG), nullable=False),
    pa.field("caption", pa.string(), nullable=False),        # the one used for training
    pa.field("caption_source", pa.string(), nullable=False), # "original" | "synthetic"
    pa.field("caption_original", pa.string(), nullable=True),
    pa.field("caption_synthetic", pa.string(), nullable=False),
    pa.field("t5", pa.binary(), nullable=False),
    pa.field("t5_length", pa.int32(), nullable=False),
    pa.field("clap", pa.binary(), nullable=False),
])

# The empty-caption ("") embeddings, stored once per corpus for classifier-free-guidance dropout.
NULL_TEXT = _schema("null_text", [
    pa.field("t5", pa.binary(), nullable=False),
    pa.field("t5_length", pa.int32(), nullable=False),
    pa.field("clap", pa.binary(), nullable=False),
])

# One entry of a track inside one shard: enough for resume (items held vs track_clip_count) and dedup.
SHARD_TRACK = pa.struct([
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("track_clip_count", pa.int32(), nullable=False),
    pa.field("content_hash", pa.string(), nullable=False),   # "" in quarantine shards (no decoded audio kept)
    pa.field("item_ids", pa.list_(pa.string()), nullable=False),
])

# The shard index: one row per committed corpus/ or quarantine/ shard, written beside it (OUT/index/), so that
# resume, the account, the manifest and training read O(shards) small rows instead of every shard.
SHARD_INDEX = _schema("shard_index", [
    pa.field("shard", pa.string(), nullable=False),          # path relative to the output: corpus/<24 hex>.parquet
    pa.field("table", pa.string(), nullable=False),          # "corpus" | "quarantine"
    pa.field("bytes", pa.int64(), nullable=False),           # the shard's file size: a cheap whole-file check
    pa.field("rows", pa.int64(), nullable=False),
    pa.field("train_rows", pa.int64(), nullable=False),
    pa.field("valid_rows", pa.int64(), nullable=False),
    pa.field("duration_seconds", pa.float64(), nullable=False),   # real audio of the kept clips
    pa.field("caption_sources", pa.map_(pa.string(), pa.int64()), nullable=False),
    pa.field("reasons", pa.map_(pa.string(), pa.int64()), nullable=False),   # quarantine rows per reason
    pa.field("latent_sum", pa.float64(), nullable=False),    # over every latent_mean value of the shard
    pa.field("latent_sumsq", pa.float64(), nullable=False),
    pa.field("latent_count", pa.int64(), nullable=False),
    pa.field("tracks", pa.list_(SHARD_TRACK), nullable=False),
])

TABLES = {s.metadata[_META_NAME].decode(): s for s in (CLIPS, QUARANTINE, CORPUS, NULL_TEXT, SHARD_INDEX)}


class SchemaError(ValueError):
    """A table does not match its schema; the message names the column and what is wrong."""


def validate(table: pa.Table, schema: pa.Schema, *, check_version: bool = True) -> None:
    """Raise SchemaError naming exactly which column is missing, extra, mistyped or wrongly null."""
    name = schema.metadata[_META_NAME].decode()
    problems = []
    have = {f.name: f for f in table.schema}
    for field in schema:
        got = have.get(field.name)
        if got is None:
            problems.append(f"column {field.name!r} is missing")
        elif not got.type.equals(field.type):
            problems.append(f"column {field.name!r} has type {got.type}, expected {field.type}")
        elif not field.nullable and table.column(field.name).null_count:
            problems.append(f"column {field.name!r} has {table.column(field.name).null_count} nulls, none allowed")
    extra = sorted(set(have) - set(schema.names))
    if extra:
        problems.append(f"unexpected columns {extra}")
    if check_version:
        meta = table.schema.metadata or {}
        version = meta.get(_META_VERSION, b"?").decode()
        if meta.get(_META_NAME) != schema.metadata[_META_NAME] or version != str(SCHEMA_VERSION):
            problems.append(f"metadata says table {meta.get(_META_NAME, b'?').decode()!r} v{version}, "
                            f"expected {name!r} v{SCHEMA_VERSION}")
    if problems:
        raise SchemaError(f"{name} table: " + "; ".join(problems))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast the schema's columns (in order) and attach its metadata, then validate."""
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise SchemaError(f"{schema.metadata[_META_NAME].decode()} table: columns {missing} are missing")
    out = pa.Table.from_arrays([table.column(n).cast(schema.field(n).type) for n in schema.names], schema=schema)
    validate(out, schema)
    return out

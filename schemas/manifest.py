"""The shape of a corpus output: its folders, manifest.json, and the manifest keys that training relies on."""
from __future__ import annotations

CORPUS_DIR, QUARANTINE_DIR, NULL_TEXT_DIR = "corpus", "quarantine", "null_text"
INDEX_DIR = "index"              # one small shard_index Parquet per committed shard: index/<table>-<24 hex>.parquet
MANIFEST = "manifest.json"
NULL_TEXT_FILE = "null_text.parquet"
FINGERPRINTS_DIR, DEDUP_DIR, OVERLAP_DIR = "fingerprints", "dedup", "overlap"
EXCLUDE_FILE = "exclude_track_ids.txt"   # OVERLAP_DIR/: track ids training leaves out (jobs/check_overlap.py --exclude)

# What a trainer needs from manifest.json (the rest is the account: counts, splits, mix, statistics).
TRAINING_KEYS = ("schema_version", "kit", "vae_scaling_factor", "t5_dim", "clap_dim")


class ManifestError(ValueError):
    """A manifest.json that lacks what its reader needs."""


def check_manifest(manifest: dict, keys: tuple[str, ...] = TRAINING_KEYS) -> dict:
    """`manifest` itself when it has every key in `keys`; else ManifestError naming the missing ones."""
    missing = [k for k in keys if k not in manifest]
    if missing:
        raise ManifestError(f"manifest.json lacks {missing}: is this a prepare_corpus output?")
    return manifest

"""What a user names is there before a job starts on it (and before Ray): inputs exist, a corpus is a corpus.

`check_inputs` for prepare_corpus --input and check_overlap --eval (the walk itself is sources.discover);
`require_corpus` for every job that reads a prepare_corpus output (--data, --corpus).
"""
from __future__ import annotations

import json
import os

from pipelines import storage
from pipelines.errors import UserPathError, UserValueError
from schemas.manifest import CORPUS_DIR, MANIFEST, check_manifest

INPUT_FORMS = "a folder, an s3:// prefix, an audio file or a manifest (.csv/.jsonl/.parquet)"


def check_inputs(inputs: list[str], flag: str = "--input") -> None:
    """UserPathError for a local input or a manifest that does not exist (an s3:// prefix is known only once
    listed: sources.discover checks it)."""
    for uri in inputs:
        if storage.is_s3(uri):
            manifest = not uri.endswith("/") and uri.lower().endswith((".csv", ".jsonl", ".parquet"))
            if manifest and not storage.exists(uri):
                raise UserPathError(f"{flag} {uri} does not exist; give {INPUT_FORMS}")
        elif not os.path.exists(uri):
            raise UserPathError(f"{flag} {uri} does not exist; give {INPUT_FORMS}")
        elif not os.access(uri, os.R_OK):
            raise UserPathError(f"{flag} {uri} cannot be read (permissions); give {INPUT_FORMS}")


def require_corpus(uri: str, flag: str = "--corpus", keys: tuple[str, ...] = ()) -> dict:
    """The manifest.json of the prepare_corpus output at `uri` ({} for one still without it: a run that has not
    finished has corpus/ only); with `keys` the manifest must exist and hold them. Else UserPathError."""
    give = "give the --output folder (or s3:// prefix) of a jobs/prepare_corpus.py run"
    if not storage.exists(uri):
        raise UserPathError(f"{flag} {uri} does not exist; {give}")
    path = storage.join(uri, MANIFEST)
    if not storage.exists(path):
        if keys or not storage.exists(storage.join(uri, CORPUS_DIR)):
            raise UserPathError(f"{flag} {uri} is not a corpus (no {MANIFEST}); {give}")
        return {}
    try:
        manifest = json.loads(storage.read_bytes(path))
    except (OSError, ValueError) as error:
        raise UserValueError(f"{flag} {uri}: {MANIFEST} cannot be read ({error}); {give}") from error
    if not isinstance(manifest, dict):
        raise UserValueError(f"{flag} {uri}: {MANIFEST} is not a JSON object; {give}")
    return check_manifest(manifest, keys)

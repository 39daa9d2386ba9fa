"""Finding the inputs: local folders, s3:// prefixes, manifests (CSV / JSONL / Parquet), HF audiofolder
`metadata.csv`, and the tags embedded in audio files. See docs/front_end.md, "Discovery"."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import posixpath

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import storage

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aiff", ".aif")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".parquet")
PATH_COLUMNS = ("file_name", "path", "audio")          # first one present names the audio file
AUDIOFOLDER_METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


class ManifestError(ValueError):
    """A manifest is malformed or lists a path outside its own folder."""


def track_id(source_uri: str) -> str:
    """First 16 hex digits of sha256(source_uri) (docs/architecture.md, Identity)."""
    return hashlib.sha256(source_uri.encode()).hexdigest()[:16]


def is_audio(uri: str) -> bool:
    return uri.lower().endswith(AUDIO_EXTENSIONS)


# ----------------------------------------------------------------------------- manifests

def _clean_value(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, tuple)):
        text = ", ".join(str(v).strip() for v in value if v is not None and str(v).strip())
    elif isinstance(value, bytes):
        text = value.decode(errors="replace").strip()
    else:
        text = str(value).strip()
    return text or None


def read_manifest_rows(uri: str) -> list[dict]:
    """Rows of a CSV / JSONL / Parquet manifest as plain dicts."""
    data = storage.read_bytes(uri)
    lower = uri.lower()
    if lower.endswith(".csv"):
        return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    if lower.endswith(".jsonl"):
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    if lower.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    raise ManifestError(f"{uri}: not a manifest (expected {', '.join(MANIFEST_EXTENSIONS)})")


def _resolve(manifest_uri: str, entry: str) -> str:
    """Absolute URI of a manifest entry; entries must stay inside the manifest's folder (lexically)."""
    if storage.is_s3(manifest_uri):
        root = manifest_uri.rsplit("/", 1)[0]
        if entry.startswith("s3://"):
            uri = entry
        elif entry.startswith("/"):
            raise ManifestError(f"{manifest_uri}: absolute path {entry!r} in an s3 manifest")
        else:
            uri = "s3://" + posixpath.normpath(posixpath.join(root[len("s3://"):], entry))
        inside = uri.startswith(root + "/")
    else:
        root = os.path.dirname(os.path.abspath(manifest_uri))
        uri = os.path.normpath(os.path.join(root, entry))   # an absolute entry replaces root
        inside = os.path.commonpath([root, uri]) == root and uri != root
    if not inside:
        raise ManifestError(f"{manifest_uri}: path {entry!r} escapes the manifest folder {root!r}; refused")
    return uri


def read_manifest(uri: str) -> dict[str, dict[str, str]]:
    """{audio URI: metadata} from a manifest; relative paths resolve against the manifest's folder."""
    rows = read_manifest_rows(uri)
    found: dict[str, dict[str, str]] = {}
    for number, row in enumerate(rows, start=1):
        column = next((c for c in PATH_COLUMNS if c in row), None)
        if column is None:
            raise ManifestError(f"{uri}: no path column (one of {PATH_COLUMNS}) in row {number}")
        entry = row[column]
        if isinstance(entry, dict):       # HF datasets' Audio feature: {"path": ..., "bytes": ...}
            entry = entry.get("path")
        entry = _clean_value(entry)
        if entry is None:
            raise ManifestError(f"{uri}: row {number} has an empty {column!r}")
        metadata = {str(k): v for k, v in ((k, _clean_value(row[k])) for k in row if k != column) if v is not None}
        found[_resolve(uri, entry)] = metadata
    return found


# ----------------------------------------------------------------------------- discover

def _discover_one(uri: str) -> dict[str, dict[str, str]]:
    lower = uri.lower()
    if lower.endswith(MANIFEST_EXTENSIONS) and not uri.endswith("/"):
        if not storage.exists(uri):
            raise FileNotFoundError(f"manifest {uri} does not exist")
        return read_manifest(uri)
    fs, path = storage.filesystem(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.File:
        if not is_audio(uri):
            raise ValueError(f"input {uri} is neither a folder, an audio file nor a manifest")
        return {uri if storage.is_s3(uri) else os.path.abspath(uri): {}}
    files = storage.list_files(uri)
    if not files and kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input {uri} does not exist")
    found = {f: {} for f in files if is_audio(f)}
    # HF audiofolder: a metadata file in any folder annotates (and may list) the files below it.
    for meta in sorted((f for f in files if posixpath.basename(f) in AUDIOFOLDER_METADATA),
                       key=lambda f: (f.count("/"), f)):
        for audio, metadata in read_manifest(meta).items():
            found.setdefault(audio, {}).update(metadata)
    return found


def discover(inputs: list[str]) -> list[dict]:
    """Every track named by the inputs, sorted by source_uri: [{"source_uri", "track_id", "metadata"}].

    An input is a local folder, an s3:// prefix, a single audio file, or a manifest (.csv/.jsonl/.parquet with
    a file_name/path/audio column). Files a manifest lists but that do not exist are returned too (the front
    end quarantines them as `missing`). When several inputs name one file their metadata merge, later wins.
    """
    merged: dict[str, dict[str, str]] = {}
    for uri in inputs:
        for audio, metadata in _discover_one(uri).items():
            merged.setdefault(audio, {}).update(metadata)
    return [{"source_uri": uri, "track_id": track_id(uri), "metadata": merged[uri]} for uri in sorted(merged)]


# ----------------------------------------------------------------------------- embedded tags

# normalised key -> raw tag keys (lower-case; ID3 frame ids, Vorbis comment names, MP4 atoms / freeform names)
_TAG_KEYS = {
    "title": ("title", "tit2", "\xa9nam"),
    "artist": ("artist", "tpe1", "\xa9art", "albumartist", "tpe2", "aart"),
    "album": ("album", "talb", "\xa9alb"),
    "genre": ("genre", "tcon", "\xa9gen"),
    "comment": ("comment", "comm", "description", "\xa9cmt", "desc"),
    "bpm": ("bpm", "tbpm", "tempo", "tmpo"),
    "key": ("key", "initialkey", "tkey"),
    "date": ("date", "tdrc", "year", "tyer", "\xa9day"),
}


def _raw_key(key: str) -> str:
    key = key.lower()
    if key.startswith("----:"):          # MP4 freeform "----:com.apple.iTunes:initialkey"
        return key.rsplit(":", 1)[-1]
    return key.split(":", 1)[0]          # ID3 "COMM:desc:eng" -> "comm"


def _tag_text(value) -> str | None:
    if hasattr(value, "text"):           # ID3 text frames, COMM
        value = value.text
    if isinstance(value, (list, tuple)):
        value = [_tag_text(v) for v in value]
        return _clean_value([v for v in value if v])
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode(errors="replace")
    return _clean_value(value if isinstance(value, str) else str(value))


def read_embedded_tags(data_or_path: bytes | str) -> dict[str, str]:
    """Tags embedded in an audio file (ID3, Vorbis comments in FLAC/Ogg/Opus, MP4 atoms), with normalised keys:
    title, artist, album, genre, comment, bpm, key, date. Unknown formats or no tags give {}."""
    import mutagen

    try:
        handle = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
        audio = mutagen.File(handle)
    except Exception:  # noqa: BLE001 - unreadable tags are not an error of the track
        return {}
    if audio is None or not audio.tags:
        return {}
    raw: dict[str, str] = {}
    for key, value in audio.tags.items():
        text = _tag_text(value)
        if text:
            raw.setdefault(_raw_key(str(key)), text)
    tags = {}
    for name, aliases in _TAG_KEYS.items():
        text = next((raw[a] for a in aliases if a in raw), None)
        if text:
            tags[name] = text
    return tags

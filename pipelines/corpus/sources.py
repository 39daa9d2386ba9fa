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
import stat
from collections import Counter
from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.errors import UserError, UserPathError, UserValueError

# .mp4/.mkv/.webm are containers: the first audio stream is decoded (a file with none is quarantined).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aiff", ".aif", ".aifc",
                    ".webm", ".mka", ".mkv", ".mp4")
MANIFEST_EXTENSIONS = (".csv", ".jsonl", ".parquet")
PATH_COLUMNS = ("file_name", "path", "audio")          # first one present names the audio file
AUDIOFOLDER_METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


class ManifestError(UserError, ValueError):
    """A manifest is malformed or lists a path outside its own folder."""


def track_id(source_uri: str) -> str:
    """First 16 hex digits of sha256(source_uri) (docs/architecture.md, Identity)."""
    # surrogateescape: a name that is not UTF-8 hashes its own bytes (valid names hash exactly as before).
    return hashlib.sha256(source_uri.encode("utf-8", "surrogateescape")).hexdigest()[:16]


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

# Everything under an input that is not audio is listed by kind in the account (manifest `ignored`).
IGNORED_KINDS = {
    "image": (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".heic", ".svg"),
    "text": (".txt", ".md", ".nfo", ".log", ".pdf", ".rtf", ".doc", ".docx", ".html", ".htm", ".json", ".xml",
             ".yaml", ".yml", ".ini", ".sfv", ".md5", ".sha1", ".sha256"),
    "playlist": (".m3u", ".m3u8", ".pls", ".cue", ".xspf", ".wpl"),
    "midi": (".mid", ".midi", ".kar"),
    "video": (".avi", ".mov", ".wmv", ".flv", ".mpg", ".mpeg", ".m4v"),
    "archive": (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"),
}
EXAMPLES = 20          # ignored paths named in the account; the rest are counted by kind
BAD_FILE_NAME = "bad_file_name"


def ignored_kind(name: str) -> str:
    """The kind of a non-audio file, from its name alone."""
    lower = name.lower()
    if posixpath.basename(lower) in AUDIOFOLDER_METADATA:
        return "metadata"           # read: it annotates the audio beside it
    if posixpath.basename(lower).startswith("."):
        return "hidden"
    return next((kind for kind, ends in IGNORED_KINDS.items() if lower.endswith(ends)), "other")


def printable(path: str) -> str:
    """A name as valid UTF-8 text: bytes a file name holds that are not UTF-8 become \\xNN (lossless to read)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace") if not storage.is_s3(path) else path


def name_problem(path: str) -> str:
    """"" or why a path cannot be stored as it is: Parquet strings and S3 keys must be valid UTF-8."""
    try:
        path.encode("utf-8")
        return ""
    except UnicodeEncodeError:
        return BAD_FILE_NAME


@dataclass(frozen=True)
class Ignored:
    """Files under the inputs that are not audio: (path, kind) pairs, sorted by path."""
    entries: tuple[tuple[str, str], ...] = ()

    def __add__(self, other: "Ignored") -> "Ignored":
        return Ignored(tuple(sorted(set(self.entries) | set(other.entries))))

    def as_dict(self) -> dict:
        """The manifest's `ignored` entry: {"count", "by_kind", "examples": the first EXAMPLES paths}."""
        return {"count": len(self.entries),
                "by_kind": dict(sorted(Counter(kind for _, kind in self.entries).items())),
                "examples": [f"{printable(path)} ({kind})" for path, kind in self.entries[:EXAMPLES]]}


@dataclass(frozen=True)
class Discovery:
    sources: list[dict]
    ignored: Ignored


def _walk_local(root: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(files, ignored) under a local folder, following symlinks with each real file and folder once.

    Real folders are walked before folders reached through a link, so a file is found under the path
    without links when it has one (else the smallest path). A folder already walked (a loop such as
    `loop -> ..`, or two links to one place) is not walked again: it is listed as `seen_folder`, and
    further names of an input file (symlinks, hard links) as `same_file`.
    """
    seen_folders: set[tuple[int, int]] = set()
    names: dict[tuple[int, int], list[tuple[bool, str]]] = {}   # (st_dev, st_ino) -> [(via a link, path)]
    ignored: list[tuple[str, str]] = []
    real, linked = [(False, root)], []
    while real or linked:
        via_link, folder = real.pop() if real else linked.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen_folders:
                ignored.append((folder, "seen_folder"))
                continue
            seen_folders.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)   # popped in name order
        except OSError:
            ignored.append((folder, "unreadable_folder"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                ignored.append((entry.path, "hidden"))     # .DS_Store, ._song.mp3 (AppleDouble), .git
                continue
            try:
                is_link, info = entry.is_symlink(), entry.stat()          # follows links
            except OSError:
                ignored.append((entry.path, "broken_link"))
                continue
            if stat.S_ISDIR(info.st_mode):
                (linked if via_link or is_link else real).append((via_link or is_link, entry.path))
            elif stat.S_ISREG(info.st_mode):
                names.setdefault((info.st_dev, info.st_ino), []).append((via_link or is_link, entry.path))
            else:
                ignored.append((entry.path, "special"))    # FIFO, socket, device: never opened
    files = []
    for paths in names.values():
        (_, keep), *others = sorted(paths)
        files.append(keep)
        ignored.extend((path, "same_file") for _, path in others)
    return sorted(files), ignored


def _walk_s3(uri: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted("s3://" + i.path for i in infos if i.type == pafs.FileType.File)


def _split(files: list[str], ignored: list[tuple[str, str]]) -> tuple[list[str], list[tuple[str, str]]]:
    """Audio files, and every other file with its kind (added to those already ignored)."""
    audio = []
    for f in files:
        base = f.rsplit("/", 1)[-1]
        if is_audio(f) and not base.startswith("."):
            audio.append(f)
        else:
            ignored.append((f, ignored_kind(base)))
    return audio, ignored


def _discover_one(uri: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]]]:
    lower = uri.lower()
    if lower.endswith(MANIFEST_EXTENSIONS) and not uri.endswith("/"):
        if not storage.exists(uri):
            raise UserPathError(f"manifest {uri} does not exist")
        return read_manifest(uri), []
    if storage.is_s3(uri):
        fs, path = storage.filesystem(uri)
        kind = fs.get_file_info(path).type
        files, ignored = ([uri], []) if kind == pafs.FileType.File else (_walk_s3(uri), [])
    else:
        path = os.path.abspath(uri)
        kind = pafs.FileType.File if os.path.isfile(path) else \
            pafs.FileType.Directory if os.path.isdir(path) else pafs.FileType.NotFound
        files, ignored = ([path], []) if kind == pafs.FileType.File else \
            _walk_local(path) if kind == pafs.FileType.Directory else ([], [])
    if kind == pafs.FileType.File:
        if not is_audio(uri):
            raise UserValueError(f"input {uri} is neither a folder, an audio file nor a manifest")
        return {files[0]: {}}, []
    if not files and not ignored and kind == pafs.FileType.NotFound:
        raise UserPathError(f"input {uri} does not exist")
    audio, ignored = _split(files, ignored)
    found = {f: {} for f in audio}
    # HF audiofolder: a metadata file in any folder annotates (and may list) the files below it.
    for meta in sorted((f for f in files if posixpath.basename(f) in AUDIOFOLDER_METADATA),
                       key=lambda f: (f.count("/"), f)):
        for audio_uri, metadata in read_manifest(meta).items():
            found.setdefault(audio_uri, {}).update(metadata)
    return found, ignored


def source_of(uri: str, metadata: dict[str, str]) -> dict:
    """One discovered track. A name that is not UTF-8 is carried in printable form with its problem, so the
    front end quarantines it (`bad_file_name`) instead of a crash in a Parquet or S3 call."""
    problem = name_problem(uri)
    return {"source_uri": printable(uri) if problem else uri,
            "track_id": track_id(uri), "metadata": metadata, "problem": problem}


def discover_all(inputs: list[str]) -> Discovery:
    """Every track named by the inputs (see `discover`) and every other file found under them (`Ignored`)."""
    merged: dict[str, dict[str, str]] = {}
    ignored = Ignored()
    for uri in inputs:
        found, skipped = _discover_one(uri)
        for audio, metadata in found.items():
            merged.setdefault(audio, {}).update(metadata)
        ignored = ignored + Ignored(tuple(skipped))
    # An input file reached through two inputs is one track; drop it from ignored if another walk kept it.
    ignored = Ignored(tuple(e for e in ignored.entries if not (e[1] == "same_file" and e[0] in merged)))
    return Discovery([source_of(uri, merged[uri]) for uri in sorted(merged)], ignored)


def discover(inputs: list[str]) -> list[dict]:
    """Every track named by the inputs, sorted by source_uri: [{"source_uri", "track_id", "metadata", "problem"}].

    An input is a local folder, an s3:// prefix, a single audio file, or a manifest (.csv/.jsonl/.parquet with
    a file_name/path/audio column). Files a manifest lists but that do not exist are returned too (the front
    end quarantines them as `missing`). When several inputs name one file their metadata merge, later wins.
    Symlinks are followed with each real file and folder once (`_walk_local`); `discover_all` also returns
    what was not audio.
    """
    return discover_all(inputs).sources


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

"""Prompt sets: captions with ids and their reference audio, from a prompt file, an HF dataset or a corpus split."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pipelines import storage
from pipelines.errors import UserPathError, UserValueError
from schemas.constants import CLIP_SAMPLES, SAMPLE_RATE
from schemas.manifest import CORPUS_DIR


@dataclass
class PromptSet:
    source: str                     # what it was read from, for metrics.json
    ids: list[str]
    captions: list[str]
    # Reference clips [B, CLIP_SAMPLES] produced on demand (a cache hit never decodes), or None.
    reference: Callable[[], np.ndarray] | None = None
    key: str = ""                   # names the reference content for the statistics cache
    notes: dict = field(default_factory=dict)

    def head(self, n: int | None) -> "PromptSet":
        """The first n prompts; a reference that takes `limit` (read_corpus's) then decodes only their clips."""
        if n is None or n >= len(self.ids):
            return self
        ref = self.reference
        cut = None
        if ref is not None:
            cut = (lambda: ref(limit=n)) if takes_limit(ref) else (lambda: ref()[:n])
        return PromptSet(self.source, self.ids[:n], self.captions[:n], cut, f"{self.key}:first{n}", self.notes)


def takes_limit(fn: Callable) -> bool:
    import inspect

    try:
        return "limit" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def digest_ids(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def fit_clip(audio16k: np.ndarray, start: int = 0) -> tuple[np.ndarray, int]:
    """A CLIP_SAMPLES window from `start`, zero-padded at the end; -> (clip, real length)."""
    piece = np.asarray(audio16k[start:start + CLIP_SAMPLES], dtype=np.float32)
    clip = np.zeros(CLIP_SAMPLES, np.float32)
    clip[:len(piece)] = piece
    return clip, len(piece)


def read_source(uri: str):
    return storage.read_bytes(uri) if storage.is_s3(uri) else uri


def load_reference_clip(source, start_seconds: float = 0.0, duration_seconds: float | None = None) -> np.ndarray:
    """Decode, cut one clip and normalise it the way training saw it (mean removed, peak 0.5)."""
    from pipelines.corpus.audio import decode, normalise

    clip, n = fit_clip(decode(source).audio, int(round(start_seconds * SAMPLE_RATE)))
    if duration_seconds is not None:
        n = min(n, int(round(duration_seconds * SAMPLE_RATE)))
    return normalise(clip, n)


def read_corpus(output: str, split: str, limit: int | None = None) -> PromptSet:
    """Captions of one corpus split (sorted by clip_id; the first `limit` of them if given); reference audio
    decoded from source_uri per track, for those clips only (`.head(n)` later decodes only the first n)."""
    cols = ["clip_id", "source_uri", "start_seconds", "duration_seconds", "caption", "split"]
    rows = []
    for uri in storage.list_files(storage.join(output, CORPUS_DIR), ".parquet"):
        t = storage.read_parquet(uri, columns=cols).to_pylist()
        rows += [r for r in t if r["split"] == split]
    if not rows:
        raise UserValueError(f"corpus {output}: no clips in split {split!r}; give a --split it holds (train, valid)")
    rows.sort(key=lambda r: r["clip_id"])
    rows = rows[:limit] if limit is not None else rows

    def reference(limit: int | None = None) -> np.ndarray:
        from pipelines.corpus.audio import decode, normalise

        tracks: dict[str, np.ndarray] = {}
        clips = []
        for r in rows[:limit] if limit is not None else rows:
            if r["source_uri"] not in tracks:      # decode each track once
                tracks[r["source_uri"]] = decode(read_source(r["source_uri"])).audio
            clip, n = fit_clip(tracks[r["source_uri"]], int(round(r["start_seconds"] * SAMPLE_RATE)))
            clips.append(normalise(clip, min(n, int(round(r["duration_seconds"] * SAMPLE_RATE)))))
        return np.stack(clips)

    ids = [r["clip_id"] for r in rows]
    return PromptSet(f"corpus:{output}:{split}", ids, [r["caption"] for r in rows], reference,
                     f"corpus:{output}:{split}:{digest_ids(ids)}")     # the ids' digest names the subset too


def _resolve(base_uri: str, path: str) -> str:
    if storage.is_s3(path) or os.path.isabs(path):
        return path
    base = posixpath.dirname(base_uri) if storage.is_s3(base_uri) else os.path.dirname(os.path.abspath(base_uri))
    return storage.join(base, path)


def read_prompt_file(uri: str) -> PromptSet:
    """.txt: one caption per line (ids 000, 001, ...); .csv/.jsonl: id, caption[, audio]."""
    if not uri.endswith((".txt", ".jsonl", ".csv")):
        raise UserValueError(f"prompt file {uri}: expected .txt, .csv or .jsonl")
    if not storage.exists(uri):
        raise UserPathError(f"prompt file {uri} does not exist")
    text = storage.read_bytes(uri).decode("utf-8")
    if uri.endswith(".txt"):
        captions = [line.strip() for line in text.splitlines() if line.strip()]
        rows = [{"id": f"{i:03d}", "caption": c} for i, c in enumerate(captions)]
    elif uri.endswith(".jsonl"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif uri.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        raise UserValueError(f"prompt file {uri}: expected .txt, .csv or .jsonl")
    if not rows or any("caption" not in r for r in rows):
        raise UserValueError(f"prompt file {uri}: every row needs a caption")
    ids = [str(r.get("id") if r.get("id") not in (None, "") else f"{i:03d}") for i, r in enumerate(rows)]
    captions = [str(r["caption"]) for r in rows]
    audio = [r.get("audio") for r in rows]
    reference = None
    if all(audio):
        paths = [_resolve(uri, a) for a in audio]
        reference = lambda: np.stack([load_reference_clip(read_source(p)) for p in paths])  # noqa: E731
    return PromptSet(f"prompts:{uri}", ids, captions, reference, f"prompts:{uri}:{digest_ids(ids + [str(a) for a in audio])}")


def read_hf_dataset(path: str) -> PromptSet:
    """A datasets.save_to_disk folder; audio is read undecoded (bytes/path) and decoded by pipelines.corpus.audio."""
    import datasets

    if not storage.exists(path):
        raise UserPathError(f"HF dataset {path} does not exist; give a datasets.save_to_disk folder")
    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[next(iter(ds))]
    if "caption" not in ds.column_names:
        raise UserValueError(f"HF dataset {path}: no caption column (has {ds.column_names})")
    ids = [str(i) for i in ds["id"]] if "id" in ds.column_names else [f"{i:03d}" for i in range(len(ds))]
    captions = [str(c) for c in ds["caption"]]
    reference = None
    if "audio" in ds.column_names:
        if isinstance(ds.features["audio"], datasets.Audio):
            ds = ds.cast_column("audio", datasets.Audio(decode=False))

        def reference() -> np.ndarray:
            clips = []
            for item in ds["audio"]:
                if isinstance(item, dict) and item.get("array") is not None:    # a plain dict column
                    import soxr

                    from pipelines.corpus.audio import normalise

                    wave = np.asarray(item["array"], np.float32)
                    rate = int(item.get("sampling_rate", SAMPLE_RATE))
                    wave = soxr.resample(wave, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else wave
                    clips.append(normalise(*fit_clip(wave)))
                else:
                    source = item.get("bytes") or item.get("path") if isinstance(item, dict) else item
                    clips.append(load_reference_clip(source))
            return np.stack(clips)
    return PromptSet(f"hf-dataset:{path}", ids, captions, reference, f"hf:{os.path.abspath(path)}:{digest_ids(ids)}")


def read_wav_dir(folder: str, ids: list[str]) -> np.ndarray:
    """<id>.wav for every id -> [B, CLIP_SAMPLES] at 16 kHz (cut or zero-padded; not normalised)."""
    from pipelines.corpus.audio import decode

    uris = [storage.join(folder, f"{i}.wav") for i in ids]
    missing = [u for u in uris if not storage.exists(u)]
    if missing:
        raise UserPathError(f"{len(missing)} WAV(s) missing in {folder}, e.g. {missing[:3]}: name each <prompt id>.wav")
    return np.stack([fit_clip(decode(read_source(u)).audio)[0] for u in uris])

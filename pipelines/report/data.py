"""Reading a corpus for its report: small columns of every row, heavy columns and audio of a seeded sample only."""
from __future__ import annotations

import json
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import constants, storage
from pipelines.corpus import CORPUS_DIR, MANIFEST, QUARANTINE_DIR

# Read for every row: a few bytes each, so the whole table fits even for millions of clips.
SMALL_COLUMNS = ["clip_id", "track_id", "duration_seconds", "split", "caption", "caption_source", "t5_length", "tags"]
LOUDNESS_COLUMN = "loudness_lufs"    # used when a corpus has it; otherwise RMS dBFS of the sampled clips
QUARANTINE_COLUMNS = ["item_id", "source_uri", "stage", "reason", "detail"]
EXAMPLES_PER_REASON = 3
DETAIL_CHARS = 300
ATTRIBUTION_KEYS = ("title", "artist", "album", "date", "license", "licence", "copyright", "url", "source", "extra")


@dataclass
class Sample:
    """One sampled clip, with what the page shows of it."""
    clip_id: str
    track_id: str
    source_uri: str
    start_seconds: float
    duration_seconds: float
    split: str
    caption: str
    caption_source: str
    tags: list[dict]
    latent_mean: np.ndarray | None = None       # float32 [8, 256, 16], unscaled
    audio: np.ndarray | None = None             # float32 mono 16 kHz, the clip's real audio (not normalised)
    audio_error: str = ""                       # why there is no audio (source gone, undecodable)
    attribution: dict[str, str] = field(default_factory=dict)

    @property
    def rms_dbfs(self) -> float | None:
        if self.audio is None or not len(self.audio):
            return None
        rms = float(np.sqrt(np.mean(np.square(self.audio, dtype=np.float64))))
        return 20.0 * np.log10(max(rms, 1e-10))


@dataclass
class ReportData:
    """Everything the report shows, as plain values: no tables or file handles."""
    corpus_uri: str
    manifest: dict
    clips: int
    tracks: int
    hours: float
    splits: dict[str, int]
    durations: np.ndarray              # seconds, every clip
    t5_lengths: np.ndarray             # tokens, every clip
    caption_lengths: np.ndarray        # characters, every clip
    caption_sources: dict[str, int]
    tags_by_source: dict[str, Counter]
    loudness: np.ndarray               # per clip: the table's LUFS column, or the sampled clips' RMS dBFS
    loudness_label: str
    quarantine_counts: dict[tuple[str, str], int]          # (stage, reason) -> rows
    quarantine_examples: dict[tuple[str, str], list[dict]]  # (stage, reason) -> a few rows
    samples: list[Sample]


def read_manifest(corpus_uri: str) -> dict:
    uri = storage.join(corpus_uri, MANIFEST)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else {}


def _schema_names(uri: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    return pq.read_schema(path, filesystem=fs).names


def _read_small(files: list[str], loudness: bool) -> tuple[pa.Table, np.ndarray]:
    """The small columns of every corpus file, and which file each row came from."""
    columns = SMALL_COLUMNS + ([LOUDNESS_COLUMN] if loudness else [])
    tables, origin = [], []
    for index, uri in enumerate(files):
        table = storage.read_parquet(uri, columns=columns)
        tables.append(table)
        origin.append(np.full(table.num_rows, index, np.int64))
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns}), np.zeros(0, np.int64)
    return pa.concat_tables(tables), np.concatenate(origin)


def sample_indices(clip_ids: list[str], n: int, seed: int) -> list[int]:
    """Row indices of n clips drawn with the seed, independent of how the rows are spread over files."""
    order = sorted(range(len(clip_ids)), key=clip_ids.__getitem__)
    if n >= len(order):
        return order
    picked = np.random.default_rng(seed).choice(len(order), size=n, replace=False)
    return [order[i] for i in sorted(picked)]


def _heavy_columns(files: list[str], origin: np.ndarray, rows: list[int], small: pa.Table) -> dict[str, dict]:
    """clip_id -> {source_uri, start_seconds, latent_mean} for the sampled rows only, one read per file touched."""
    wanted: dict[int, set[str]] = {}
    for row in rows:
        wanted.setdefault(int(origin[row]), set()).add(small["clip_id"][row].as_py())
    out = {}
    for index, ids in sorted(wanted.items()):
        table = storage.read_parquet(files[index], columns=["clip_id", "source_uri", "start_seconds", "latent_mean"])
        for i, clip_id in enumerate(table["clip_id"].to_pylist()):
            if clip_id in ids:
                out[clip_id] = {"source_uri": table["source_uri"][i].as_py(),
                                "start_seconds": table["start_seconds"][i].as_py(),
                                "latent_mean": np.frombuffer(table["latent_mean"][i].as_py(), "<f2")
                                .astype(np.float32).reshape(constants.LATENT_SHAPE)}
    return out


def _folder_metadata(folder: str, cache: dict) -> dict[str, dict]:
    """An HF-audiofolder metadata file beside the audio ({audio URI: metadata}), read once per folder."""
    from pipelines.sources import AUDIOFOLDER_METADATA, read_manifest as read_audio_manifest

    if folder not in cache:
        cache[folder] = {}
        for name in AUDIOFOLDER_METADATA:
            uri = storage.join(folder, name) if storage.is_s3(folder) else os.path.join(folder, name)
            try:
                if storage.exists(uri):
                    cache[folder].update(read_audio_manifest(uri))
            except Exception:  # noqa: BLE001 - a bad metadata file costs the attribution, not the report
                pass
    return cache[folder]


def attribution_of(source_uri: str, data: bytes | None, cache: dict) -> dict[str, str]:
    """The credit fields a source has: its embedded tags, overridden by its folder's metadata file (as the
    pipeline merges them); keys outside ATTRIBUTION_KEYS but naming a licence are kept too."""
    from pipelines.sources import read_embedded_tags

    merged = dict(read_embedded_tags(data) if data else {})
    folder = posixpath.dirname(source_uri) if storage.is_s3(source_uri) else os.path.dirname(source_uri)
    merged.update(_folder_metadata(folder, cache).get(source_uri, {}))
    return {k: str(v) for k, v in merged.items() if v and (k.lower() in ATTRIBUTION_KEYS or "licen" in k.lower())}


def _load_audio(samples: list[Sample]) -> None:
    """Cut each sampled clip from its decoded source (the project's decoder), one decode per track."""
    from pipelines.audio import decode

    decoded: dict[str, tuple] = {}
    folder_cache: dict = {}
    for s in samples:
        if s.source_uri not in decoded:
            try:
                data = storage.read_bytes(s.source_uri)
                decoded[s.source_uri] = (decode(data).audio, data, "")
            except Exception as err:  # noqa: BLE001 - a vanished source is shown, not fatal
                decoded[s.source_uri] = (None, None, f"{type(err).__name__}: {err}"[:DETAIL_CHARS])
        audio, data, error = decoded[s.source_uri]
        s.attribution = attribution_of(s.source_uri, data, folder_cache)
        if audio is None:
            s.audio_error = error
            continue
        start = int(round(s.start_seconds * constants.SAMPLE_RATE))
        s.audio = audio[start:start + int(round(s.duration_seconds * constants.SAMPLE_RATE))].copy()
        if not len(s.audio):
            s.audio, s.audio_error = None, "the source is shorter than the clip's start"


def _quarantine(corpus_uri: str) -> tuple[dict, dict]:
    counts: Counter = Counter()
    examples: dict[tuple[str, str], list[dict]] = {}
    for uri in storage.list_files(storage.join(corpus_uri, QUARANTINE_DIR), ".parquet"):
        for row in storage.read_parquet(uri, columns=QUARANTINE_COLUMNS).to_pylist():
            key = (row["stage"], row["reason"])
            counts[key] += 1
            if len(examples.setdefault(key, [])) < EXAMPLES_PER_REASON:
                examples[key].append(dict(row, detail=row["detail"][:DETAIL_CHARS]))
    return dict(counts.most_common()), examples


def read_report_data(corpus_uri: str, *, sample: int = 12, seed: int = 0, audio: bool = True) -> ReportData:
    """Read what the report needs from OUT/ (a local folder or s3:// prefix): manifest, quarantine, the small
    corpus columns of every row, and latents, audio and attribution of `sample` seeded clips."""
    manifest = read_manifest(corpus_uri)
    files = storage.list_files(storage.join(corpus_uri, CORPUS_DIR), ".parquet")
    has_lufs = bool(files) and LOUDNESS_COLUMN in _schema_names(files[0])
    small, origin = _read_small(files, has_lufs)
    cols = small.to_pydict()
    rows = sample_indices(cols["clip_id"], sample, seed)
    heavy = _heavy_columns(files, origin, rows, small) if rows else {}
    samples = []
    for row in rows:
        clip_id = cols["clip_id"][row]
        extra = heavy[clip_id]
        samples.append(Sample(clip_id=clip_id, track_id=cols["track_id"][row], source_uri=extra["source_uri"],
                              start_seconds=extra["start_seconds"], duration_seconds=cols["duration_seconds"][row],
                              split=cols["split"][row], caption=cols["caption"][row],
                              caption_source=cols["caption_source"][row], tags=list(cols["tags"][row] or []),
                              latent_mean=extra["latent_mean"]))
    if audio:
        _load_audio(samples)

    tags_by_source: dict[str, Counter] = {}
    for tags in cols["tags"]:
        for tag in tags or ():
            tags_by_source.setdefault(tag["source"], Counter())[tag["tag"]] += 1
    if has_lufs:
        loudness = np.array([x for x in cols[LOUDNESS_COLUMN] if x is not None], np.float64)
        loudness_label = f"loudness (LUFS, column {LOUDNESS_COLUMN}, all {len(loudness)} clips)"
    else:
        loudness = np.array([s.rms_dbfs for s in samples if s.rms_dbfs is not None], np.float64)
        loudness_label = f"clip RMS (dBFS, the {len(loudness)} sampled clips' audio)"
    q_counts, q_examples = _quarantine(corpus_uri)
    durations = np.asarray(cols["duration_seconds"], np.float64)
    return ReportData(
        corpus_uri=corpus_uri, manifest=manifest, clips=small.num_rows, tracks=len(set(cols["track_id"])),
        hours=float(durations.sum() / 3600), splits=dict(Counter(cols["split"]).most_common()),
        durations=durations, t5_lengths=np.asarray(cols["t5_length"], np.float64),
        caption_lengths=np.array([len(c) for c in cols["caption"]], np.float64),
        caption_sources=dict(Counter(cols["caption_source"])), tags_by_source=tags_by_source,
        loudness=loudness, loudness_label=loudness_label,
        quarantine_counts=q_counts, quarantine_examples=q_examples, samples=samples)

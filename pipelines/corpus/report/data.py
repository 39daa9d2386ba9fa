"""Reading a corpus for its report: small columns of every row, heavy columns and audio of a seeded sample only."""
from __future__ import annotations

import hashlib
import heapq
import json
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import storage
from schemas import constants
from schemas.manifest import CORPUS_DIR, MANIFEST, QUARANTINE_DIR

# Read for every row: a few bytes each, so the whole table fits even for millions of clips.
SMALL_COLUMNS = ["clip_id", "track_id", "duration_seconds", "split", "caption", "caption_source", "t5_length", "tags"]
# Read for the sampled rows only: the latent alone is 64 KiB a row.
SAMPLE_COLUMNS = ["clip_id", "track_id", "source_uri", "start_seconds", "duration_seconds", "split", "caption",
                  "caption_source", "tags", "latent_mean"]
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


def sample_key(clip_id: str, seed: int) -> bytes:
    """A clip's place in the seeded sample: the sample is the clips with the smallest keys, so it is the same
    whatever the order of rows and files, and it is found in one streamed pass."""
    return hashlib.sha256(f"{seed}:{clip_id}".encode()).digest()


def sample_ids(clip_ids, n: int, seed: int) -> list[str]:
    """The n clip ids of the seeded sample (all of them when there are fewer), in sample order."""
    return [c for _, c in heapq.nsmallest(n, ((sample_key(c, seed), c) for c in clip_ids))]


@dataclass
class _Totals:
    """What the small columns add up to, accumulated file by file (never the whole table in Python objects)."""
    durations: list = field(default_factory=list)
    t5_lengths: list = field(default_factory=list)
    caption_lengths: list = field(default_factory=list)
    loudness: list = field(default_factory=list)
    splits: Counter = field(default_factory=Counter)
    caption_sources: Counter = field(default_factory=Counter)
    tags: dict = field(default_factory=dict)
    tracks: set = field(default_factory=set)
    candidates: list = field(default_factory=list)      # (key, clip_id, file index): the sample so far

    def add(self, table: pa.Table, index: int, sample: int, seed: int, loudness: bool) -> None:
        self.durations.append(table["duration_seconds"].to_numpy())
        self.t5_lengths.append(table["t5_length"].to_numpy())
        self.caption_lengths.append(pc.utf8_length(table["caption"]).to_numpy())
        if loudness:
            self.loudness.append(table[LOUDNESS_COLUMN].drop_null().to_numpy())
        for counter, column in ((self.splits, "split"), (self.caption_sources, "caption_source")):
            for item in pc.value_counts(table[column]).to_pylist():
                counter[item["values"]] += item["counts"]
        self.tracks.update(pc.unique(table["track_id"]).to_pylist())
        flat = pc.list_flatten(table["tags"])
        if len(flat):
            pairs = pa.table({"source": pc.struct_field(flat, "source"), "tag": pc.struct_field(flat, "tag")})
            for row in pairs.group_by(["source", "tag"]).aggregate([("tag", "count")]).to_pylist():
                self.tags.setdefault(row["source"], Counter())[row["tag"]] += row["tag_count"]
        ids = table["clip_id"].to_pylist()
        self.candidates = heapq.nsmallest(sample, self.candidates + [(sample_key(c, seed), c, index) for c in ids])


def _heavy_rows(files: list[str], picked: list[tuple]) -> dict[str, dict]:
    """clip_id -> its row (latent_mean included) for the sampled clips only, one read per file holding one."""
    wanted: dict[int, set[str]] = {}
    for _, clip_id, index in picked:
        wanted.setdefault(index, set()).add(clip_id)
    out = {}
    for index, ids in sorted(wanted.items()):
        table = storage.read_parquet(files[index], columns=SAMPLE_COLUMNS)
        table = table.filter(pc.is_in(table["clip_id"], value_set=pa.array(sorted(ids))))
        for row in table.to_pylist():
            out[row["clip_id"]] = row
    return out


def _folder_metadata(folder: str, cache: dict) -> dict[str, dict]:
    """An HF-audiofolder metadata file beside the audio ({audio URI: metadata}), read once per folder."""
    from pipelines.corpus.sources import AUDIOFOLDER_METADATA
    from pipelines.corpus.sources import read_manifest as read_audio_manifest

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
    from pipelines.corpus.sources import read_embedded_tags

    merged = dict(read_embedded_tags(data) if data else {})
    folder = posixpath.dirname(source_uri) if storage.is_s3(source_uri) else os.path.dirname(source_uri)
    merged.update(_folder_metadata(folder, cache).get(source_uri, {}))
    return {k: str(v) for k, v in merged.items() if v and (k.lower() in ATTRIBUTION_KEYS or "licen" in k.lower())}


def _load_audio(samples: list[Sample]) -> None:
    """Cut each sampled clip from its decoded source (the project's decoder), one decode per track."""
    from pipelines.corpus.audio import decode

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
    """Rows per (stage, reason), counted with pyarrow, and the first few examples of each."""
    counts: Counter = Counter()
    examples: dict[tuple[str, str], list[dict]] = {}
    for uri in storage.list_files(storage.join(corpus_uri, QUARANTINE_DIR), ".parquet"):
        table = storage.read_parquet(uri, columns=QUARANTINE_COLUMNS)
        for row in table.group_by(["stage", "reason"]).aggregate([("item_id", "count")]).to_pylist():
            key = (row["stage"], row["reason"])
            counts[key] += row["item_id_count"]
            need = EXAMPLES_PER_REASON - len(examples.setdefault(key, []))
            if need > 0:
                mask = pc.and_(pc.equal(table["stage"], key[0]), pc.equal(table["reason"], key[1]))
                examples[key] += [dict(r, detail=r["detail"][:DETAIL_CHARS])
                                  for r in table.filter(mask).slice(0, need).to_pylist()]
    return dict(counts.most_common()), examples


def read_report_data(corpus_uri: str, *, sample: int = 12, seed: int = 0, audio: bool = True) -> ReportData:
    """Read what the report needs from OUT/ (a local folder or s3:// prefix): manifest, quarantine, the small
    corpus columns of every row (file by file), and latents, audio and attribution of `sample` seeded clips."""
    files = storage.list_files(storage.join(corpus_uri, CORPUS_DIR), ".parquet")
    has_lufs = bool(files) and LOUDNESS_COLUMN in _schema_names(files[0])
    totals = _Totals()
    for index, uri in enumerate(files):
        table = storage.read_parquet(uri, columns=SMALL_COLUMNS + ([LOUDNESS_COLUMN] if has_lufs else []))
        totals.add(table, index, sample, seed, has_lufs)
    rows = _heavy_rows(files, totals.candidates)
    samples = []
    for _, clip_id, _ in totals.candidates:
        row = rows[clip_id]
        samples.append(Sample(clip_id=clip_id, track_id=row["track_id"], source_uri=row["source_uri"],
                              start_seconds=row["start_seconds"], duration_seconds=row["duration_seconds"],
                              split=row["split"], caption=row["caption"], caption_source=row["caption_source"],
                              tags=list(row["tags"] or []),
                              latent_mean=np.frombuffer(row["latent_mean"], "<f2").astype(np.float32)
                              .reshape(constants.LATENT_SHAPE)))
    if audio:
        _load_audio(samples)

    def joined(parts: list) -> np.ndarray:
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)

    if has_lufs:
        loudness = joined(totals.loudness)
        loudness_label = f"loudness (LUFS, column {LOUDNESS_COLUMN}, all {len(loudness)} clips)"
    else:
        loudness = np.array([s.rms_dbfs for s in samples if s.rms_dbfs is not None], np.float64)
        loudness_label = f"clip RMS (dBFS, the {len(loudness)} sampled clips' audio)"
    q_counts, q_examples = _quarantine(corpus_uri)
    durations = joined(totals.durations)
    return ReportData(
        corpus_uri=corpus_uri, manifest=read_manifest(corpus_uri), clips=len(durations), tracks=len(totals.tracks),
        hours=float(durations.sum() / 3600), splits=dict(totals.splits.most_common()),
        durations=durations, t5_lengths=joined(totals.t5_lengths), caption_lengths=joined(totals.caption_lengths),
        caption_sources=dict(totals.caption_sources), tags_by_source=totals.tags,
        loudness=loudness, loudness_label=loudness_label,
        quarantine_counts=q_counts, quarantine_examples=q_examples, samples=samples)

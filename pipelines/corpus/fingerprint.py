"""Acoustic near-duplicates: Chromaprint sub-fingerprints of decoded audio, their aligned bit agreement, and a
key index that finds candidate copies without comparing all pairs (docs/quality.md)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from schemas import constants as C

# Chromaprint (default algorithm) resamples to 11025 Hz and emits one 32-bit sub-fingerprint per 4096/3
# samples there: about 8.07 per second of audio.
CHROMAPRINT_RATE = 11_025
ITEMS_PER_SECOND = CHROMAPRINT_RATE / (4096 / 3)
FINGERPRINT_SECONDS = 120.0     # fpcalc's default length: enough to recognise a track, bounded memory per track
MIN_OVERLAP_SECONDS = 10.0      # an alignment must overlap at least this much audio to count
# Bit agreement at or above which two tracks are the same recording: the middle of the measured gap between
# unrelated music (best 0.747) and re-encoded / trimmed / re-introduced copies (worst 0.917), docs/quality.md.
MATCH_THRESHOLD = 0.83
KEY_SHIFT = 12                  # an index key is the top 20 bits of a sub-fingerprint
KEY_SAMPLING = 4                # keep the keys whose hash is 0 mod 4: the same keys in every copy, 1/4 the memory
MIN_KEY_HITS = 3                # candidates need this many keys voting for one offset


def fingerprint(audio16k: np.ndarray, max_seconds: float | None = FINGERPRINT_SECONDS) -> np.ndarray:
    """Raw Chromaprint sub-fingerprints (uint32 [n], ~8 per second) of float32 mono 16 kHz audio.

    The audio is fed as 16-bit PCM straight from memory (no second decode); max_seconds=None takes it all.
    """
    import chromaprint  # pyacoustid's ctypes binding of libchromaprint

    x = np.asarray(audio16k, dtype=np.float32)
    if max_seconds is not None:
        x = x[: int(max_seconds * C.SAMPLE_RATE)]
    pcm = (np.clip(np.nan_to_num(x), -1.0, 1.0) * 32767.0).astype("<i2")
    printer = chromaprint.Fingerprinter()
    printer.start(C.SAMPLE_RATE, 1)
    printer.feed(pcm.tobytes())
    encoded = printer.finish()
    if not encoded:
        return np.zeros(0, np.uint32)
    raw, _algorithm = chromaprint.decode_fingerprint(encoded)
    return np.asarray(raw, dtype=np.int64).astype(np.uint32)


def _agreement(a: np.ndarray, b: np.ndarray, offset: int) -> tuple[float, int]:
    """(fraction of equal bits, overlap length) with b[i] aligned to a[i + offset]."""
    start_a, start_b = max(offset, 0), max(-offset, 0)
    n = min(len(a) - start_a, len(b) - start_b)
    if n <= 0:
        return 0.0, 0
    differing = np.bitwise_count(a[start_a:start_a + n] ^ b[start_b:start_b + n]).sum(dtype=np.int64)
    return 1.0 - float(differing) / (32.0 * n), n


def similarity(a: np.ndarray, b: np.ndarray, *, min_overlap_seconds: float = MIN_OVERLAP_SECONDS,
               offsets: np.ndarray | None = None) -> tuple[float, int]:
    """(best bit-agreement fraction, offset) over alignments of b against a that overlap >= min_overlap_seconds.

    offset is in sub-fingerprints: b[i] lines up with a[i + offset] (positive: b starts later in a's audio, e.g.
    b is a with its start trimmed). Unrelated music scores about 0.5 at any offset. offsets restricts the search
    (e.g. to the offsets an index voted for); default: every offset with enough overlap. A fingerprint shorter
    than the minimum overlap matches nothing (0.0, 0): a few words agree by chance at some offset (measured: a
    3 s excerpt reached 0.85 against unrelated tracks).
    """
    a, b = np.asarray(a, np.uint32), np.asarray(b, np.uint32)
    min_overlap = max(1, int(round(min_overlap_seconds * ITEMS_PER_SECOND)))
    if min(len(a), len(b)) < min_overlap:
        return 0.0, 0
    candidates = np.arange(-(len(b) - min_overlap), len(a) - min_overlap + 1) if offsets is None else offsets
    best, best_offset = 0.0, 0
    for offset in np.asarray(candidates, dtype=np.int64):
        score, n = _agreement(a, b, int(offset))
        if n >= min_overlap and score > best:
            best, best_offset = score, int(offset)
    return best, best_offset


# ----------------------------------------------------------------------------- index

def index_keys(fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys uint32, positions int32) of a fingerprint: top 20 bits of each sub-fingerprint, sampled by content.

    Top bits survive re-encoding and half-frame misalignment (trims) far more often than whole sub-fingerprints
    (measured: 65 % vs 16 % of aligned items after a 7 s trim). Sampling on the key's own hash keeps the same
    keys in every copy of a recording, so it cuts memory 4x without costing matches.
    """
    keys = np.asarray(fp, np.uint32) >> np.uint32(KEY_SHIFT)
    mixed = (keys.astype(np.uint64) * np.uint64(0x9E3779B1)) & np.uint64(0xFFFFFFFF)   # Knuth multiplicative hash
    keep = (mixed >> np.uint64(16)) % np.uint64(KEY_SAMPLING) == 0
    return keys[keep], np.flatnonzero(keep).astype(np.int32)


@dataclass
class NearDuplicateIndex:
    """Fingerprints of kept tracks, with an inverted index from key to (track, position).

    query() looks up the query's keys, votes per (track, offset), and verifies each track with enough votes by
    similarity() near its voted offsets: work grows with the hits, not with the number of tracks.
    Persist with to_table()/from_table() (the `fingerprints` table) or to_bytes()/from_bytes() (its Parquet bytes).
    """
    threshold: float = MATCH_THRESHOLD
    min_overlap_seconds: float = MIN_OVERLAP_SECONDS
    max_bucket: int = 20_000                      # keys shared by more postings (silence, tones) carry no identity
    track_ids: list[str] = field(default_factory=list, init=False, repr=False)      # in insertion order
    source_uris: list[str] = field(default_factory=list, init=False, repr=False)
    fingerprints: list[np.ndarray] = field(default_factory=list, init=False, repr=False)
    _position: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    # Postings: a large sorted part (numpy, searchsorted) and a small pending part (appends), merged when it grows.
    _keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32), init=False, repr=False)
    _tracks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32), init=False, repr=False)
    _positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32), init=False, repr=False)
    _pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list, init=False, repr=False)
    _pending_size: int = field(default=0, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.track_ids)

    def __contains__(self, track_id: str) -> bool:
        return track_id in self._position

    def source_uri_of(self, track_id: str) -> str:
        return self.source_uris[self._position[track_id]]

    def add(self, track_id: str, fp: np.ndarray, source_uri: str = "") -> None:
        """Index one track's fingerprint (a track id already present is ignored: re-runs are idempotent)."""
        if track_id in self._position:
            return
        number = len(self.track_ids)
        fp = np.asarray(fp, np.uint32)
        self._position[track_id] = number
        self.track_ids.append(track_id)
        self.source_uris.append(source_uri)
        self.fingerprints.append(fp)
        keys, positions = index_keys(fp)
        self._pending.append((keys, np.full(len(keys), number, np.int32), positions))
        self._pending_size += len(keys)
        if self._pending_size > max(65_536, len(self._keys) // 8):   # amortised: each posting is re-sorted O(log) times
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        keys = np.concatenate([self._keys] + [p[0] for p in self._pending])
        tracks = np.concatenate([self._tracks] + [p[1] for p in self._pending])
        positions = np.concatenate([self._positions] + [p[2] for p in self._pending])
        order = np.argsort(keys, kind="stable")
        self._keys, self._tracks, self._positions = keys[order], tracks[order], positions[order]
        self._pending, self._pending_size = [], 0

    def _postings(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(query item index, track number, track position) of every posting that shares a key with the query."""
        self._merge()
        lo = np.searchsorted(self._keys, keys, side="left")
        hi = np.searchsorted(self._keys, keys, side="right")
        counts = hi - lo
        counts[counts > self.max_bucket] = 0
        if not counts.sum():
            return (np.zeros(0, np.int64),) * 3
        item = np.repeat(np.arange(len(keys)), counts)
        starts = np.repeat(lo, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        return item, self._tracks[starts].astype(np.int64), self._positions[starts].astype(np.int64)

    def candidates(self, fp: np.ndarray, max_candidates: int = 32) -> list[tuple[int, list[int]]]:
        """[(track number, voted offsets)] for tracks with >= MIN_KEY_HITS keys agreeing on an offset (+-1)."""
        keys, positions = index_keys(fp)
        item, tracks, stored = self._postings(keys)
        if not len(item):
            return []
        offsets = stored - positions[item]
        # Offsets in bins of 2: a trim that is not a whole number of items splits its votes over two offsets.
        pair = np.unique(np.stack([tracks, offsets // 2]), axis=1, return_counts=True)
        (pair_tracks, pair_bins), votes = pair
        strong = votes >= MIN_KEY_HITS
        found: dict[int, list[tuple[int, int]]] = {}
        for track, offset_bin, count in zip(pair_tracks[strong], pair_bins[strong], votes[strong]):
            found.setdefault(int(track), []).append((int(count), int(offset_bin)))
        ranked = sorted(found.items(), key=lambda kv: (-max(c for c, _ in kv[1]), kv[0]))[:max_candidates]
        return [(track, [2 * b for _, b in sorted(bins, reverse=True)[:4]]) for track, bins in ranked]

    def query(self, fp: np.ndarray) -> list[tuple[str, float, int]]:
        """[(track_id, score, offset)] of indexed tracks that are the same recording (score >= threshold),
        best first; ties by insertion order (the earliest-kept track first)."""
        fp = np.asarray(fp, np.uint32)
        matches = []
        for number, voted in self.candidates(fp):
            near = np.unique(np.concatenate([np.arange(o - 2, o + 4) for o in voted]))
            score, offset = similarity(self.fingerprints[number], fp, offsets=near,
                                       min_overlap_seconds=self.min_overlap_seconds)
            if score >= self.threshold:
                matches.append((number, score, offset))
        matches.sort(key=lambda m: (-m[1], m[0]))
        return [(self.track_ids[n], score, offset) for n, score, offset in matches]

    # ------------------------------------------------------------------------- persistence

    def to_table(self) -> pa.Table:
        """The `fingerprints` table (schemas.FINGERPRINTS), rows in insertion order."""
        from schemas import FINGERPRINTS, conform

        column = pa.array([fp.tolist() for fp in self.fingerprints], type=pa.list_(pa.uint32()))
        return conform(pa.table({"track_id": self.track_ids, "source_uri": self.source_uris, "fingerprint": column}),
                       FINGERPRINTS)

    @classmethod
    def from_table(cls, table: pa.Table, **options) -> "NearDuplicateIndex":
        """Rebuild from a `fingerprints` table (or several concatenated: earlier rows count as kept earlier)."""
        index = cls(**options)
        column = table.column("fingerprint").combine_chunks()
        values = column.values.to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
        bounds = column.offsets.to_numpy()
        for i, (track_id, uri) in enumerate(zip(table.column("track_id").to_pylist(),
                                                table.column("source_uri").to_pylist())):
            index.add(track_id, values[bounds[i]:bounds[i + 1]], uri)
        index._merge()
        return index

    def to_bytes(self) -> bytes:
        import io

        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(self.to_table(), sink, compression="zstd")
        return sink.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, **options) -> "NearDuplicateIndex":
        import io

        import pyarrow.parquet as pq

        return cls.from_table(pq.read_table(io.BytesIO(data)), **options)


# ----------------------------------------------------------------------------- the keep rule

def find_near_duplicates(tracks: list[dict], index: NearDuplicateIndex) -> dict[str, tuple[str, float, int]]:
    """{track_id: (kept track_id, score, offset)} for each new track that repeats a kept one; the others are
    added to index (which the caller persists). Deterministic whatever order tracks arrive in:

    - a track already in index (an earlier run) stays kept and is never compared again;
    - new tracks are taken in (source_uri, track_id) order, so within one run the smallest source URI of a group
      of copies is kept; each later copy names its best match (highest score, then the earliest kept).

    tracks: dicts with track_id, source_uri and fingerprint (uint32 array).
    """
    duplicates = {}
    for track in sorted(tracks, key=lambda t: (t["source_uri"], t["track_id"])):
        if track["track_id"] in index:
            continue
        matches = index.query(track["fingerprint"])
        if matches:
            duplicates[track["track_id"]] = matches[0]
        else:
            index.add(track["track_id"], track["fingerprint"], track["source_uri"])
    return duplicates

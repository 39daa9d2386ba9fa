"""What an output already holds, for resume and the account: items held per track, expected counts, kept hashes.

A track is complete when corpus/ and quarantine/ together hold `track_clip_count` rows of it; a re-run skips
complete tracks and the finished clips of incomplete ones, so nothing is computed or written twice. Everything
here comes from the shard index (`pipelines/corpus/index.py`), never from the shards themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.corpus.index import OutputIndex, track_items
from schemas.manifest import CORPUS_DIR


@dataclass
class Ledger:
    """What an output holds: items per track, expected counts, ids of incomplete tracks' items, kept hashes."""
    held: dict[str, int]                      # track_id -> items in committed shards
    expected: dict[str, int]                  # track_id -> track_clip_count
    items: dict[str, set[str]]                # item ids, for the incomplete tracks only (what a re-run skips)
    hashes: dict[str, str]                    # content_hash -> track_id (kept tracks)
    corpus_tracks: set[str]                   # tracks with at least one corpus row

    def complete(self, track_id: str) -> bool:
        return track_id in self.expected and self.held.get(track_id, 0) >= self.expected[track_id]


def ledger_of(index: OutputIndex) -> Ledger:
    """The ledger from the index entries alone: counts by pyarrow group-by, Python objects only for the
    per-track totals and the item ids of incomplete tracks."""
    flat = track_items(index.entries)
    totals = flat.group_by("track_id").aggregate([("items", "sum"), ("track_clip_count", "max")])
    tracks = totals["track_id"].to_pylist()
    held = dict(zip(tracks, totals["items_sum"].to_pylist()))
    expected = dict(zip(tracks, totals["track_clip_count_max"].to_pylist()))
    incomplete = pa.array([t for t in tracks if held[t] < expected[t]], pa.string())
    items: dict[str, set[str]] = {}
    if len(incomplete):
        partial = flat.filter(pc.is_in(flat["track_id"], value_set=incomplete))
        for track, ids in zip(partial["track_id"].to_pylist(), partial["item_ids"].to_pylist()):
            items.setdefault(track, set()).update(ids)
    kept = track_items(index.table(CORPUS_DIR))
    hashes: dict[str, str] = {}
    for content_hash, track in zip(kept["content_hash"].to_pylist(), kept["track_id"].to_pylist()):
        hashes.setdefault(content_hash, track)
    return Ledger(held, expected, items, hashes, set(kept["track_id"].to_pylist()))


def read_ledger(output: str) -> Ledger:
    return ledger_of(OutputIndex.load(output))

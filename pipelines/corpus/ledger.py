"""What an output already holds, for resume and the account: item ids per track, expected counts, kept hashes.

A track is complete when corpus/ and quarantine/ together hold `track_clip_count` rows of it; a re-run skips
complete tracks and the finished clips of incomplete ones, so nothing is computed or written twice.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pipelines import storage
from schemas.manifest import CORPUS_DIR, QUARANTINE_DIR


@dataclass
class Ledger:
    """What an output already holds: item ids per track, expected counts, content hashes of kept tracks."""
    items: dict[str, set[str]]
    expected: dict[str, int]
    hashes: dict[str, str]                    # content_hash -> track_id (kept tracks)

    def complete(self, track_id: str) -> bool:
        return track_id in self.expected and len(self.items.get(track_id, ())) >= self.expected[track_id]


# The columns the account needs: small, read from every output file once per use.
CORPUS_ACCOUNT = ["clip_id", "track_id", "track_clip_count", "content_hash", "duration_seconds", "split", "caption_source"]
QUARANTINE_ACCOUNT = ["item_id", "track_id", "track_clip_count", "reason"]


def read_account(output: str) -> tuple[dict[str, list], dict[str, list]]:
    """(corpus, quarantine) columns of the account over everything the output holds."""
    return (_read_all(storage.join(output, CORPUS_DIR), CORPUS_ACCOUNT),
            _read_all(storage.join(output, QUARANTINE_DIR), QUARANTINE_ACCOUNT))


def ledger_of(corpus: dict[str, list], quarantine: dict[str, list]) -> Ledger:
    items: dict[str, set[str]] = {}
    expected: dict[str, int] = {}
    for ids, tracks, counts in ((corpus["clip_id"], corpus["track_id"], corpus["track_clip_count"]),
                                (quarantine["item_id"], quarantine["track_id"], quarantine["track_clip_count"])):
        for item, track, count in zip(ids, tracks, counts):
            items.setdefault(track, set()).add(item)
            expected[track] = count
    hashes: dict[str, str] = {}
    for content_hash, track in zip(corpus["content_hash"], corpus["track_id"]):
        hashes.setdefault(content_hash, track)
    return Ledger(items, expected, hashes)


def read_ledger(output: str) -> Ledger:
    return ledger_of(*read_account(output))


def _read_all(uri: str, columns: list[str]) -> dict[str, list]:
    tables = [storage.read_parquet(u, columns=columns) for u in storage.list_files(uri, ".parquet")]
    if not tables:
        return {c: [] for c in columns}
    return pa.concat_tables(tables).to_pydict()

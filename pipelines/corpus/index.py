"""The shard index: one small row per committed shard (OUT/index/), so bookkeeping costs O(shards), not O(rows).

A writer commits a shard and then its index entry (`entry_of`, computed from the very table it wrote). Readers
trust an entry only while its shard exists with the recorded size (`vouched`); a shard without a trusted entry
(an output written before the index, a crash between the two writes) is read once, and its entry is written then
(`OutputIndex.load`). Resume, the manifest and training all read this; latent statistics are summed per shard
from here, so a re-done shard replaces its numbers instead of adding to them.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import storage
from schemas import SHARD_INDEX, conform
from schemas.manifest import CORPUS_DIR, INDEX_DIR, QUARANTINE_DIR

READ_THREADS = 32          # index entries are tiny: the read is latency-bound (S3 GETs), so many in flight
# Columns of a shard an entry is computed from (the tensors other than latent_mean are never read for it).
CORPUS_ENTRY_COLUMNS = ["clip_id", "track_id", "track_clip_count", "content_hash", "duration_seconds", "split",
                        "caption_source", "latent_mean"]
QUARANTINE_ENTRY_COLUMNS = ["item_id", "track_id", "track_clip_count", "reason"]


def shard_name(item_ids, writer: str = "") -> str:
    """`[<writer>-]<24 hex>.parquet` from the writer's name and the sorted item ids: the same items from the same
    writer always land on the same name."""
    digest = hashlib.sha256("\n".join(sorted(item_ids)).encode()).hexdigest()[:24]
    return f"{writer}-{digest}.parquet" if writer else f"{digest}.parquet"


def index_name(shard: str) -> str:
    """`corpus/ab12....parquet` -> `index/corpus-ab12....parquet`."""
    table, name = shard.split("/", 1)
    return f"{INDEX_DIR}/{table}-{name}"


def latent_moments(latent_mean: pa.ChunkedArray | pa.Array) -> tuple[float, float, int]:
    """(sum, sum of squares, count) of every float16 value in a column of raw latent_mean bytes."""
    raw = b"".join(v for v in latent_mean.to_pylist() if v)
    x = np.frombuffer(raw, "<f2").astype(np.float64)
    return float(x.sum()), float(np.dot(x, x)), int(x.size)


def entry_of(table: pa.Table, kind: str, shard: str, nbytes: int) -> pa.Table:
    """The one-row shard_index entry of a corpus or quarantine shard, from its table (pure)."""
    corpus = kind == CORPUS_DIR
    ids = table["clip_id" if corpus else "item_id"].to_pylist()
    tracks: dict[str, dict] = {}
    for item, track, count, content in zip(ids, table["track_id"].to_pylist(), table["track_clip_count"].to_pylist(),
                                           table["content_hash"].to_pylist() if corpus else [""] * len(ids)):
        entry = tracks.setdefault(track, {"track_id": track, "track_clip_count": count, "content_hash": content,
                                          "item_ids": []})
        entry["item_ids"].append(item)
    splits = Counter(table["split"].to_pylist()) if corpus else Counter()
    moments = latent_moments(table["latent_mean"]) if corpus and table.num_rows else (0.0, 0.0, 0)
    row = {
        "shard": shard, "table": kind, "bytes": nbytes, "rows": table.num_rows,
        "train_rows": splits["train"], "valid_rows": splits["valid"],
        "duration_seconds": float(pc.sum(table["duration_seconds"]).as_py() or 0.0) if corpus else 0.0,
        "caption_sources": sorted(Counter(table["caption_source"].to_pylist()).items()) if corpus else [],
        "reasons": [] if corpus else sorted(Counter(table["reason"].to_pylist()).items()),
        "latent_sum": moments[0], "latent_sumsq": moments[1], "latent_count": moments[2],
        "tracks": list(tracks.values()),
    }
    return conform(pa.Table.from_pylist([row], schema=SHARD_INDEX), SHARD_INDEX)


def write_entry(output: str, entry: pa.Table) -> None:
    storage.write_parquet_atomic(entry, storage.join(output, index_name(entry["shard"][0].as_py())))


def vouched(entries: pa.Table, sizes: dict[str, int]) -> np.ndarray:
    """Which entries describe a shard that exists with the recorded size ({shard: size} of the listing)."""
    return np.array([sizes.get(s) == b for s, b in zip(entries["shard"].to_pylist(), entries["bytes"].to_pylist())],
                    bool)


def _read_many(uris: list[str], read) -> list:
    if not uris:
        return []
    with ThreadPoolExecutor(min(READ_THREADS, len(uris))) as pool:
        return list(pool.map(read, uris))


@dataclass
class OutputIndex:
    """Every trusted entry of an output (`entries`), and which index files have been read (each once a run)."""
    output: str
    entries: pa.Table | None = None
    read: set[str] = field(default_factory=set)
    healed: int = 0                       # shards read in full because no trusted entry described them
    columns: list[str] | None = None      # read only these entry columns (training needs no item ids)
    writer: str = ""                      # only the shards of this writer (`<writer>-<hex>.parquet`); "": all

    @classmethod
    def load(cls, output: str, heal: bool = True, columns: list[str] | None = None, writer: str = "") -> "OutputIndex":
        import os

        uri = output if storage.is_s3(output) else os.path.abspath(output)     # URIs as listings give them
        index = cls(uri, columns=columns, writer=writer)
        empty = SHARD_INDEX.empty_table()
        index.entries = empty.select(columns) if columns else empty
        index.refresh(heal=heal)
        return index

    def shard_sizes(self) -> dict[str, int]:
        """{`corpus/x.parquet`: size} of every shard on storage now (one listing per table folder)."""
        sizes = {}
        for folder in (CORPUS_DIR, QUARANTINE_DIR):      # shards lie directly in their folder
            for uri, size in storage.list_sizes(storage.join(self.output, folder), ".parquet").items():
                if self._mine(uri.rsplit("/", 1)[-1]):
                    sizes[f"{folder}/{uri.rsplit('/', 1)[-1]}"] = size
        return sizes

    def _mine(self, name: str, indexed: bool = False) -> bool:
        """Whether a shard's file name (indexed: an index file's, `<table>-<shard name>`) is this index's writer's."""
        name = name.split("-", 1)[-1] if indexed else name
        return not self.writer or name.startswith(self.writer + "-")

    def refresh(self, heal: bool = True) -> None:
        """Read the index files not read yet, drop entries whose shard is gone or changed, and (heal) write an
        entry for every shard that has none."""
        new = sorted(u for u in set(storage.list_files(storage.join(self.output, INDEX_DIR), ".parquet")) - self.read
                     if self._mine(u.rsplit("/", 1)[-1], indexed=True))
        tables = [self.entries] + _read_many(new, lambda uri: storage.read_parquet(uri, columns=self.columns))
        self.read |= set(new)
        entries = pa.concat_tables(tables) if len(tables) > 1 else self.entries
        sizes = self.shard_sizes()
        entries = entries.filter(pa.array(vouched(entries, sizes))) if entries.num_rows else entries
        entries = _last_per_shard(entries)
        known = set(entries["shard"].to_pylist())
        missing = sorted(s for s in sizes if s not in known)
        if heal and missing:
            healed = _read_many(missing, lambda s: self._heal(s, sizes[s]))
            entries = pa.concat_tables([entries, *healed])
            self.read |= {storage.join(self.output, index_name(s)) for s in missing}
            self.healed += len(missing)
        self.entries = entries

    def _heal(self, shard: str, nbytes: int) -> pa.Table:
        kind = shard.split("/", 1)[0]
        uri = storage.join(self.output, shard)
        try:
            table = storage.read_parquet(uri, columns=CORPUS_ENTRY_COLUMNS if kind == CORPUS_DIR else QUARANTINE_ENTRY_COLUMNS)
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise ValueError(f"corrupt output file {uri}: {error}") from error
        entry = entry_of(table, kind, shard, nbytes)
        write_entry(self.output, entry)
        return entry

    def prune(self) -> int:
        """Delete index files whose shard is gone or changed (after `refresh`); returns how many."""
        keep = {index_name(s).rsplit("/", 1)[-1] for s in self.entries["shard"].to_pylist()}
        stale = sorted(u for u in self.read if u.rsplit("/", 1)[-1] not in keep)
        for uri in stale:
            storage.delete(uri)
            self.read.discard(uri)
        return len(stale)

    def table(self, kind: str) -> pa.Table:
        return self.entries.filter(pc.equal(self.entries["table"], kind))


def committed_items(output: str, writer: str) -> set[str]:
    """The item ids of every committed shard of one writer (a restarted writer takes them up), from their index
    entries; a shard of it with no trusted entry (a crash between the two writes) is read and indexed now."""
    flat = track_items(OutputIndex.load(output, writer=writer).entries)
    return set(pc.list_flatten(flat["item_ids"]).to_pylist()) if flat.num_rows else set()


def _last_per_shard(entries: pa.Table) -> pa.Table:
    """One entry per shard (a shard rewritten with the same items has the same name and the same entry)."""
    names = entries["shard"].to_pylist()
    last = {n: i for i, n in enumerate(names)}
    return entries if len(last) == len(names) else entries.take(sorted(last.values()))


def track_items(entries: pa.Table) -> pa.Table:
    """The entries' tracks flattened: one row per (shard, track) with track_id, track_clip_count, content_hash,
    item_ids and items (how many)."""
    flat = pc.list_flatten(entries["tracks"]) if entries.num_rows else pa.array([], SHARD_INDEX.field("tracks").type.value_type)
    flat = flat.combine_chunks() if isinstance(flat, pa.ChunkedArray) else flat
    table = pa.Table.from_struct_array(flat) if len(flat) else pa.table(
        {f.name: pa.array([], f.type) for f in SHARD_INDEX.field("tracks").type.value_type})
    return table.append_column("items", pc.list_value_length(table["item_ids"]))


def sum_map(column: pa.ChunkedArray) -> dict[str, int]:
    """Sum a map<string, int64> column over rows: {key: total}."""
    out: Counter = Counter()
    for chunk in column.chunks:
        for k, v in zip(chunk.keys.to_pylist(), chunk.items.to_pylist()):   # every row's pairs, flattened
            out[k] += v
    return dict(sorted(out.items()))

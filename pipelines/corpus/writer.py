"""The corpus job's last stage: rows -> training-sized corpus/ and quarantine/ shards (atomic), and the null text.

A pool of `ShardWriter` actors (the driver starts them) each buffers rows in its own open shards (train, valid,
quarantine) and commits one when it reaches its target rows or bytes, when the driver asks it to flush after the
dataset is consumed, and when it is asked to stop. A commit writes the shard under a temp name + rename (one PUT
on S3), then its index entry. A crash loses at most the open shards: their items are in no committed shard, so a
re-run recomputes them. Exactly once: each writer has a name for the run (`<run start>-w<k>`, the prefix of its
shards' names) and stores an item id at most once; a writer Ray restarts (its `add` retried, or rows handed over
again by a retried track) first takes up the item ids of the shards committed under its name (their index entries).
The Ray Data stage (`route_to_writers`) turns each batch into Arrow tables and hands each
track's rows to that track's writer; it returns one summary row per item for the driver's count of this run.
"""
from __future__ import annotations

import hashlib
import os
import signal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import storage
from pipelines.corpus.config import (
    QUARANTINE_SHARD_ROWS,
    ROW_GROUP_ROWS,
    SHARD_BYTES,
    SHARD_ROWS,
    CorpusConfig,
    StageResources,
)
from pipelines.corpus.crashguard import RAY_RETRIES
from pipelines.corpus.failures import is_failure
from pipelines.corpus.index import committed_items, entry_of, shard_name, write_entry
from schemas import CORPUS, NULL_TEXT, QUARANTINE, conform
from schemas.manifest import CORPUS_DIR, NULL_TEXT_DIR, NULL_TEXT_FILE, QUARANTINE_DIR


def split_of(track_id: str, valid_fraction: float) -> str:
    """By track, deterministic: no track ever has clips in both splits."""
    u = int(hashlib.sha256(f"split:{track_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "valid" if u < valid_fraction else "train"


def batch_tables(batch: dict[str, np.ndarray], valid_fraction: float) -> tuple[pa.Table, pa.Table]:
    """A batch's kept rows as a `corpus` table (with `split`) and its rejected rows as a `quarantine` table."""
    ok = np.array([r == "" for r in batch["reject_reason"]], bool)
    if ok.any():
        cols = {name: list(np.asarray(batch[name])[ok]) for name in CORPUS.names if name != "split"}
        cols["split"] = [split_of(t, valid_fraction) for t in cols["track_id"]]
        for name in ("latent_mean", "latent_std", "t5", "clap"):
            cols[name] = [_as_bytes(x) for x in cols[name]]
        cols["tags"] = [list(t) for t in cols["tags"]]
        cols["caption_original"] = [c if c else None for c in cols["caption_original"]]
        corpus = conform(pa.table({n: cols[n] for n in CORPUS.names}), CORPUS)
    else:
        corpus = CORPUS.empty_table()
    bad = ~ok
    if bad.any():
        pick = lambda name: list(np.asarray(batch[name])[bad])  # noqa: E731
        quarantine = conform(pa.table({
            "item_id": pick("clip_id"), "track_id": pick("track_id"), "source_uri": pick("source_uri"),
            "clip_index": pick("clip_index"), "track_clip_count": pick("track_clip_count"),
            "stage": pick("reject_stage"), "reason": pick("reject_reason"), "detail": pick("reject_detail"),
        }), QUARANTINE)
    else:
        quarantine = QUARANTINE.empty_table()
    return corpus, quarantine


def summary(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One row per item for the driver's count of this run and its failure watch (pipelines/corpus/failures.py):
    the reject reason and stage, and the detail only where the failure is ours (a few per run, kept short)."""
    reasons = np.array(["" if r is None else str(r) for r in batch["reject_reason"]], object)
    ours = [is_failure(r) for r in reasons]
    return {"item_id": np.asarray(batch["clip_id"]), "track_id": np.asarray(batch["track_id"]),
            "ok": reasons == "", "reject_reason": reasons,
            "reject_stage": np.array([str(s or "") for s in batch["reject_stage"]], object),
            "reject_detail": np.array([str(d or "")[:500] if o else "" for d, o in zip(batch["reject_detail"], ours)],
                                      object)}


def mixed_order(ids: list[str]) -> list[int]:
    """A fixed pseudo-random order of a shard's rows (by a hash of each id), so clips of one track are spread
    through the shard instead of adjacent: reading it in order is already mixed."""
    return sorted(range(len(ids)), key=lambda i: hashlib.sha256(ids[i].encode()).digest())


class ShardWriter:
    """Fills shards of one writer: open (table, split) buffers, committed at their target, on flush or stop."""

    def __init__(self, output: str, *, shard_rows: int, shard_bytes: int, row_group_rows: int,
                 quarantine_shard_rows: int, name: str = "", die_after_commit: str = ""):
        """name: this writer's name for the run (its shards are `<name>-<hex>.parquet`); a writer started with a
        name that already committed shards (a restart) takes up their item ids. "": one process, no take-up
        (benchmarks, unit tests). die_after_commit: a test hook, a marker file: the first commit that finds it
        missing creates it and SIGKILLs this process before `add` returns (tests/stage/test_writer_restart.py)."""
        self.output, self.row_group_rows, self.name = output, row_group_rows, name
        self.die_after_commit = die_after_commit
        self.targets = {CORPUS_DIR: (shard_rows, shard_bytes), QUARANTINE_DIR: (quarantine_shard_rows, 2**62)}
        self.open: dict[tuple[str, str], list[pa.Table]] = {}
        self.committed: list[str] = []
        # Every item id this writer took: a retried task (a track's worker died after handing over part of its
        # rows) hands the same rows again, and they must not be stored twice. ~100 B an id: 7.7 M clips over 16
        # writers is ~50 MB each. A restarted writer takes up the ids of the shards it committed (so a retried
        # `add` does not store them again); the ids that were only in its lost open shards are free again.
        self.taken: set[str] = committed_items(output, name) if name else set()

    def add(self, corpus: pa.Table, quarantine: pa.Table) -> list[str]:
        """Buffer the rows; commit every open shard that reached its target (a shard holds at most its row
        target: rows beyond it open the next shard). Returns the shards committed."""
        done = []
        corpus, quarantine = self._new(corpus, "clip_id"), self._new(quarantine, "item_id")
        parts = [((CORPUS_DIR, split), corpus.filter(pc.equal(corpus["split"], split)))
                 for split in ("train", "valid")] if corpus.num_rows else []
        parts.append(((QUARANTINE_DIR, ""), quarantine))
        for key, table in parts:
            rows_target, bytes_target = self.targets[key[0]]
            while table.num_rows:
                buffered = self.open.setdefault(key, [])
                room = rows_target - sum(t.num_rows for t in buffered)
                buffered.append(table.slice(0, room))
                table = table.slice(room)
                if sum(t.num_rows for t in buffered) >= rows_target or sum(t.nbytes for t in buffered) >= bytes_target:
                    done.append(self._commit(key))
        return done

    def _new(self, table: pa.Table, id_column: str) -> pa.Table:
        """The rows of table whose item ids this writer has not taken yet (they are taken now)."""
        ids = table[id_column].to_pylist()
        fresh = [i for i, item in enumerate(ids) if item not in self.taken]
        self.taken.update(ids)
        return table if len(fresh) == len(ids) else table.take(pa.array(fresh, pa.int64()))

    def flush(self) -> list[str]:
        """Commit every open shard (the end of the dataset, or a stop); returns the shards committed."""
        return [self._commit(key) for key in sorted(self.open) if self.open[key]]

    def stop(self) -> list[str]:
        return self.flush()

    def _commit(self, key: tuple[str, str]) -> str:
        kind = key[0]
        table = pa.concat_tables(self.open.pop(key))
        ids = table["clip_id" if kind == CORPUS_DIR else "item_id"].to_pylist()
        table = table.take(pa.array(mixed_order(ids), pa.int64()))
        shard = f"{kind}/{shard_name(ids, self.name)}"
        nbytes = storage.write_parquet_atomic(table, storage.join(self.output, shard), self.row_group_rows)
        write_entry(self.output, entry_of(table, kind, shard, nbytes))    # after the shard: an entry vouches for it
        self.committed.append(shard)
        if self.die_after_commit and not os.path.exists(self.die_after_commit):
            open(self.die_after_commit, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return shard


def writer_of(track_id: str, writers: int) -> int:
    """The writer of a track's rows, by a hash of its id: every writer gets a share of any batch of several
    tracks, so even a small corpus fills one shard per writer (training gives each worker whole shards)."""
    return int(hashlib.sha256(f"writer:{track_id}".encode()).hexdigest()[:8], 16) % writers


def route_to_writers(batch: dict[str, np.ndarray], writers: list, valid_fraction: float) -> dict[str, np.ndarray]:
    """The Ray Data writer stage: each row, as Arrow, to the writer of its track (`writer_of`); waits for
    them, so a slow writer slows the stream."""
    import ray

    owner = np.array([writer_of(str(t), len(writers)) for t in batch["track_id"]], np.int64)
    calls = []
    for w in np.unique(owner):
        rows = np.flatnonzero(owner == w)
        calls.append(writers[w].add.remote(*batch_tables({k: np.asarray(v)[rows] for k, v in batch.items()},
                                                         valid_fraction)))
    ray.get(calls)
    return summary(batch)


def start_writers(config: CorpusConfig, *, die_after_commit: str = "") -> list:
    """The pool of writer actors, with the `writer` stage's resources, named `<run start>-w<k>`. Restarted if
    they die, with their calls retried: a restarted writer takes up the item ids its committed shards hold, so
    nothing is stored twice (its open shards are lost and recomputed by the next run; committed shards are
    safe). die_after_commit: the test hook of ShardWriter."""
    import time

    import ray

    stage = config.stage("writer")
    run = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    # Bounded like every pool of ours (crashguard.RAY_RETRIES): a writer that keeps dying fails the job, never loops.
    actor = ray.remote(ShardWriter).options(max_restarts=RAY_RETRIES, max_task_retries=RAY_RETRIES,
                                            **stage.ray_options())
    return [actor.remote(config.output, shard_rows=config.shard_rows, shard_bytes=config.shard_bytes,
                         row_group_rows=config.row_group_rows, quarantine_shard_rows=config.quarantine_shard_rows,
                         name=f"{run}-w{k}", die_after_commit=die_after_commit)
            for k in range(max(1, stage.actors))]


class CorpusWriter:
    """The writer in one process (benchmarks): batch -> shards through a local ShardWriter -> summary rows."""

    def __init__(self, output: str, valid_fraction: float, **targets):
        self.valid_fraction = valid_fraction
        self.shards = ShardWriter(output, **{"shard_rows": SHARD_ROWS, "shard_bytes": SHARD_BYTES,
                                             "row_group_rows": ROW_GROUP_ROWS,
                                             "quarantine_shard_rows": QUARANTINE_SHARD_ROWS, **targets})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.shards.add(*batch_tables(batch, self.valid_fraction))
        return summary(batch)

    def flush(self) -> list[str]:
        return self.shards.flush()


def _as_bytes(x) -> bytes:
    if isinstance(x, (bytes, bytearray)):
        return bytes(x)
    return np.ascontiguousarray(np.asarray(x, np.float16)).tobytes()


def write_null_text(config: CorpusConfig, text: StageResources | None = None) -> dict:
    """The empty-caption embeddings, through the very same TextStage (and resources: `text`, the run's placement of
    the text stage, default the config's) as every caption. One row: batch_size=1, which Ray Data requires with GPUs."""
    import ray.data

    from pipelines.corpus.encode import TextStage

    text = text or config.stage("text")
    ds = ray.data.from_items([{"caption": "", "reject_reason": "", "reject_stage": "", "reject_detail": ""}])
    row = ds.map_batches(TextStage, compute=ray.data.ActorPoolStrategy(size=1), batch_size=1, **text.ray_options(),
                         fn_constructor_kwargs={"kit_name_or_path": config.kit}).take(1)[0]
    t5, clap = _as_bytes(row["t5"]), _as_bytes(row["clap"])
    table = conform(pa.table({"t5": [t5], "t5_length": [int(row["t5_length"])], "clap": [clap]}), NULL_TEXT)
    storage.write_parquet_atomic(table, storage.join(config.output, NULL_TEXT_DIR, NULL_TEXT_FILE))
    return {"t5_dim": len(t5) // 2 // max(1, int(row["t5_length"])), "clap_dim": len(clap) // 2}

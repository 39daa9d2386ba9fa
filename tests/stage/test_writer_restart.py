"""A real writer actor SIGKILLed mid-run and restarted by Ray stores every row exactly once: killed between a
shard commit and the return of its `add` (Ray retries the call on the new actor), and killed after a hand-over
whose rows are then handed over again (a retried track)."""
from __future__ import annotations

import os
from collections import Counter


from pipelines import storage
from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.index import OutputIndex, track_items
from pipelines.corpus.ledger import ledger_of
from pipelines.corpus.writer import route_to_writers, start_writers
from schemas.manifest import CORPUS_DIR
from tests.writer_rows import batch


def stored_ids(out: str) -> tuple[Counter, Counter]:
    """(item ids in the corpus shards on storage, item ids in the trusted index entries), with their counts."""
    shards = storage.list_files(storage.join(out, CORPUS_DIR), ".parquet")
    in_shards = Counter(i for s in shards for i in storage.read_parquet(s, columns=["clip_id"])["clip_id"].to_pylist())
    entries = track_items(OutputIndex.load(out).entries)
    return in_shards, Counter(i for ids in entries["item_ids"].to_pylist() for i in ids)


def test_a_writer_killed_mid_add_and_after_a_hand_over_stores_every_row_once(ray_local, tmp_path):
    import ray

    out, died = str(tmp_path / "out"), str(tmp_path / "died-after-commit")
    config = CorpusConfig(inputs=[], output=out, writers=1, shard_rows=2, row_group_rows=2, valid_fraction=0.0)
    (writer,) = start_writers(config, die_after_commit=died)
    pid = lambda: ray.get(writer.__ray_call__.remote(lambda self: os.getpid()))  # noqa: E731

    def hand(track: str, clips: int) -> None:
        route_to_writers(batch(track, clips), [writer], 0.0)

    hand("a", 1)                         # a0 waits in the open shard
    first = pid()
    hand("b", 2)                         # {a0, b0} committed, then the writer is SIGKILLed before add returns
    assert os.path.exists(died) and pid() != first, "the test hook killed the writer once; Ray restarted it"
    hand("c", 2)                         # {b1, c0} committed; c1 waits
    second = pid()
    ray.kill(writer, no_restart=False)   # after that hand-over: c1 is lost with the open shard
    hand("c", 2)                         # the track's worker is retried: c0 again (skipped), c1 again (stored)
    assert pid() != second
    hand("a", 1), hand("b", 2)           # everything handed over again changes nothing
    ray.get(writer.flush.remote())
    ray.kill(writer)

    expected = {"a-00000", "b-00000", "b-00001", "c-00000", "c-00001"}
    in_shards, in_index = stored_ids(out)
    assert set(in_shards) == expected and max(in_shards.values()) == 1, in_shards
    assert in_index == in_shards
    ledger = ledger_of(OutputIndex.load(out))
    assert all(ledger.held[t] == ledger.expected[t] for t in "abc"), ledger.held

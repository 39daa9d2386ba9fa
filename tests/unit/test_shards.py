"""Shards and their index without Ray: targets, atomic commit + entry, resume from the index, healing, stats."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipelines import storage
from pipelines.corpus.account import latent_stats
from pipelines.corpus.config import CorpusConfig, load_stage_resources, parse_stage_resources
from pipelines.corpus.index import OutputIndex, sum_map, track_items
from pipelines.corpus.ledger import ledger_of
from pipelines.corpus.writer import ShardWriter, batch_tables
from schemas import CORPUS, SHARD_INDEX, validate
from schemas.manifest import CORPUS_DIR, INDEX_DIR, QUARANTINE_DIR
from tests.writer_rows import batch


def writer(out: str, rows: int = 5) -> ShardWriter:
    return ShardWriter(out, shard_rows=rows, shard_bytes=2**40, row_group_rows=2, quarantine_shard_rows=100)


def test_shards_fill_to_target_and_index_vouches_for_them(tmp_path):
    out = str(tmp_path)
    w = writer(out)
    committed = []
    for t in range(4):                                   # 4 tracks x 3 clips: a shard of 5 mixes tracks
        committed += w.add(*batch_tables(batch(f"t{t}", 3, rejected=1, value=float(t)), valid_fraction=0.0))
    assert committed and all(s.startswith("corpus/") for s in committed)
    assert not storage.list_files(os.path.join(out, QUARANTINE_DIR)), "quarantine waits for its own target"
    committed += w.flush()
    corpus = [storage.read_parquet(os.path.join(out, s)) for s in committed if s.startswith(CORPUS_DIR)]
    for table in corpus:
        validate(table, CORPUS)
    assert sum(t.num_rows for t in corpus) == 12 and len(set(corpus[0]["track_id"].to_pylist())) > 1
    assert [t.num_rows for t in corpus] == [5, 5, 2]            # a shard never passes its row target
    index = OutputIndex.load(out)
    assert index.healed == 0 and index.entries.num_rows == len(committed)
    validate(index.entries, SHARD_INDEX)
    ledger = ledger_of(index)
    assert all(ledger.complete(f"t{t}") for t in range(4)) and ledger.hashes["ht2"] == "t2"
    assert sum_map(index.table(QUARANTINE_DIR)["reasons"]) == {"silent": 4}
    c = index.table(CORPUS_DIR)
    mean, std = latent_stats(c["latent_sum"].to_numpy(), c["latent_sumsq"].to_numpy(), c["latent_count"].to_numpy())
    assert mean == pytest.approx(1.5) and std == pytest.approx(np.std([0, 1, 2, 3]))


def test_one_large_batch_is_split_at_the_row_target(tmp_path):
    w = writer(str(tmp_path), rows=4)
    committed = w.add(*batch_tables(batch("big", 11, rejected=0, value=1.0), valid_fraction=0.0))
    assert len(committed) == 2 and w.flush() and len(w.committed) == 3
    rows = [storage.read_parquet(os.path.join(str(tmp_path), s)).num_rows for s in w.committed]
    assert rows == [4, 4, 3]


def test_rows_handed_over_again_are_stored_once(tmp_path):
    """A retried task (its worker died after handing over part of a track) hands the same rows again."""
    w = writer(str(tmp_path), rows=4)
    committed = w.add(*batch_tables(batch("t0", 3, rejected=1), valid_fraction=0.0))
    committed += w.add(*batch_tables(batch("t0", 3, rejected=1), valid_fraction=0.0))     # the retry
    committed += w.add(*batch_tables(batch("t1", 2, rejected=1), valid_fraction=0.0))
    committed += w.flush()

    def ids(kind: str, column: str) -> list[str]:
        return sorted(i for s in committed if s.startswith(kind)
                      for i in storage.read_parquet(os.path.join(str(tmp_path), s))[column].to_pylist())

    assert ids(CORPUS_DIR, "clip_id") == ["t0-00000", "t0-00001", "t0-00002", "t1-00000", "t1-00001"]
    assert ids(QUARANTINE_DIR, "item_id") == ["t0-00003", "t1-00002"]


def test_a_restarted_writer_takes_up_the_items_it_committed(tmp_path):
    """Ray restarts a dead writer with the same name: it takes up the item ids of its committed shards (also one
    whose index entry was never written), not another writer's, so a retried call or hand-over stores nothing twice."""
    out = str(tmp_path)

    def named(name: str) -> ShardWriter:
        return ShardWriter(out, name=name, shard_rows=2, shard_bytes=2**40, row_group_rows=2, quarantine_shard_rows=2)

    w = named("run1-w0")
    assert w.taken == set()
    w.add(*batch_tables(batch("t0", 3), valid_fraction=0.0))             # {t0-0, t0-1} committed, t0-2 open
    (last,) = w.add(*batch_tables(batch("t1", 0, rejected=2), valid_fraction=0.0))
    assert last.startswith(f"{QUARANTINE_DIR}/run1-w0-")
    os.remove(os.path.join(out, INDEX_DIR, last.replace("/", "-")))       # died between the shard and its entry
    named("run1-w1").add(*batch_tables(batch("t2", 2), valid_fraction=0.0))     # another writer's shard
    again = named("run1-w0")
    assert again.taken == {"t0-00000", "t0-00001", "t1-00000", "t1-00001"}     # t0-2 was in the lost open shard
    assert again.add(*batch_tables(batch("t1", 0, rejected=2), valid_fraction=0.0)) == []
    again.add(*batch_tables(batch("t0", 3), valid_fraction=0.0))
    assert len(again.flush()) == 1                                       # {t0-2}
    index = OutputIndex.load(out)
    ids = [i for shard_ids in track_items(index.entries)["item_ids"].to_pylist() for i in shard_ids]
    assert sorted(ids) == ["t0-00000", "t0-00001", "t0-00002", "t1-00000", "t1-00001", "t2-00000", "t2-00001"]
    assert all(ledger_of(index).complete(t) for t in ("t0", "t1", "t2"))


def test_a_lost_shard_makes_its_tracks_incomplete_and_an_unindexed_one_is_healed(tmp_path):
    out = str(tmp_path)
    w = writer(out, rows=3)
    for t in range(3):
        w.add(*batch_tables(batch(f"t{t}", 3), valid_fraction=0.0))
    w.flush()
    shards = sorted(storage.list_files(os.path.join(out, CORPUS_DIR)))
    os.remove(shards[0])                                  # lost: its entry no longer vouches
    os.rename(*(os.path.join(out, INDEX_DIR, n) for n in (sorted(os.listdir(os.path.join(out, INDEX_DIR)))[-1], "x.tmp")))
    index = OutputIndex.load(out)                         # the shard whose entry is gone is read and re-indexed
    assert index.healed == 1 and index.prune() == 1
    ledger = ledger_of(index)
    assert sum(ledger.complete(f"t{t}") for t in range(3)) == 2
    lost = next(t for t in ("t0", "t1", "t2") if not ledger.complete(t))
    assert ledger.held.get(lost, 0) == 0 and lost not in ledger.items
    assert OutputIndex.load(out).healed == 0


def test_a_corrupt_unindexed_file_is_named(tmp_path):
    bad = tmp_path / CORPUS_DIR / "0123456789abcdef01234567.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match=str(bad)):
        OutputIndex.load(str(tmp_path))


def test_stage_resources_from_flags_and_file():
    flags = parse_stage_resources(["vae=gpus:1,actors:8,corpus_gpu:0.01", "writer=actors:4"])
    assert flags == {"vae": {"gpus": 1.0, "actors": 8, "resources": {"corpus_gpu": 0.01}}, "writer": {"actors": 4}}
    config = CorpusConfig(inputs=[], output="x", stage_resources=flags)
    assert config.stage("vae").ray_options() == {"num_cpus": 0.5, "num_gpus": 1.0, "resources": {"corpus_gpu": 0.01}}
    assert config.stage("writer").actors == 4 and config.stage("text").actors == 1
    assert load_stage_resources('{"mel": {"cpus": 2}}') == {"mel": {"cpus": 2}}
    # the mix takes the text stage's resources (so Ray fuses it into the T5 actors) unless given its own
    text = parse_stage_resources(["text=cpus:4,gpus:1,corpus_gpu:0.01"])
    assert CorpusConfig(inputs=[], output="x", stage_resources=text).stage("mix").ray_options() == {
        "num_cpus": 4.0, "num_gpus": 1.0, "resources": {"corpus_gpu": 0.01}}
    own = CorpusConfig(inputs=[], output="x", stage_resources={**text, "mix": {"cpus": 0.25}})
    assert own.stage("mix").ray_options() == {"num_cpus": 0.25, "num_gpus": 1.0, "resources": {"corpus_gpu": 0.01}}
    with pytest.raises(ValueError):
        parse_stage_resources(["nope=cpus:1"])
    with pytest.raises(ValueError):
        load_stage_resources("vae: {gpu: 1}")


def test_training_scan_uses_the_index_and_falls_back_without_it(tmp_path, monkeypatch):
    import shutil

    from pipelines.training import data

    out = str(tmp_path)
    w = writer(out, rows=4)
    for t in range(5):
        w.add(*batch_tables(batch(f"t{t}", 3), valid_fraction=0.3))
    w.flush()
    with_index = data.scan_corpus(out)
    assert sum(f.train_rows + f.valid_rows for f in with_index) == 15
    scanned = []
    monkeypatch.setattr(data, "_scan_file", lambda uri: scanned.append(uri) or data.CorpusFile(uri, -1, -1))
    assert data.scan_corpus(out) == with_index and not scanned, "every file vouched for: no footer read"
    monkeypatch.undo()
    shutil.rmtree(os.path.join(out, INDEX_DIR))
    assert data.scan_corpus(out) == with_index


def test_rows_go_to_their_tracks_writer_and_every_writer_gets_a_share():
    from pipelines.corpus.writer import writer_of

    owners = [writer_of(f"{t:016x}", 2) for t in range(40)]
    assert set(owners) == {0, 1} and owners == [writer_of(f"{t:016x}", 2) for t in range(40)]
    assert all(writer_of(f"{t:016x}", 1) == 0 for t in range(5))

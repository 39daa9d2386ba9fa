"""Training leaves out the tracks of a corpus's overlap exclusion list: in the counts and in the rows it reads."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import storage
from pipelines.training.data import read_exclusions, read_split, scan_corpus, validation_dataset
from schemas.manifest import CORPUS_DIR, EXCLUDE_FILE, OVERLAP_DIR
from tests.corpus_fixture import write_tiny_corpus


def _tracks(data: str) -> pa.Table:
    uris = storage.list_files(storage.join(data, CORPUS_DIR), ".parquet")
    return pa.concat_tables([storage.read_parquet(u, columns=["track_id", "split"]) for u in uris])


def test_excluded_tracks_are_neither_counted_nor_read(ray_local, tmp_path):
    data = str(tmp_path / "corpus")
    write_tiny_corpus(data, n_clips=16, clips_per_track=2, files=2)        # 8 tracks, with a shard index
    rows = _tracks(data)
    train_tracks = sorted(set(rows.filter(pc.equal(rows["split"], "train"))["track_id"].to_pylist()))
    valid_tracks = sorted(set(rows.filter(pc.equal(rows["split"], "valid"))["track_id"].to_pylist()))
    excluded = frozenset([train_tracks[0], valid_tracks[0]])
    assert read_exclusions(data) == frozenset()                           # no list: nothing left out
    before = scan_corpus(data)
    storage.write_bytes_atomic(storage.join(data, OVERLAP_DIR, EXCLUDE_FILE), "\n".join(sorted(excluded)).encode())
    assert read_exclusions(data) == excluded

    after = scan_corpus(data, excluded=read_exclusions(data))
    left_out = int(pc.sum(pc.is_in(rows["track_id"], value_set=pa.array(sorted(excluded)))).as_py())
    assert sum(f.train_rows + f.valid_rows for f in before) - sum(f.train_rows + f.valid_rows for f in after) == left_out
    assert sum(f.train_rows for f in before) - sum(f.train_rows for f in after) == 2    # 2 clips per track
    assert sorted(t for f in after for t in f.excluded) == sorted(excluded)

    train = read_split([f.uri for f in after], "train", excluded).take_all()
    assert len(train) == sum(f.train_rows for f in after)
    assert not {r["track_id"] for r in train} & excluded
    valid = validation_dataset(after, max_rows=100).take_all()
    assert len(valid) == sum(f.valid_rows for f in after) and not {r["track_id"] for r in valid} & excluded

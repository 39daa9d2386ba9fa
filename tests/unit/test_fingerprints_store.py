"""Fingerprints stored before their rows: which tracks a run writes (`may_keep`) and which rows a reader counts
(`load_fingerprints` with the tracks that hold a corpus clip)."""
from __future__ import annotations

import numpy as np

from pipelines.corpus import dedup


def _claim(track: str, content_hash: str, seed: int) -> dict:
    fp = np.random.default_rng(seed).integers(0, 2**32, 400, dtype=np.uint64).astype(np.uint32)
    return {"track_id": track, "source_uri": f"/m/{track}.flac", "content_hash": content_hash, "fingerprint": fp}


def test_a_run_writes_the_tracks_that_may_keep_a_clip():
    hashed = [_claim("t-a", "h1", 1), _claim("t-b", "h1", 1), _claim("t-near", "h2", 2), _claim("t-new", "h3", 3),
              _claim("t-late", "h-old", 4)]
    # t-b: an exact copy of t-a (larger URI); t-near: a near-duplicate; t-late: its hash is kept by an earlier run
    assert dedup.may_keep({"h-old": "t-old"}, hashed, {"t-near": "same recording as ..."}) == {"t-a", "t-new"}


def test_a_reader_counts_only_the_rows_of_tracks_that_hold_a_corpus_clip(tmp_path):
    out = str(tmp_path)
    first = [_claim("t-a", "h1", 1), _claim("t-died", "h2", 2)]        # run 1 wrote both, then died before t-died
    dedup.write_fingerprints(out, first, {"t-a", "t-died"}, 0.0)
    dedup.write_fingerprints(out, [_claim("t-died", "h2", 2)], {"t-died"}, 3600.0)     # run 2 redid t-died
    assert dedup.load_fingerprints(out, 0.83, {"t-a"}).track_ids == ["t-a"]
    both = dedup.load_fingerprints(out, 0.83, {"t-a", "t-died"})
    assert both.track_ids == ["t-a", "t-died"] and len(both.fingerprints) == 2     # the repeated row is ignored
    assert dedup.load_fingerprints(out, 0.83).track_ids == ["t-a", "t-died"]       # no filter: every row
    assert len(dedup.load_fingerprints(out, 0.83, set())) == 0

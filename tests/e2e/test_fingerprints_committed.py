"""Fingerprints are on storage with their track's rows: a `--no-near-duplicates` run that stores a track and then
fails still leaves its fingerprint, so check_overlap and a later run's near-duplicate check both see that track."""
from __future__ import annotations

import shutil

import pytest

from pipelines import storage
from pipelines.corpus import dedup, overlap
from pipelines.corpus import pipeline as corpus_pipeline
from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.ledger import read_ledger
from pipelines.corpus.pipeline import prepare_corpus
from pipelines.corpus.sources import track_id
from tests.e2e.test_dedup import _account
from tests.music_variants import make_variants


def test_a_failed_run_without_near_duplicates_leaves_the_fingerprints_of_what_it_stored(ray_local, tmp_path,
                                                                                          monkeypatch):
    (tmp_path / "made").mkdir()
    made = make_variants(str(tmp_path / "made"))
    first, second, evaluation = tmp_path / "first", tmp_path / "a-second", tmp_path / "eval"
    for folder, name in ((first, "excerpt-frontiers"), (second, "mp3"), (evaluation, "trimmed")):
        folder.mkdir()
        shutil.copy(made[name], folder)
    output = str(tmp_path / "out")
    config = CorpusConfig(inputs=[str(first)], output=output, kit="tiny", batch_size=4, near_duplicate_threshold=0.0)
    stream = corpus_pipeline.run_stream

    def stream_then_die(*args, **kwargs):
        stream(*args, **kwargs)                            # every row committed, then the job dies
        raise RuntimeError("the driver died")

    monkeypatch.setattr(corpus_pipeline, "run_stream", stream_then_die)
    with pytest.raises(RuntimeError, match="driver died"):
        prepare_corpus(config, progress=lambda *_: None)
    monkeypatch.undo()
    kept = track_id(str(first / "excerpt-frontiers.flac"))
    assert read_ledger(output).complete(kept), "the run stored the track before it died"
    assert dedup.load_fingerprints(output, 0.83, {kept}).track_ids == [kept]

    report = overlap.check_overlap(output, [str(evaluation)])
    assert report["corpus_fingerprints"] == "fingerprints table"         # stored, not decoded again
    assert [m["corpus_track_id"] for m in report["matches"]] == [kept]

    # The next run (near-duplicates on) skips the stored track and finds its re-encode, whose URI sorts first.
    prepare_corpus(CorpusConfig(**{**config.__dict__, "inputs": [str(first), str(second)],
                                   "near_duplicate_threshold": 0.83}), progress=lambda *_: None)
    assert _account(output)["mp3.mp3"] == "near_duplicate"
    assert len(storage.list_files(storage.join(output, dedup.FINGERPRINTS_DIR), ".parquet")) == 1   # nothing new kept

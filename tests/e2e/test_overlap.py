"""jobs/check_overlap.py: evaluation tracks that are copies of corpus tracks are found, reported and excluded,
from the corpus tables' source URIs or from a stored fingerprints table (for the corpus tracks it holds)."""
from __future__ import annotations

import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.check_overlap import main
from pipelines.corpus import fingerprint as F
from pipelines.corpus import overlap, sources
from pipelines.corpus.audio import decode
from pipelines.training.data import read_exclusions
from tests.music_variants import make_variants


@pytest.fixture(scope="module")
def corpus_and_eval(tmp_path_factory):
    files = make_variants(str(tmp_path_factory.mktemp("variants")))
    corpus = tmp_path_factory.mktemp("corpus")
    uris = [files["excerpt-frontiers"], files["excerpt-machine_wars"]]
    ids = [sources.track_id(u) for u in uris]
    os.makedirs(corpus / "corpus")
    # Two clip rows per track, as the corpus has: only track_id and source_uri are read.
    pq.write_table(pa.table({"track_id": ids * 2, "source_uri": uris * 2, "clip_index": [0, 0, 1, 1]}),
                   corpus / "corpus" / "a.parquet")
    evaluation = tmp_path_factory.mktemp("eval")
    shutil.copy(files["trimmed"], evaluation / "leaked_trimmed.flac")
    shutil.copy(files["excerpt-time_to_strike"], evaluation / "clean.flac")
    (evaluation / "manifest.csv").write_text("file_name,caption\nleaked_trimmed.flac,x\nclean.flac,y\nlost.wav,z\n")
    return str(corpus), str(evaluation), dict(zip(("frontiers", "machine_wars"), ids)), files


def test_overlap_from_corpus_source_uris_reports_and_excludes(corpus_and_eval, capsys):
    corpus, evaluation, ids, _ = corpus_and_eval
    assert main(["--corpus", corpus, "--eval", evaluation, "--exclude"]) == 1
    report = json.load(open(os.path.join(corpus, "overlap", "report.json")))
    assert report["corpus_fingerprints"] == "decoded from corpus source_uri" and report["corpus_tracks"] == 2
    (match,) = report["matches"]
    assert match["corpus_track_id"] == ids["frontiers"] and match["eval_source_uri"].endswith("leaked_trimmed.flac")
    assert match["score"] >= F.MATCH_THRESHOLD and abs(match["offset_seconds"] - 7.0) < 0.3
    assert (report["eval_tracks"], report["eval_tracks_matched"], report["corpus_tracks_matched"]) == (2, 1, 1)
    assert read_exclusions(corpus) == {ids["frontiers"]}
    assert "1 of 2 corpus tracks match 1 of 2 evaluation tracks" in capsys.readouterr().out


def test_overlap_reads_the_fingerprints_table_and_a_manifest(corpus_and_eval, tmp_path):
    corpus, evaluation, ids, files = corpus_and_eval
    stored = str(tmp_path / "corpus")
    shutil.copytree(corpus, stored)
    shutil.rmtree(os.path.join(stored, "overlap"), ignore_errors=True)
    index = F.NearDuplicateIndex()
    index.add(ids["machine_wars"], F.fingerprint(decode(files["excerpt-machine_wars"]).audio), "/elsewhere/mw.mp3")
    # A row of a track with no corpus row (a run stored it before its stream, then died): it counts not.
    index.add("never-committed", F.fingerprint(decode(files["trimmed"]).audio), "/gone/trimmed.flac")
    os.makedirs(os.path.join(stored, "fingerprints"))
    pq.write_table(index.to_table(), os.path.join(stored, "fingerprints", "part-0.parquet"))
    # The table stands for the corpus tracks it holds (machine_wars); frontiers, a corpus track it lacks, is
    # decoded from its source_uri, so its trimmed copy is found; no exclusion list without --exclude.
    report = overlap.check_overlap(stored, [os.path.join(evaluation, "manifest.csv")])
    assert report["corpus_fingerprints"] == "fingerprints table + 1 decoded from corpus source_uri"
    assert report["corpus_tracks"] == 2 and report["exclude_file"] is None
    assert [m["corpus_track_id"] for m in report["matches"]] == [ids["frontiers"]]
    assert [f["source_uri"].endswith("lost.wav") for f in report["failed"]["eval"]] == [True]   # listed, not there
    assert read_exclusions(stored) == frozenset()
    assert main(["--corpus", stored, "--eval", os.path.join(evaluation, "manifest.csv")]) == 1

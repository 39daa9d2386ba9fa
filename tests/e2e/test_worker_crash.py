"""A native crash never hangs the corpus job: a real SIGSEGV on one named file (the test-only fault hook
FLUXMUSIC_INJECT_CRASH, pipelines/corpus/crashguard.py) in the fused plan, the staged plan and the dedup pre-pass.
The job ends, the file is quarantined `worker_crash` naming the signal and the stage, every other input is stored
exactly once. And a pool whose actor itself keeps dying ends the job with an error, not a hang."""
from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from pipelines import storage
from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.crashguard import INJECT_ENV, WORKER_CRASH
from pipelines.corpus.pipeline import prepare_corpus
from schemas import CORPUS, QUARANTINE, validate
from schemas.manifest import CORPUS_DIR, QUARANTINE_DIR
from tests.audio_fixtures import write_tone_track

TRACKS = {"good_a.flac": 12.0, "bad.flac": 12.0, "good_c.flac": 6.0}     # 1 clip + short tail, the same, 1 clip


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> tuple[str, list[str]]:
    folder = tmp_path_factory.mktemp("crash-music")
    for i, (name, seconds) in enumerate(TRACKS.items()):
        write_tone_track(str(folder / name), seconds=seconds, seed=40 + i)     # seeds differ: no near-duplicates
    return str(folder), sorted(str(folder / name) for name in TRACKS)


def read_all(uri: str, schema: pa.Schema) -> pa.Table:
    tables = [storage.read_parquet(f) for f in storage.list_files(uri, ".parquet")]
    for table in tables:
        validate(table, schema)
    return pa.concat_tables(tables) if tables else schema.empty_table()


def account(output: str, inputs: list[str]) -> tuple[pa.Table, pa.Table]:
    """The corpus and quarantine tables, after checking every input is stored exactly once."""
    corpus = read_all(storage.join(output, CORPUS_DIR), CORPUS)
    quarantine = read_all(storage.join(output, QUARANTINE_DIR), QUARANTINE)
    items = corpus["clip_id"].to_pylist() + quarantine["item_id"].to_pylist()
    assert len(items) == len(set(items)), f"duplicated items: {[i for i, n in Counter(items).items() if n > 1]}"
    tracks = corpus["track_id"].to_pylist() + quarantine["track_id"].to_pylist()
    counts = corpus["track_clip_count"].to_pylist() + quarantine["track_clip_count"].to_pylist()
    per_track = Counter(tracks)
    assert all(per_track[t] == n for t, n in zip(tracks, counts)), "a track has missing or extra rows"
    assert set(corpus["source_uri"].to_pylist() + quarantine["source_uri"].to_pylist()) == set(inputs)
    return corpus, quarantine


def run_with_crash(config: CorpusConfig, hook: str, monkeypatch) -> dict:
    monkeypatch.setenv(INJECT_ENV, hook)
    return prepare_corpus(config, progress=lambda *_: None)


@pytest.mark.parametrize("plan, stage", [("fused", "vae"), ("staged", "vae"), ("fused", "dedup"),
                                         ("staged", "frontend")])
def test_a_segfault_quarantines_only_its_file(ray_local, music, tmp_path, monkeypatch, plan, stage):
    folder, inputs = music
    config = CorpusConfig(inputs=[folder], output=str(tmp_path / "out"), batch_size=4, plan=plan)
    manifest = run_with_crash(config, f"{stage}:bad.flac", monkeypatch)
    assert manifest["counts"]["inputs"] == len(inputs) and manifest["counts"]["incomplete_tracks"] == 0

    corpus, quarantine = account(config.output, inputs)
    bad = [r for r in quarantine.to_pylist() if r["source_uri"].endswith("bad.flac")]
    crashed = [r for r in bad if r["reason"] == WORKER_CRASH]
    assert crashed, bad
    assert all(r["stage"] == stage and "SIGSEGV" in r["detail"] and f"stage {stage}" in r["detail"] for r in crashed)
    assert not [u for u in corpus["source_uri"].to_pylist() if u.endswith("bad.flac")]
    others = {u for u in corpus["source_uri"].to_pylist()}
    assert others == {u for u in inputs if not u.endswith("bad.flac")}, "every other track keeps its clip"
    assert {r["reason"] for r in quarantine.to_pylist() if not r["source_uri"].endswith("bad.flac")} <= {"short_tail"}


def test_an_actor_that_keeps_dying_fails_the_job_instead_of_hanging(ray_local, music, tmp_path, monkeypatch):
    """The fault hook in the fused actor itself (its hand-over to the writers): Ray restarts it a bounded number
    of times (crashguard.RAY_RETRIES), then the job fails with Ray's error."""
    folder, _ = music
    config = CorpusConfig(inputs=[folder], output=str(tmp_path / "out"), batch_size=4, plan="fused")
    with pytest.raises(Exception) as failure:          # noqa: PT011 - Ray's own error type, whichever it is
        run_with_crash(config, "writer:bad.flac", monkeypatch)
    assert "died" in str(failure.value).lower() or "actor" in str(failure.value).lower(), failure.value

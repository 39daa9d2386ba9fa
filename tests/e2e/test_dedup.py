"""Duplicate tracks: the kept copy follows the documented rule, whatever the order of claims, across runs and restarts."""
from __future__ import annotations

import json
import shutil

import pyarrow as pa

from pipelines import storage
from pipelines.corpus import dedup
from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.pipeline import prepare_corpus
from schemas.manifest import CORPUS_DIR, QUARANTINE_DIR
from tests.audio_fixtures import write_tone_track


def test_registry_killed_between_claims_restarts_with_the_same_claims(ray_local, tmp_path):
    claims = str(tmp_path / "claims.json")
    storage.write_bytes_atomic(claims, json.dumps(
        dedup.plan_owners({}, [{"content_hash": "h1", "track_id": "t-a", "source_uri": "/m/a.flac"}])).encode())
    registry = ray_local.remote(dedup.DedupRegistry).options(num_cpus=0, max_restarts=-1, max_task_retries=-1) \
        .remote(claims, {"h0": "t-old"})
    before = [ray_local.get(registry.claim.remote(*c)) for c in
              [("h1", "t-b", "/m/b.flac"), ("h2", "t-c", "/m/c.flac"), ("h0", "t-d", "/m/d.flac")]]
    assert before == ["/m/a.flac", None, "track t-old (kept by an earlier run)"]
    pid = ray_local.get(registry.__ray_call__.remote(lambda self: __import__("os").getpid()))
    ray_local.kill(registry, no_restart=False)
    # h2 was first claimed (not planned) before the kill: the restarted actor reads that claim back.
    after = [ray_local.get(registry.claim.remote(*c)) for c in
             [("h2", "t-e", "/m/e.flac"), ("h1", "t-b", "/m/b.flac"), ("h2", "t-c", "/m/c.flac")]]
    assert after == ["/m/c.flac", "/m/a.flac", None]
    assert ray_local.get(registry.__ray_call__.remote(lambda self: __import__("os").getpid())) != pid, "it restarted"
    ray_local.kill(registry)


def _account(output: str) -> dict[str, str]:
    """{file name: "" kept | quarantine reason} over an output."""
    out: dict[str, str] = {}
    for folder, reason_col in ((CORPUS_DIR, None), (QUARANTINE_DIR, "reason")):
        files = storage.list_files(storage.join(output, folder), ".parquet")
        if not files:
            continue
        table = pa.concat_tables([storage.read_parquet(f) for f in files]).to_pydict()
        for i, uri in enumerate(table["source_uri"]):
            out.setdefault(uri.rsplit("/", 1)[-1], table[reason_col][i] if reason_col else "")
    return out


def test_second_run_with_a_copy_of_a_kept_track_quarantines_the_copy(ray_local, tmp_path):
    """Issue 11 (a) end to end: run 2 adds a copy (whose URI sorts first) of a track run 1 kept."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    write_tone_track(str(first / "z original.flac"), seconds=6.0, seed=7)
    output = str(tmp_path / "out")
    config = CorpusConfig(inputs=[str(first)], output=output, kit="tiny", batch_size=4)
    prepare_corpus(config, progress=lambda *_: None)
    assert _account(output) == {"z original.flac": ""}
    shutil.copyfile(first / "z original.flac", second / "a copy.flac")
    manifest = prepare_corpus(CorpusConfig(**{**config.__dict__, "inputs": [str(first), str(second)]}),
                              progress=lambda *_: None)
    assert _account(output) == {"z original.flac": "", "a copy.flac": "duplicate"}
    assert manifest["counts"]["incomplete_tracks"] == 0 and manifest["counts"]["quarantined"] == {"duplicate": 1}

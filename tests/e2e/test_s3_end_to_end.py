"""S3 end to end against a real SeaweedFS on 127.0.0.1: the two CLIs as a user runs them.

prepare_corpus reads audio from s3:// and writes its tables to s3://, then train.py reads that corpus from
s3:// and writes checkpoints to s3://. Each CLI runs in its own process (it starts its own loopback Ray after
the AWS variables are set, as on a real node), with endpoint and credentials only in the standard AWS
variables; the secret key must appear in none of their output.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections import Counter

import pytest
import torch

from pipelines import storage
from pipelines.runs.checkpoints import (
    STATE_FILE,
    all_files,
    list_checkpoints,
    load_state,
)
from pipelines.runs.release import read_release_config, read_release_weights
from pipelines.training.checkpoint import FORMAT
from schemas.manifest import CORPUS_DIR, QUARANTINE_DIR
from tests.audio_fixtures import write_tone_track
from tests.s3server import SECRET_KEY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_cli(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A job CLI in a fresh process with this process's environment (AWS variables included), on its own Ray."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, os.path.join(REPO, "jobs", script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def upload_music(prefix: str, folder) -> dict[str, str]:
    """Two playable tracks and one non-audio file under prefix; returns {name: expected fate}."""
    write_tone_track(str(folder / "a.flac"), seconds=21.0, seed=11)           # 2 clips + a short tail
    write_tone_track(str(folder / "b.wav"), seconds=6.0, sr=22_050, channels=1, fmt="wav", seed=12)   # 1 clip
    (folder / "bad.mp3").write_bytes(b"not an mp3 at all\n" * 64)
    for name in ("a.flac", "b.wav", "bad.mp3"):
        storage.write_bytes_atomic(storage.join(prefix, name), (folder / name).read_bytes())
    return {"a.flac": "short_tail", "b.wav": "", "bad.mp3": "unreadable"}


@pytest.fixture(scope="module")
def s3_pipeline(s3_server, tmp_path_factory):
    root = s3_server.uri(f"e2e-{uuid.uuid4().hex[:8]}")
    raw, corpus, runs = (storage.join(root, p) for p in ("raw", "corpus", "runs"))
    fates = upload_music(raw, tmp_path_factory.mktemp("music"))
    prepare = run_cli("prepare_corpus.py", "--input", raw, "--output", corpus, "--kit", "tiny",
                      "--valid-fraction", "0", "--batch-size", "4")
    train = run_cli("train.py", "--size", "tiny", "--data", corpus, "--storage", runs, "--run-name", "e2e",
                    "--num-workers", "1", "--global-batch-size", "2", "--micro-batch-size", "1", "--max-steps", "2",
                    "--checkpoint-every", "1", "--keep-checkpoints", "2", "--ema-every", "1")
    return {"raw": raw, "corpus": corpus, "runs": runs, "fates": fates, "prepare": prepare, "train": train}


def test_prepare_corpus_reads_and_writes_s3(s3_pipeline):
    corpus_uri = s3_pipeline["corpus"]
    manifest = json.loads(storage.read_bytes(storage.join(corpus_uri, "manifest.json")))
    assert manifest["counts"]["inputs"] == 3 and manifest["counts"]["incomplete_tracks"] == 0
    corpus = [storage.read_parquet(f) for f in storage.list_files(storage.join(corpus_uri, CORPUS_DIR), ".parquet")]
    quarantine = [storage.read_parquet(f) for f in storage.list_files(storage.join(corpus_uri, QUARANTINE_DIR), ".parquet")]
    clips = [r for t in corpus for r in t.select(["clip_id", "track_id", "source_uri", "track_clip_count"]).to_pylist()]
    rejects = [r for t in quarantine for r in t.select(["item_id", "track_id", "source_uri", "reason",
                                                        "track_clip_count"]).to_pylist()]
    assert all(r["source_uri"].startswith(s3_pipeline["raw"] + "/") for r in clips + rejects), "sources are s3:// URIs"
    ids = [r["clip_id"] for r in clips] + [r["item_id"] for r in rejects]
    assert len(ids) == len(set(ids))
    per_track = Counter(r["track_id"] for r in clips + rejects)
    assert all(per_track[r["track_id"]] == r["track_clip_count"] for r in clips + rejects)
    by_name = Counter(os.path.basename(r["source_uri"]) for r in clips)
    assert by_name == {"a.flac": 2, "b.wav": 1} and manifest["counts"]["clips"] == 3, rejects
    reasons = {os.path.basename(r["source_uri"]): r["reason"] for r in rejects}
    assert reasons == {n: f for n, f in s3_pipeline["fates"].items() if f}
    assert storage.exists(storage.join(corpus_uri, "null_text", "null_text.parquet"))


def test_train_reads_s3_corpus_and_checkpoints_to_s3(s3_pipeline):
    kept = list_checkpoints(s3_pipeline["runs"], "e2e")
    assert [k.rsplit("_", 1)[-1] for k in kept] == ["00000001", "00000002"]
    assert all(k.startswith("s3://") for k in kept)
    small = torch.load(io.BytesIO(storage.read_bytes(storage.join(kept[-1], STATE_FILE))), map_location="cpu",
                       weights_only=True)
    assert small["format"] == FORMAT and "model" not in small      # weights live in the DCP shards
    shards = all_files(storage.join(kept[-1], "dcp"))               # Ray uploaded DCP's hidden names too
    assert ".metadata" in shards and any(f.endswith(".distcp") for f in shards)
    state = load_state(kept[-1])                                    # downloaded from s3://, shards merged
    assert state["step"] == 2 and state["model_config"]["kit"] == "tiny"
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert "latest checkpoint:" in s3_pipeline["train"].stdout
    run_dir = storage.join(s3_pipeline["runs"], "e2e")
    release = storage.join(run_dir, "release")                      # written by the driver at the end
    ema = read_release_weights(release, "ema")
    assert read_release_config(release)["step"] == 2 and set(ema) == set(state["ema"])
    assert all(torch.equal(ema[k], state["ema"][k]) for k in ema)
    assert storage.list_files(storage.join(run_dir, "tensorboard"))     # event parts uploaded at the end


def test_secret_never_printed_or_stored(s3_pipeline):
    text = "\n".join(p.stdout + p.stderr for p in (s3_pipeline["prepare"], s3_pipeline["train"]))
    assert "tracks ok" in text and "finished e2e" in text        # the output really was captured
    assert SECRET_KEY not in text
    manifest = storage.read_bytes(storage.join(s3_pipeline["corpus"], "manifest.json")).decode()
    assert SECRET_KEY not in manifest

"""`ray job submit` for real: a local Ray head on loopback, both jobs submitted as a user would."""
from __future__ import annotations

import json
import os

import pytest

from pipelines import storage
from tests.audio_fixtures import write_tone_track
from tests.raycluster import RayHead

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def ray_head():
    head = RayHead(num_cpus=4).start()
    yield head
    head.stop()


def test_submit_prepare_corpus_then_train(ray_head, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_tone_track(music / "one.flac", seconds=21.0, sr=44_100, channels=2, fmt="flac")
    write_tone_track(music / "two.wav", seconds=11.0, sr=16_000, channels=1, fmt="wav", seed=13)   # not a near-duplicate of one
    (music / "broken.mp3").write_bytes(b"not audio at all")
    corpus = tmp_path / "corpus"
    done = ray_head.submit("python", "jobs/prepare_corpus.py", "--input", str(music), "--output", str(corpus),
                           "--kit", "tiny", "--valid-fraction", "0", working_dir=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["counts"]["inputs"] == 3 and manifest["counts"]["incomplete_tracks"] == 0
    assert manifest["counts"]["clips"] == 3 and manifest["counts"]["quarantined"].get("unreadable") == 1

    runs = tmp_path / "runs"
    done = ray_head.submit("python", "jobs/train.py", "--size", "tiny", "--data", str(corpus), "--storage", str(runs),
                           "--run-name", "submitted", "--num-workers", "1", "--global-batch-size", "2",
                           "--max-steps", "2", "--checkpoint-every", "2", "--sample-every", "0",
                           working_dir=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert storage.list_files(str(runs / "submitted")), "the run wrote its checkpoint"

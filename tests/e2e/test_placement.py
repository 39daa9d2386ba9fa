"""The corpus job on a Ray with 2 logical GPUs (its own local Ray, in a subprocess: the session's has none): each
stage's GPU request and the CUDA_VISIBLE_DEVICES it sees, read inside the processes that run it (tests/placement_probe.py).
The fused plan's actor options are checked without running it (tests/stage/test_pipeline_plan.py): the same
runtime_env hides CUDA there as from the writers and CPU tasks here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipelines.raylocal import LOOPBACK_ENV
from tests.audio_fixtures import write_tone_track

REPO = Path(__file__).resolve().parents[2]
CPU_STAGES = ("frontend", "mel", "descriptors", "route", "writer")
MODEL_STAGES = ("vae", "tags", "captions", "mix", "text")      # the mix runs inside the text actors


def run_job(tmp_path: Path, *args: str) -> tuple[str, dict[str, list[dict]]]:
    music, out, probes = tmp_path / "music", tmp_path / "out", tmp_path / "probes"
    music.mkdir()
    probes.mkdir()
    write_tone_track(str(music / "t.flac"), seconds=6.0)         # one clip
    env = {**os.environ, **LOOPBACK_ENV, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", "from tests.placement_probe import main; main()",
                           str(out), str(probes), str(music), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)   # minutes on a busy 2-core machine
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["inputs"] == 1 and counts["clips"] == 1 and counts["incomplete_tracks"] == 0, counts
    assert (out / "null_text" / "null_text.parquet").exists()       # TextStage with GPUs needs a batch_size
    records: dict[str, list[dict]] = {}
    for file in probes.iterdir():
        record = json.loads(file.read_text())
        records.setdefault(record["stage"], []).append(record)
    return done.stdout, records


def assert_hidden(records: dict[str, list[dict]], stages) -> None:
    for stage in stages:
        assert records.get(stage), (stage, sorted(records))
        for record in records[stage]:
            assert record["cuda"] == "", (stage, record)
            assert not (record["resources"] or {}).get("GPU"), (stage, record)


def test_staged_on_two_gpus_model_stages_get_a_gpu_and_the_cpu_stages_none(tmp_path):
    stdout, records = run_job(tmp_path)
    assert "plan: staged (2 GPUs in the cluster)" in stdout, stdout
    assert "  vae: 1 actor x 0.5 GPU, 0.5 CPU" in stdout and "  text: 1 actor x 0.5 GPU, 0.5 CPU" in stdout, stdout
    assert "  frontend: tasks of 1 CPU, no GPU (CUDA hidden)" in stdout, stdout
    assert_hidden(records, CPU_STAGES)
    for stage in MODEL_STAGES:
        assert records.get(stage), (stage, sorted(records))
        for record in records[stage]:
            assert record["cuda"] in ("0", "1"), (stage, record)        # the one logical GPU Ray gave it
            if record["resources"] is not None:                        # run in the Ray worker itself
                assert record["resources"].get("GPU") == 0.5, (stage, record)

"""The paper-shaped kit through every job on CPU: corpus -> train (--size small) -> sample -> evaluate.

The kit has the paper's architectures, configs, tokenizers and file layouts with random weights
(pipelines/models/paper_shaped.py), loaded by the paper kit's own loaders and subfolders, so this run proves the
shapes (T5 4096-d token states, CLAP 768-d pooled vector, latent 8x256x16), the dtypes, the T5 spiece.model
conversion, Qwen's chat template and the VAE scaling factor that `--kit paper` would meet. Each job runs in its
own process, as a user runs it. Slow: ~4 GB of weights are built once into the kit cache, and full-width VAE,
vocoder and FluxMusic-small run on CPU (docs/kits.md gives the time and memory measured).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from pipelines import storage
from schemas.constants import CLIP_SAMPLES, SAMPLE_RATE
from schemas.manifest import CORPUS_DIR
from tests.audio_fixtures import write_tone_track

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def run_job(script: str, *args: str, timeout: float = 900) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    done = subprocess.run([sys.executable, os.path.join(REPO, "jobs", script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_paper_shaped_kit_through_corpus_training_sampling_and_evaluation(tmp_path):
    from pipelines.models.kits import load_kit

    load_kit("paper-shaped").check()                     # builds the kit once (cached), before any Ray work
    music = tmp_path / "music"
    music.mkdir()
    write_tone_track(str(music / "a.flac"), seconds=11.0, seed=21)                      # 1 clip + a short tail
    write_tone_track(str(music / "b.wav"), seconds=10.5, sr=22_050, channels=1, fmt="wav", seed=22)   # 1 clip
    corpus, runs = str(tmp_path / "corpus"), str(tmp_path / "runs")

    # --fused-actors 1: if the plan is fused, one actor holds all five models (~5 GB); a staged plan ignores it
    log = run_job("prepare_corpus.py", "--input", str(music), "--output", corpus, "--kit", "paper-shaped",
                  "--valid-fraction", "0", "--batch-size", "2", "--fused-actors", "1", "--writers", "1",
                  "--no-near-duplicates")
    assert "missing keys" not in log and "unexpected keys" not in log   # every checkpoint key matched
    manifest = json.loads(storage.read_bytes(storage.join(corpus, "manifest.json")))
    assert manifest["t5_dim"] == 4096 and manifest["clap_dim"] == 768
    assert manifest["vae_scaling_factor"] == pytest.approx(0.4110932946205139)
    rows = [r for f in storage.list_files(storage.join(corpus, CORPUS_DIR), ".parquet")
            for r in storage.read_parquet(f).to_pylist()]
    assert len(rows) == 2, [r["clip_id"] for r in rows]
    for row in rows:
        assert len(row["latent_mean"]) == 8 * 256 * 16 * 2 and len(row["clap"]) == 768 * 2
        assert 1 <= row["t5_length"] <= 256 and len(row["t5"]) == row["t5_length"] * 4096 * 2
        assert np.isfinite(np.frombuffer(row["t5"], np.float16)).all() and row["caption"]

    run_job("train.py", "--size", "small", "--data", corpus, "--storage", runs, "--run-name", "ps",
            "--max-steps", "2", "--global-batch-size", "2", "--micro-batch-size", "1", "--num-workers", "1",
            "--cpus-per-worker", "1", "--checkpoint-every", "2", "--val-every", "0", "--sample-every", "0",
            "--eval-every", "0")
    checkpoint = os.path.join(runs, "ps")

    samples = tmp_path / "samples"
    run_job("sample.py", "--checkpoint", checkpoint, "--prompt", "a calm piano melody", "--output", str(samples),
            "--steps", "2", "--device", "cpu")
    audio, rate = soundfile.read(samples / "000.wav", dtype="float32")
    assert rate == SAMPLE_RATE and audio.shape == (CLIP_SAMPLES,) and np.isfinite(audio).all()

    out = tmp_path / "eval"
    run_job("evaluate.py", "--checkpoint", checkpoint, "--corpus", corpus, "--split", "train", "--num-clips", "2",
            "--steps", "2", "--batch-size", "2", "--labels", "music", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--output", str(out))
    report = json.loads((out / "metrics.json").read_text())
    assert report["kit"] == "paper-shaped" and report["metrics"]["n_generated"] == 2
    assert all(np.isfinite(report["metrics"][k]) for k in ("fad", "kl", "clap_score"))

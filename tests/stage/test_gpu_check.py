"""benchmarks/gpu_check.py --dry-run: every part runs at tiny sizes on CPU (the kit part on the tiny kit) and lands
in the JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["meta"]["dry_run"] is True
    assert {"FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"} >= {
        report["sdpa"]["unmasked"], report["sdpa"]["masked"]}
    for part, compiled in (("train", False), ("compile", True)):
        cases = {(r["size"], r["masked"]) for r in report[part]}
        assert cases == {("tiny", False), ("tiny", True)}, report[part]
        for r in report[part]:
            assert r["compiled"] is compiled and r["seconds_per_step"] > 0 and r["mfu"] >= 0
            assert r["real_text_fraction"] < 1.0 if r["masked"] else r["real_text_fraction"] == 1.0
    # diffusers is installed here, so the VAE part runs rather than skipping
    assert report["vae"]["float32"]["clips_per_s"] > 0 and report["vae"]["bfloat16"]["clips_per_s"] > 0
    assert report["t5"]["tokens_per_s"] > 0
    assert "| train |" in run.stdout and "| t5 encoder |" in run.stdout
    # the kit part: the corpus job's encoder classes through the kit's loaders (tiny in a dry run)
    kit = report["kit"]
    assert kit["kit"] == "tiny" and kit["shapes"]["latent"] == [8, 256, 16] and kit["t5_vocab"] > 0
    for name, unit in (("vae_encode", "clips"), ("clap_audio", "clips"), ("clap_text", "captions"),
                       ("t5_encode", "captions")):
        assert kit[name][f"{unit}_per_s"] > 0, kit[name]
    assert "| kit tiny | t5_encode b2 |" in run.stdout
    # the caption part: one batch through the transformers back end, generators beside the scores (review D1)
    captions = report["captions"]
    assert captions["texts"] == captions["clips"] == 8 and captions["generator_devices"] == ["cpu"], captions


def test_vae_config_is_the_corpus_benchmarks_and_t5_flops_match_the_spec():
    sys.path.insert(0, str(ROOT))
    from benchmarks.corpus_stages import REAL_VAE_CONFIG
    from benchmarks.gpu_check import T5_XXL, VAE_CONFIG, t5_encoder_flops

    assert VAE_CONFIG == REAL_VAE_CONFIG
    assert t5_encoder_flops(T5_XXL, 256) / 1e12 == pytest.approx(2.40, abs=0.005)   # spec §7.3

"""Evaluator on the tiny kit (reference cache, metric plumbing) and jobs/evaluate.py end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from schemas.constants import CLIP_SAMPLES, SAMPLE_RATE
from tests.unit.test_evaluate import _tones


def _tiny_checkpoint(folder) -> str:
    """A checkpoint in the training loop's state.pt layout (model_config + ema weights) for the tiny kit."""
    from model import build_model
    from pipelines.models.tiny_kit import CLAP_TEXT_DIM, T5_DIM

    torch.manual_seed(0)
    model = build_model("tiny", context_in_dim=T5_DIM, vec_in_dim=CLAP_TEXT_DIM)
    folder.mkdir()
    torch.save({"ema": model.state_dict(), "model": model.state_dict(),
                "model_config": {"size": "tiny", "context_in_dim": T5_DIM, "vec_in_dim": CLAP_TEXT_DIM,
                                 "vae_scaling_factor": 0.4110932946205139, "kit": "tiny"}}, folder / "state.pt")
    return str(folder)


def test_evaluate_job_end_to_end(tmp_path):
    from jobs import evaluate

    # Reference clips: 44.1 kHz stereo WAVs (decoded, down-mixed and resampled by pipelines.corpus.audio).
    refs = tmp_path / "refs"
    refs.mkdir()
    captions = ["a calm piano melody", "an energetic rock song with drums", "ambient pads with reverb"]
    tones = _tones([220, 330, 440], rate=44_100, seconds=11.0)
    with open(tmp_path / "prompts.csv", "w") as f:
        f.write("id,caption,audio\n")
        for i, (caption, wave) in enumerate(zip(captions, tones)):
            sf.write(refs / f"r{i}.wav", np.stack([wave, 0.5 * wave], axis=1), 44_100)
            f.write(f"p{i},{caption},refs/r{i}.wav\n")
        f.write("p3,an extra prompt beyond --num-clips,refs/r0.wav\n")

    checkpoint = _tiny_checkpoint(tmp_path / "checkpoint_step_00000010")
    out = tmp_path / "eval"
    args = ["--prompts", str(tmp_path / "prompts.csv"), "--num-clips", "3", "--steps", "2", "--cfg", "3.5",
            "--seed", "7", "--batch-size", "2", "--cache-dir", str(tmp_path / "cache"), "--labels", "music"]
    assert evaluate.main(["--checkpoint", checkpoint, "--output", str(out), *args]) == 0

    report = json.loads((out / "metrics.json").read_text())
    assert report["kit"] == "tiny" and report["checkpoint"] == checkpoint and report["num_clips"] == 3
    assert report["seeds"] == [7, 8] and report["classifier"] == "clap-zero-shot"
    assert report["params"] > 0 and report["model"] == "checkpoint_step_00000010"
    m = report["metrics"]
    assert m["n_generated"] == 3 and m["n_reference"] == 3 and m["kl_pairs"] == 3
    assert all(np.isfinite(m[k]) for k in ("fad", "kl", "is", "clap_score"))
    table = (out / "metrics.md").read_text().splitlines()
    assert table[0] == "| Model | Params | FAD↓ | KL↓ | IS↑ | CLAP↑ |"
    assert table[2].startswith("| checkpoint_step_00000010 | ") and f"{m['fad']:.2f}" in table[2]
    generated = sorted(p.name for p in (out / "generated").iterdir())
    assert generated == ["p0.wav", "p1.wav", "p2.wav"]
    wave, rate = sf.read(out / "generated" / "p0.wav")
    assert rate == SAMPLE_RATE and wave.shape == (CLIP_SAMPLES,)

    assert len(list((tmp_path / "cache").glob("reference-*.npz"))) == 1

    # The saved WAVs scored with --generated give the same numbers (float WAVs are lossless); the reference
    # statistics come from the cache (still one entry).
    out2 = tmp_path / "eval2"
    assert evaluate.main(["--generated", str(out / "generated"), "--kit", "tiny", "--output", str(out2), *args]) == 0
    again = json.loads((out2 / "metrics.json").read_text())
    for key in ("fad", "kl", "is", "clap_score"):
        assert again["metrics"][key] == pytest.approx(m[key], rel=1e-6, abs=1e-9), key
    assert again["checkpoint"] is None and again["seeds"] == [] and again["model"] == "generated"
    assert "| generated | - |" in (out2 / "metrics.md").read_text()
    assert len(list((tmp_path / "cache").glob("reference-*.npz"))) == 1


def test_generation_on_ray_matches_in_process(tmp_path, ray_local):
    from pipelines.evaluation.batch import (
        GenerateBatch,
        generate_on_ray,
        generation_batches,
    )

    checkpoint = _tiny_checkpoint(tmp_path / "checkpoint")
    batches = generation_batches(["a", "b", "c"], ["calm piano", "loud drums", "soft strings"], 2, seed=3)
    assert [b["seed"] for b in batches] == [3, 4] and batches[1]["ids"] == ["c"]
    worker_args = dict(kit="tiny", checkpoint=checkpoint, weights="ema", steps=1, cfg=2.0)
    on_ray = generate_on_ray(batches, worker_args, workers=2, gpus_per_worker=0.0)
    local = GenerateBatch(**worker_args, device="cpu")
    assert [row["seed"] for row in on_ray] == [3, 4]
    for row, batch in zip(on_ray, batches):
        assert list(row["ids"]) == batch["ids"]
        np.testing.assert_allclose(np.asarray(row["audio"]), local(batch)["audio"], atol=1e-5)

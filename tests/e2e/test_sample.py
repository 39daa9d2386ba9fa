"""Sampling: jobs/sample.py writes 16 kHz 10.24 s WAVs + PNGs; the --encoders subset uses the null embeddings."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from schemas.constants import CLIP_SAMPLES, SAMPLE_RATE


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint folder in the training layout (state.pt) holding a fresh tiny model."""
    from model import build_model
    from pipelines.models.encoders import TextEncoder
    from pipelines.models.kits import ensure_tiny_kit

    ensure_tiny_kit()
    text = TextEncoder("tiny", device="cpu")
    torch.manual_seed(0)
    model = build_model("tiny", context_in_dim=text.t5_dim, vec_in_dim=text.clap_dim)
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint_step_00000001"
    folder.mkdir()
    state = {"model": model.state_dict(), "ema": model.state_dict(),
             "model_config": {"size": "tiny", "context_in_dim": text.t5_dim, "vec_in_dim": text.clap_dim,
                              "vae_scaling_factor": 0.4110932946205139, "kit": "tiny"}}
    torch.save(state, folder / "state.pt")
    return str(folder)


def test_sample_cli_writes_wav_and_png(checkpoint, tmp_path):
    from jobs.sample import main

    out = tmp_path / "out"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dark techno loop\n\n")
    assert main(["--checkpoint", checkpoint, "--prompt", "calm piano", "--prompts", str(prompts),
                 "--output", str(out), "--steps", "2", "--seed", "1", "--device", "cpu"]) == 0
    for i in range(2):
        audio, rate = soundfile.read(out / f"{i:03d}.wav", dtype="float32")
        assert rate == SAMPLE_RATE and audio.shape == (CLIP_SAMPLES,) and np.isfinite(audio).all()
        assert np.abs(audio).max() > 0
        assert (out / f"{i:03d}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_encoder_subsets_use_null_embeddings(checkpoint):
    from pipelines.evaluation.generate import Generator, parse_encoders

    gen = Generator("tiny", checkpoint, device="cpu")
    prompts = ["bright ukulele pop", "slow ambient drone"]
    t5_only = gen.condition(prompts, ("t5",))
    clap_only = gen.condition(prompts, ("clap",))
    both = gen.condition(prompts, ("t5", "clap"))
    assert torch.equal(t5_only["y"], gen.null_clap.float().expand(2, -1))
    assert torch.equal(t5_only["txt"], both["txt"]) and not torch.equal(both["y"], t5_only["y"])
    length = gen.null_t5.shape[0]
    assert clap_only["txt"].shape[1] == length and torch.equal(clap_only["txt"][1], gen.null_t5.float())
    assert torch.equal(clap_only["y"], both["y"])
    a = gen.latents(prompts, steps=2, seed=5)
    assert torch.equal(a, gen.latents(prompts, steps=2, seed=5))             # seeded
    assert not torch.equal(a, gen.latents(prompts, steps=2, seed=5, encoders="clap"))
    with pytest.raises(ValueError):
        parse_encoders("t5,vae")


def test_a_run_folder_resolves_to_its_latest_checkpoint(checkpoint, tmp_path):
    import shutil

    from pipelines.runs.weights import load_checkpoint_state

    run = tmp_path / "run"
    for step in (1, 12, 3):
        shutil.copytree(checkpoint, run / f"checkpoint_step_{step:08d}")
    state = torch.load(run / "checkpoint_step_00000012" / "state.pt", weights_only=True)
    state["model_config"]["marker"] = 12
    torch.save(state, run / "checkpoint_step_00000012" / "state.pt")
    assert load_checkpoint_state(str(run))["model_config"]["marker"] == 12
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint_state(str(tmp_path / "empty"))


def test_release_folder_samples_like_its_checkpoint(checkpoint, tmp_path):
    """jobs/export_weights writes ema/model safetensors + config.json; sampling from the release folder gives
    the same clip as from the checkpoint."""
    import json

    from jobs.export_weights import main as export
    from jobs.sample import main as sample_main
    from pipelines.evaluation.generate import Generator
    from pipelines.runs.weights import load_checkpoint_state, model_from_checkpoint

    release = tmp_path / "release"
    assert export(["--checkpoint", checkpoint, "--output", str(release)]) == 0
    assert {p.name for p in release.iterdir()} == {"ema.safetensors", "model.safetensors", "config.json"}
    config = json.loads((release / "config.json").read_text())
    assert config["size"] == "tiny" and config["kit"] == "tiny" and config["vae_scaling_factor"] > 0
    assert load_checkpoint_state(str(release))["model_config"]["context_in_dim"] == config["context_in_dim"]
    a, _ = model_from_checkpoint(checkpoint, "ema")
    b, _ = model_from_checkpoint(str(release), "ema")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    prompts = ["warm cello"]
    torch.testing.assert_close(Generator("tiny", checkpoint, device="cpu").latents(prompts, steps=2),
                               Generator("tiny", str(release), device="cpu").latents(prompts, steps=2))
    assert sample_main(["--checkpoint", str(release), "--prompt", "warm cello", "--output", str(tmp_path / "out"),
                        "--steps", "1", "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "000.wav").exists()


def test_every_checkpoint_form_loads_in_sample_evaluate_and_export(checkpoint, tmp_path):
    """--checkpoint takes a run folder, a checkpoint folder, its state.pt, a release folder, or a release's
    ema.safetensors / model.safetensors (that file's weights, whatever --weights says), in all three jobs."""
    import shutil

    from jobs.export_weights import main as export
    from jobs.sample import main as sample_main
    from pipelines.evaluation.run import EvalConfig, check_given, kit_of
    from pipelines.runs.weights import model_from_checkpoint

    run = tmp_path / "run"
    shutil.copytree(checkpoint, run / "checkpoint_step_00000001")
    state = torch.load(run / "checkpoint_step_00000001" / "state.pt", weights_only=True)
    state["model"] = {k: v + 1 for k, v in state["model"].items()}          # raw weights != EMA weights
    torch.save(state, run / "checkpoint_step_00000001" / "state.pt")
    release = tmp_path / "release"
    assert export(["--checkpoint", str(run), "--output", str(release)]) == 0
    expected = {w: model_from_checkpoint(str(run), w)[0].state_dict() for w in ("ema", "model")}
    forms = {str(run): None, str(run / "checkpoint_step_00000001"): None,
             str(run / "checkpoint_step_00000001" / "state.pt"): None, str(release): None,
             str(release / "ema.safetensors"): "ema", str(release / "model.safetensors"): "model"}
    for form, named in forms.items():
        for asked in ("ema", "model"):
            model, info = model_from_checkpoint(form, asked)
            assert info["size"] == "tiny"
            got = named or asked
            assert all(torch.equal(v, expected[got][k]) for k, v in model.state_dict().items()), (form, asked)
        config = EvalConfig(output=str(tmp_path / "eval"), checkpoint=form, prompts="unused.txt")
        check_given(config)
        assert kit_of(config) == "tiny"
    again = tmp_path / "again"
    assert export(["--checkpoint", str(release / "model.safetensors"), "--output", str(again)]) == 0
    assert (again / "ema.safetensors").exists()
    out = tmp_path / "out"
    assert sample_main(["--checkpoint", str(release / "model.safetensors"), "--prompt", "warm cello",
                        "--output", str(out), "--steps", "1", "--device", "cpu"]) == 0
    assert (out / "000.wav").exists()

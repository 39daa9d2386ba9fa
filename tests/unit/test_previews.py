"""Training previews: generator and evaluator leave the training device after each preview (release)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from pipelines.training.config import TrainConfig


class RecordingGenerator:
    """Stands in for pipelines.evaluation.generate.Generator: records where it is asked to live."""

    instances: list["RecordingGenerator"] = []

    def __init__(self, kit, model, *, scaling_factor=None, device=None):
        self.model, self.device, self.calls = model, device, ["init:" + str(device)]
        RecordingGenerator.instances.append(self)

    def to(self, device):
        self.calls.append("to:" + device)
        self.device = device
        return self

    def release(self):
        self.calls.append("release")
        return self.to("cpu")

    def generate(self, prompts, **kw):
        self.calls.append("generate")
        return np.zeros((len(prompts), 160), np.float32), np.zeros((len(prompts), 8, 64), np.float32)


def test_preview_releases_the_generator_after_every_preview(monkeypatch, tmp_path):
    import pipelines.evaluation.generate as generate
    from model import build_model
    from pipelines.training.previews import Previewer

    monkeypatch.setattr(generate, "Generator", RecordingGenerator)
    base = build_model("tiny", context_in_dim=16, vec_in_dim=8)
    names = [n for n, _ in base.named_parameters()]
    params = [p for _, p in base.named_parameters()]
    state = SimpleNamespace(cfg=TrainConfig(size="tiny", sample_prompts=["a", "b"], sample_steps=1), rank=0,
                            names=names, params=params, ema=[p.detach().clone() for p in params], t5_dim=16,
                            clap_dim=8, kit="tiny", scaling_factor=1.0, device=torch.device("cpu"))
    previewer = Previewer(state)
    for step in (1, 2):
        assert previewer.preview(str(tmp_path / f"step{step}"), evaluate=False) == {}
        assert (tmp_path / f"step{step}" / "01.wav").exists()
    (gen,) = RecordingGenerator.instances
    assert gen.calls == ["init:cpu", "generate", "release", "to:cpu", "to:cpu", "generate", "release", "to:cpu"]
    assert gen.model is None                       # the EMA sampling copy is dropped between previews

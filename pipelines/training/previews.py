"""Audio previews and objective metrics of the EMA weights during training (rank 0 generates and scores)."""
from __future__ import annotations

import json

from model import build_model
from pipelines import storage
from pipelines.training.ema import full_ema
from pipelines.training.state import TrainState


class Previewer:
    """Built once per run on every rank; the generator and evaluator load on rank 0 at first use.

    Between previews they live on the CPU: each preview moves them to the training device, generates and
    scores, and moves them back (`release`), so T5, CLAP, VAE and vocoder never hold training-GPU memory while
    the model trains. The EMA copy used for sampling is dropped after each preview."""

    def __init__(self, state: TrainState):
        self.state = state
        self.sampler = None
        self.evaluator = None
        self.eval_prompts = None

    def preview(self, folder_uri: str, evaluate: bool) -> dict[str, float]:
        """WAV + mel PNG per sample prompt into folder_uri, and with `evaluate` the eval_* metrics. Every
        rank must call this (the EMA gather); only rank 0 generates."""
        from pipelines.evaluation.generate import Generator, save_mel_png, save_wav

        state, cfg = self.state, self.state.cfg
        ema = full_ema(state.names, state.ema, state.params)
        if state.rank != 0:
            return {}
        model = build_model(cfg.size, context_in_dim=state.t5_dim, vec_in_dim=state.clap_dim, device="meta")
        model.load_state_dict(ema, assign=True)
        if self.sampler is None:
            self.sampler = Generator(state.kit, model, scaling_factor=state.scaling_factor, device=str(state.device))
        else:
            self.sampler.model = model
            self.sampler.to(str(state.device))
        try:
            prompts = cfg.sample_prompts
            audio, mel = self.sampler.generate(prompts, steps=cfg.sample_steps, cfg_scale=cfg.sample_cfg,
                                               seed=cfg.seed, return_mel=True)
            for i, prompt in enumerate(prompts):
                save_wav(storage.join(folder_uri, f"{i:02d}.wav"), audio[i])
                save_mel_png(storage.join(folder_uri, f"{i:02d}.png"), mel[i], title=prompt)
            storage.write_bytes_atomic(storage.join(folder_uri, "prompts.json"), json.dumps(prompts).encode())
            return self.evaluate() if evaluate else {}
        finally:
            self.release()

    def release(self) -> None:
        """Generator and evaluator models to the CPU (and the EMA sampling copy dropped) until the next preview."""
        from pipelines.evaluation.placement import move_to

        if self.sampler is not None:
            self.sampler.release()
            self.sampler.model = None
        if self.evaluator is not None:
            move_to(self.evaluator, "cpu")
        if self.state.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def evaluate(self) -> dict[str, float]:
        """Metrics of the EMA weights' samples for a fixed prompt set: the first `eval_clips` captions of the
        valid split, scored against those clips' own audio (or against `eval_reference`). The evaluator and
        its reference statistics are built once per run (rank 0, after preview() loaded the EMA weights)."""
        from pipelines.evaluation.evaluator import Evaluator
        from pipelines.evaluation.placement import move_to
        from pipelines.evaluation.prompts import read_corpus

        cfg = self.state.cfg
        if self.evaluator is None:
            self.eval_prompts = read_corpus(cfg.data, "valid", limit=cfg.eval_clips)   # decodes only these
            self.evaluator = Evaluator(self.state.kit, cfg.eval_reference or None, device=str(self.state.device))
            if not cfg.eval_reference:
                self.evaluator.reference(self.eval_prompts.reference, self.eval_prompts.key, ids=self.eval_prompts.ids)
        else:
            move_to(self.evaluator, str(self.state.device))
        prompts = self.eval_prompts
        audio = self.sampler.generate(prompts.captions, steps=cfg.sample_steps, cfg_scale=cfg.sample_cfg, seed=cfg.seed)
        scores = self.evaluator.score(audio, prompts.captions, ids=prompts.ids)
        return {f"eval_{k}": float(v) for k, v in scores.items()}

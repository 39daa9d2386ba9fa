"""Text -> scaled latent (Euler + CFG) -> log-mel (VAE) -> waveform (HiFi-GAN), shared by jobs/sample.py,
training previews and evaluation.

Prompts are encoded with pipelines.models.encoders.TextEncoder, i.e. exactly the corpus convention; the
unconditional branch and any encoder left out of `encoders` get the empty-caption ("") embedding, the same
null the model saw under CFG dropout during training.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from torch import Tensor, nn

from pipelines import storage
from pipelines.errors import UserValueError
from schemas.constants import LATENT_SHAPE, SAMPLE_RATE

ENCODER_CHOICES = ("t5", "clap")


def parse_encoders(spec: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """"t5,clap" | "t5" | "clap" (or a list) -> a validated tuple."""
    names = tuple(s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip())
    if not names or any(n not in ENCODER_CHOICES for n in names):
        raise UserValueError(f"encoders must be a non-empty subset of {ENCODER_CHOICES}, got {spec!r}")
    return names


def null_condition(t5: Tensor, clap: Tensor) -> dict:
    """One-row cond dict from the empty-caption embeddings t5 [L, D], clap [V]."""
    return {"txt": t5[None].float(), "txt_mask": torch.ones(1, t5.shape[0], dtype=torch.bool), "y": clap[None].float()}


def text_condition(t5_states: list[Tensor], clap: Tensor, null_t5: Tensor, null_clap: Tensor,
                   encoders: tuple[str, ...]) -> dict:
    """cond dict for a batch; an encoder not in `encoders` is replaced by its null embedding for every row."""
    from model import pad_text

    if "t5" not in encoders:
        t5_states = [null_t5] * len(t5_states)
    if "clap" not in encoders:
        clap = null_clap[None].expand(len(t5_states), -1)
    txt, mask = pad_text([s.float() for s in t5_states])
    return {"txt": txt, "txt_mask": mask, "y": clap.float()}


def check_kit_fits(model: nn.Module, t5_dim: int, clap_dim: int, kit: str) -> None:
    """UserValueError when the kit's text encoders do not give the embedding sizes the model was trained on."""
    params = getattr(model, "params", None)
    wanted = (getattr(params, "context_in_dim", t5_dim), getattr(params, "vec_in_dim", clap_dim))
    if wanted != (t5_dim, clap_dim):
        raise UserValueError(f"kit {kit!r} gives T5 {t5_dim} / CLAP {clap_dim} dims, the model was trained on "
                             f"{wanted[0]} / {wanted[1]}: use the kit it was trained with (leave out --kit)")


class Generator:
    """Prompts -> float32 audio [B, 163840] at 16 kHz with a FluxMusic model and a kit's text encoders, VAE and
    vocoder. `checkpoint_or_model`: a training checkpoint (folder, state.pt, or s3:// URI) or an nn.Module."""

    def __init__(self, kit: str, checkpoint_or_model: str | nn.Module, *, weights: str = "ema",
                 encoders: str | tuple[str, ...] = ENCODER_CHOICES, scaling_factor: float | None = None,
                 device: str | None = None):
        from pipelines.models.encoders import MelDecoder, TextEncoder, Vocoder
        from pipelines.models.kits import default_device
        from pipelines.runs.weights import model_from_checkpoint

        self.device = device or default_device()
        if isinstance(checkpoint_or_model, nn.Module):
            self.model = checkpoint_or_model
        else:
            self.model, info = model_from_checkpoint(checkpoint_or_model, weights)
            scaling_factor = scaling_factor or info.get("vae_scaling_factor")
        self.model = self.model.to(self.device).eval()
        self.encoders = parse_encoders(encoders)
        self.text = TextEncoder(kit, device=self.device)
        check_kit_fits(self.model, self.text.t5_dim, self.text.clap_dim, kit)
        self.mel_decoder = MelDecoder(kit, device=self.device)
        self.vocoder = Vocoder(kit, device=self.device)
        # the scaling factor the corpus was built with (manifest / checkpoint) wins over the kit's VAE config
        self.scaling_factor = float(scaling_factor or self.mel_decoder.scaling_factor)
        null_t5, null_clap = self.text.encode([""])
        self.null_t5, self.null_clap = torch.from_numpy(null_t5[0]), torch.from_numpy(null_clap[0])

    def to(self, device: str) -> "Generator":
        """Flow model, text encoders, VAE decoder and vocoder to `device` (and generation with them)."""
        from pipelines.evaluation.placement import move_to

        return move_to(self, device)

    def release(self) -> "Generator":
        """Off the accelerator: everything to the CPU (training previews call this after each preview)."""
        return self.to("cpu")

    def condition(self, prompts: list[str], encoders: tuple[str, ...] | None = None) -> dict:
        t5, clap = self.text.encode(prompts)
        cond = text_condition([torch.from_numpy(s) for s in t5], torch.from_numpy(clap), self.null_t5,
                              self.null_clap, encoders or self.encoders)
        return {k: v.to(self.device) for k, v in cond.items()}

    @torch.no_grad()
    def latents(self, prompts: list[str], *, steps: int = 50, cfg_scale: float = 3.5, seed: int = 0,
                encoders: str | tuple[str, ...] | None = None) -> Tensor:
        """Scaled latents [B, 8, 256, 16] (what the flow model generates), float32 on the CPU."""
        from model import sample

        cond = self.condition(list(prompts), parse_encoders(encoders) if encoders else None)
        uncond = {k: v.to(self.device) for k, v in null_condition(self.null_t5, self.null_clap).items()}
        # noise drawn on the CPU: the same seed gives the same clip on any device
        noise = torch.randn((len(prompts), *LATENT_SHAPE), generator=torch.Generator().manual_seed(seed))
        self.model.eval()
        return sample(self.model, noise.to(self.device), cond, uncond, steps=steps, cfg_scale=cfg_scale).float().cpu()

    @torch.no_grad()
    def generate(self, prompts: list[str], *, steps: int = 50, cfg_scale: float = 3.5, seed: int = 0,
                 encoders: str | tuple[str, ...] | None = None, return_mel: bool = False):
        """-> audio float32 [B, 163840] (and log-mel [B, 1024, 64] when return_mel)."""
        latent = self.latents(prompts, steps=steps, cfg_scale=cfg_scale, seed=seed, encoders=encoders)
        mel = self.mel_decoder.decode(latent / self.scaling_factor)
        audio = self.vocoder(mel).numpy().astype(np.float32)
        return (audio, mel.numpy()) if return_mel else audio


def save_wav(uri: str, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Mono float32 WAV (the vocoder output unchanged), written atomically (local or s3://)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(audio, dtype=np.float32), sample_rate, format="WAV", subtype="FLOAT")
    storage.write_bytes_atomic(uri, buffer.getvalue())


def save_mel_png(uri: str, log_mel: np.ndarray, title: str = "") -> None:
    """Log-mel [T, 64] as a spectrogram PNG (time across, mel bins up)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.5))
    ax.imshow(np.asarray(log_mel).T, origin="lower", aspect="auto", cmap="magma")
    ax.set(xlabel="frame (10 ms)", ylabel="mel bin", title=title[:90])
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes_atomic(uri, buffer.getvalue())

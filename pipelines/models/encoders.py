"""Callable classes around a kit's models: VAE encode/decode, vocoder, T5 + CLAP text, CLAP audio/text embeddings.

Each class loads its models once in __init__(kit_name_or_path, device=None, ...) (CPU by default, CUDA when
available) and runs them under torch.no_grad. The math lives in small pure helpers underneath, so training,
sampling and evaluation share exactly the code the corpus builder uses (its Ray Data stages wrap these classes:
pipelines/corpus/encode.py).
"""
from __future__ import annotations

import numpy as np
import torch

from pipelines.models.kits import Kit, default_device, load_kit
from schemas.constants import CLAP_MAX_TOKENS, HOP_LENGTH, SAMPLE_RATE, T5_MAX_TOKENS


def _kit(kit_or_name: str | Kit, roles: list[str]) -> Kit:
    kit = load_kit(kit_or_name) if isinstance(kit_or_name, str) else kit_or_name
    return kit.check(roles)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# ---------------------------------------------------------------- pure helpers

def vae_posterior(vae, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mel [B,T,64] log-mel -> posterior (mean, std = exp(0.5 logvar)) [B,8,T/4,16], float32."""
    x = mel.unsqueeze(1).to(vae.device, vae.dtype)
    dist = vae.encode(x).latent_dist
    return dist.mean.float(), dist.std.float()


def vae_decode(vae, latent: torch.Tensor) -> torch.Tensor:
    """Unscaled latent [B,8,T/4,16] (z / scaling_factor) -> log-mel [B,T,64], float32."""
    return vae.decode(latent.to(vae.device, vae.dtype)).sample.squeeze(1).float()


def vocode(vocoder, log_mel: torch.Tensor) -> torch.Tensor:
    """Log-mel [B,T,64] (time-major, as the VAE emits it) -> waveform [B, T*hop] float32 at 16 kHz."""
    wave = vocoder(log_mel.to(vocoder.device, vocoder.dtype)).float()
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    n = log_mel.shape[1] * HOP_LENGTH
    return wave[:, :n] if wave.shape[1] >= n else torch.nn.functional.pad(wave, (0, n - wave.shape[1]))


def t5_token_states(model, tokenizer, captions: list[str]) -> list[np.ndarray]:
    """Token states per caption, only the real tokens: [L_i, t5_dim] float16.

    Convention (docs/architecture.md): truncation at 256 with EOS appended by the tokenizer, no padding stored;
    the batch is padded with the pad id and the attention mask keeps every real token from seeing padding."""
    enc = tokenizer(captions, truncation=True, max_length=T5_MAX_TOKENS, padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    states = model(input_ids=enc["input_ids"].to(model.device), attention_mask=mask.to(model.device))
    hidden = states.last_hidden_state.float().cpu()
    lengths = mask.sum(dim=1).tolist()
    return [hidden[i, :n].numpy().astype(np.float16) for i, n in enumerate(lengths)]


def clap_text_pooled(text_model, tokenizer, captions: list[str]) -> np.ndarray:
    """CLAP text tower pooler_output [B, clap_dim] float16: 77 tokens, max_length padding, masked (spec §3)."""
    enc = tokenizer(captions, padding="max_length", max_length=CLAP_MAX_TOKENS, truncation=True,
                    return_tensors="pt")
    out = text_model(input_ids=enc["input_ids"].to(text_model.device),
                     attention_mask=enc["attention_mask"].to(text_model.device))
    return out.pooler_output.float().cpu().numpy().astype(np.float16)


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _features(output) -> torch.Tensor:
    """get_*_features returns a tensor in transformers 4 and an output object (projected pooler_output) in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def resample_for_clap(audio16k: np.ndarray, rate: int, max_samples: int) -> list[np.ndarray]:
    """[B,N] at 16 kHz -> list of mono float32 at `rate`, cut to the first max_samples (deterministic crop)."""
    import soxr  # here, not at the top: benchmarks/gpu_check.py imports this module where soxr may be absent

    audio = np.atleast_2d(np.asarray(audio16k, dtype=np.float32))
    out = []
    for row in audio:
        y = soxr.resample(row, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else row
        out.append(np.ascontiguousarray(y[:max_samples], dtype=np.float32))
    return out


# ---------------------------------------------------------------- model runners


class _Vae:
    """The kit's AudioLDM2 VAE, loaded once, in the kit dtype (fp32 for the paper kit)."""

    def __init__(self, kit_name_or_path: str | Kit, device: str | None = None, batch_size: int = 4):
        self.kit = _kit(kit_name_or_path, ["vae"])
        self.device = device or default_device()
        self.vae = self.kit.load_vae(self.device)
        self.batch_size = batch_size

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)


class VaeEncoder(_Vae):
    """Mel [B,1024,64] -> VAE posterior mean/std [B,8,256,16]."""

    @torch.no_grad()
    def encode(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel [B,1024,64] -> (mean, std) float32 [B,8,256,16] on the CPU."""
        mel = torch.as_tensor(mel, dtype=torch.float32)
        parts = [vae_posterior(self.vae, mel[s]) for s in _chunks(len(mel), self.batch_size)]
        return torch.cat([m for m, _ in parts]).cpu(), torch.cat([s for _, s in parts]).cpu()


class MelDecoder(_Vae):
    """VAE latent -> log-mel [B,1024,64].

    `decode(latent, scaled=False)`: by default `latent` is the UNSCALED VAE latent (what VaeEncoder returns,
    i.e. the flow model's output already divided by scaling_factor); pass scaled=True to give the flow model's
    scaled latent (z * scaling_factor) and let this class divide."""

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, scaled: bool = False) -> torch.Tensor:
        latent = torch.as_tensor(latent, dtype=torch.float32)
        if scaled:
            latent = latent / self.scaling_factor
        return torch.cat([vae_decode(self.vae, latent[s]).cpu() for s in _chunks(len(latent), self.batch_size)])

    __call__ = decode


class Vocoder:
    """Log-mel [B,1024,64] -> waveform [B,163840] float32 (CPU tensor) at 16 kHz (SpeechT5HifiGan)."""

    def __init__(self, kit_name_or_path: str | Kit, device: str | None = None, batch_size: int = 4):
        self.kit = _kit(kit_name_or_path, ["vocoder"])
        self.device = device or default_device()
        self.vocoder = self.kit.load_vocoder(self.device)
        self.batch_size = batch_size

    @property
    def sample_rate(self) -> int:
        return int(self.vocoder.config.sampling_rate)

    @torch.no_grad()
    def __call__(self, log_mel: torch.Tensor) -> torch.Tensor:
        log_mel = torch.as_tensor(log_mel, dtype=torch.float32)
        return torch.cat([vocode(self.vocoder, log_mel[s]).cpu() for s in _chunks(len(log_mel), self.batch_size)])


class TextEncoder:
    """Captions -> T5 token states (unpadded) + CLAP text pooler_output, per the text convention."""

    def __init__(self, kit_name_or_path: str | Kit, device: str | None = None, batch_size: int = 16):
        self.kit = _kit(kit_name_or_path, ["t5", "clap"])
        self.device = device or default_device()
        self.t5_model, self.t5_tokenizer = self.kit.load_t5(self.device)
        clap, self.clap_tokenizer, _ = self.kit.load_clap(self.device)
        self.clap_text = clap.text_model  # the text tower of the full ClapModel (spec §3 loading pitfall)
        self.batch_size = batch_size

    @property
    def t5_dim(self) -> int:
        return int(self.t5_model.config.hidden_size)

    @property
    def clap_dim(self) -> int:
        return int(self.clap_text.config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[list[np.ndarray], np.ndarray]:
        """-> (t5: [L_i, t5_dim] float16 per caption, clap: [B, clap_dim] float16)."""
        captions = [str(c) for c in captions]
        # Similar lengths together: less padding work; padding never changes the stored states anyway.
        order = sorted(range(len(captions)), key=lambda i: len(captions[i]))
        t5: list[np.ndarray | None] = [None] * len(captions)
        clap = np.zeros((len(captions), self.clap_dim), np.float16)
        for s in _chunks(len(order), self.batch_size):
            idx = order[s]
            texts = [captions[i] for i in idx]
            for i, states in zip(idx, t5_token_states(self.t5_model, self.t5_tokenizer, texts)):
                t5[i] = states
            clap[idx] = clap_text_pooled(self.clap_text, self.clap_tokenizer, texts)
        return t5, clap


class ClapEmbedder:
    """L2-normalised projected CLAP embeddings of audio and text (zero-shot tags, FAD embeddings, CLAP score)."""

    def __init__(self, kit_name_or_path: str | Kit, device: str | None = None, batch_size: int = 8):
        self.kit = _kit(kit_name_or_path, ["clap"])
        self.device = device or default_device()
        self.model, self.tokenizer, self.features = self.kit.load_clap(self.device)
        self.batch_size = batch_size

    @property
    def sample_rate(self) -> int:
        return int(self.features.sampling_rate)

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @torch.no_grad()
    def audio(self, audio16k: np.ndarray) -> np.ndarray:
        """[B,N] float 16 kHz -> [B,E] float32, unit norm. Audio is resampled to the feature extractor's rate
        (48 kHz for CLAP) with soxr and cut to its first max_length_s seconds (deterministic, no random crop)."""
        waves = resample_for_clap(audio16k, self.sample_rate, int(self.features.nb_max_samples))
        out = []
        for s in _chunks(len(waves), self.batch_size):
            feats = self.features(waves[s], sampling_rate=self.sample_rate, truncation="rand_trunc",
                                  padding="repeatpad", return_tensors="pt")
            emb = self.model.get_audio_features(input_features=feats["input_features"].to(self.device, self.model.dtype))
            out.append(l2_normalise(_features(emb).float()).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def text(self, texts: list[str]) -> np.ndarray:
        """list of B strings -> [B,E] float32, unit norm (padded to the longest, masked, truncated at 77)."""
        out = []
        for s in _chunks(len(texts), self.batch_size):
            enc = self.tokenizer([str(t) for t in texts[s]], padding=True, truncation=True,
                                 max_length=CLAP_MAX_TOKENS, return_tensors="pt").to(self.device)
            emb = self.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            out.append(l2_normalise(_features(emb).float()).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

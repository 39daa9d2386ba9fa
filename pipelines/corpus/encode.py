"""The corpus job's model stages: Ray Data callables around the VAE encoder and the text encoders.

They skip rows already rejected, and turn a failure into reject rows (the run goes on; the item is accounted).
"""
from __future__ import annotations

import numpy as np
import torch

from pipelines.corpus.rows import reject, reject_columns, with_rejects
from pipelines.models.encoders import TextEncoder, VaeEncoder
from schemas.constants import LATENT_SHAPE


class VaeStage(VaeEncoder):
    """mel -> latent_mean, latent_std [8, 256, 16] float16 (architecture step 3)."""

    def __call__(self, batch: dict) -> dict:
        n = len(batch["mel"])
        cols = reject_columns(batch, n)
        mean = np.zeros((n, *LATENT_SHAPE), np.float16)
        std = np.zeros((n, *LATENT_SHAPE), np.float16)
        ok = [i for i in range(n) if cols[0][i] == ""]
        if ok:
            try:
                m, s = self.encode(torch.from_numpy(np.stack([np.asarray(batch["mel"][i], np.float32) for i in ok])))
                m, s = m.numpy(), s.numpy()
                finite = np.isfinite(m).all(axis=(1, 2, 3)) & np.isfinite(s).all(axis=(1, 2, 3))
                for j, i in enumerate(ok):
                    if finite[j]:
                        mean[i], std[i] = m[j], s[j]
                reject(cols, [i for j, i in enumerate(ok) if not finite[j]], "vae", "non_finite_latent",
                        "VAE posterior has NaN/inf")
            except Exception as e:  # noqa: BLE001 - a failed batch becomes reject rows, the run goes on
                reject(cols, ok, "vae", "vae_error", f"{type(e).__name__}: {e}")
        out = with_rejects(batch, cols)
        out["latent_mean"], out["latent_std"] = mean, std
        return out


class TextStage(TextEncoder):
    """caption -> t5 (token states, unpadded), t5_length, clap (pooled) as little-endian float16 bytes (step 7)."""

    def __call__(self, batch: dict) -> dict:
        n = len(batch["caption"])
        cols = reject_columns(batch, n)
        t5_bytes = np.array([b""] * n, dtype=object)
        clap_bytes = np.array([b""] * n, dtype=object)
        lengths = np.zeros(n, np.int32)
        ok = [i for i in range(n) if cols[0][i] == ""]
        try:
            rows = [(ok, self.encode([batch["caption"][i] for i in ok]))] if ok else []
        except Exception:  # noqa: BLE001 - retry row by row so one bad caption does not sink the batch
            rows = []
            for i in ok:
                try:
                    rows.append(([i], self.encode([batch["caption"][i]])))
                except Exception as e:  # noqa: BLE001
                    reject(cols, [i], "text", "text_error", f"{type(e).__name__}: {e}")
        for idx, (t5, clap) in rows:
            for j, i in enumerate(idx):
                t5_bytes[i] = t5[j].astype("<f2").tobytes()
                lengths[i] = len(t5[j])
                clap_bytes[i] = clap[j].astype("<f2").tobytes()
        out = with_rejects(batch, cols)
        out["t5"], out["t5_length"], out["clap"] = t5_bytes, lengths, clap_bytes
        return out

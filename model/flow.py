"""Patchify, position ids, text padding and the rectified-flow loss (spec §4.1, §4.2, §5).

Convention: data at t = 0, noise at t = 1, z_t = (1 - t) x + t eps, the model predicts v = eps - x.
cond / uncond dicts: {"txt": [B, L, ctx], "txt_mask": [B, L] bool (True = real token; optional), "y": [B, vec]}.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from schemas.constants import GRID_COLS, GRID_ROWS, PATCH


def patchify(latent: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), C*4]; tokens row-major (row*w + col), features c*4 + ph*2 + pw."""
    b, c, h, w = latent.shape
    x = latent.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpatchify(tokens: Tensor, rows: int = GRID_ROWS, cols: int = GRID_COLS) -> Tensor:
    """Exact inverse of patchify: [B, rows*cols, C*4] -> [B, C, rows*2, cols*2]."""
    b, _, features = tokens.shape
    c = features // (PATCH * PATCH)
    x = tokens.reshape(b, rows, cols, c, PATCH, PATCH)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, rows * PATCH, cols * PATCH)


def latent_ids(batch: int, rows: int = GRID_ROWS, cols: int = GRID_COLS, device: torch.device | str | None = None
               ) -> Tensor:
    """Position ids [B, rows*cols, 3] = (0, row, col) in token order (float32)."""
    row, col = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
    ids = torch.stack((torch.zeros_like(row), row, col), dim=-1).reshape(1, rows * cols, 3).float()
    return ids.expand(batch, -1, -1)


def text_ids(batch: int, length: int, device: torch.device | str | None = None) -> Tensor:
    """All text positions are (0, 0, 0): text is not rotated."""
    return torch.zeros(batch, length, 3, device=device)


def pad_text(states: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Stack per-caption T5 states [L_i, D] into zero-padded txt [B, Lmax, D] and mask [B, Lmax] (True = real)."""
    longest = max(s.shape[0] for s in states)
    txt = states[0].new_zeros(len(states), longest, states[0].shape[-1])
    mask = torch.zeros(len(states), longest, dtype=torch.bool, device=states[0].device)
    for i, s in enumerate(states):
        txt[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return txt, mask


TEXT_BUCKETS = (32, 64, 128, 256)


def pad_to_bucket(txt: Tensor, mask: Tensor | None, buckets: tuple[int, ...] = TEXT_BUCKETS
                  ) -> tuple[Tensor, Tensor]:
    """Zero-pad txt [B, L, D] and its mask [B, L] (None = all real) to the smallest bucket length >= L.

    Under torch.compile every new text length is a new shape (a recompile); buckets keep it to a few.
    Longer than the last bucket: padded to a multiple of it. Padded positions are masked, so they change no
    real token's output; the cost is that a padded batch needs a mask, which rules out FlashAttention.
    """
    b, length = txt.shape[:2]
    if mask is None:
        mask = torch.ones(b, length, dtype=torch.bool, device=txt.device)
    target = next((n for n in sorted(buckets) if n >= length), None)
    if target is None:
        top = max(buckets)
        target = -(-length // top) * top
    if target == length:
        return txt, mask.bool()
    padded_txt = txt.new_zeros(b, target, txt.shape[2])
    padded_mask = torch.zeros(b, target, dtype=torch.bool, device=mask.device)
    padded_txt[:, :length], padded_mask[:, :length] = txt, mask.bool()
    return padded_txt, padded_mask


def text_mask(cond: dict) -> Tensor:
    mask = cond.get("txt_mask")
    if mask is None:
        return torch.ones(cond["txt"].shape[:2], dtype=torch.bool, device=cond["txt"].device)
    return mask.bool()


def as_tokens(x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """Accept a latent [B, C, H, W] (any even H, W) or tokens [B, 1024, F] of the standard grid."""
    if x.dim() == 4:
        return patchify(x), (x.shape[2] // PATCH, x.shape[3] // PATCH)
    return x, (GRID_ROWS, GRID_COLS)


def velocity(model: nn.Module, z: Tensor, t: Tensor, cond: dict, grid: tuple[int, int] = (GRID_ROWS, GRID_COLS)
             ) -> Tensor:
    """Model velocity for tokens z [B, rows*cols, F] at times t [B]; builds the ids."""
    b, length = z.shape[:2]
    if length != grid[0] * grid[1]:
        raise ValueError(f"expected {grid[0] * grid[1]} music tokens for a {grid} patch grid, got {length}")
    txt = cond["txt"]
    return model(z, latent_ids(b, *grid, device=z.device), txt, text_ids(b, txt.shape[1], z.device),
                 text_mask(cond), cond["y"], t)


def rectified_flow_loss(model: nn.Module, x0: Tensor, cond: dict, *, generator: torch.Generator | None = None
                        ) -> tuple[Tensor, Tensor]:
    """Per-sample MSE [B] of the velocity target eps - x0 at logit-normal t, and that t [B].

    x0: scaled latent [B, 8, 256, 16] or its tokens [B, 1024, 32]. Unweighted, mean over tokens and channels.
    """
    x0, grid = as_tokens(x0)
    b = x0.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=generator, device=x0.device, dtype=torch.float32))
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    t_b = t.to(x0.dtype)[:, None, None]
    z_t = (1 - t_b) * x0 + t_b * noise
    prediction = velocity(model, z_t, t, cond, grid)
    loss = (prediction.float() - (noise - x0).float()).pow(2).mean(dim=(1, 2))
    return loss, t

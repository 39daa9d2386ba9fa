"""The Euler sampler with classifier-free guidance: noise at t = 1 -> data at t = 0 (spec §5).

cond / uncond dicts as in model/flow.py; the unconditional branch is the empty-caption embedding.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from model.flow import as_tokens, text_mask, unpatchify, velocity


def cfg_batch(cond: dict, uncond: dict) -> dict:
    """One batch [cond; uncond] (2B rows); texts zero-padded to a common length; uncond of batch 1 is broadcast.

    Filled by slice assignment rather than torch.cat, which CPU autocast rejects for fp16 inputs.
    """
    txt_c, mask_c, y_c = cond["txt"], text_mask(cond), cond["y"]
    txt_u, mask_u, y_u = uncond["txt"], text_mask(uncond), uncond["y"]
    b = txt_c.shape[0]
    length = max(txt_c.shape[1], txt_u.shape[1])
    txt = txt_c.new_zeros(2 * b, length, txt_c.shape[2])
    mask = torch.zeros(2 * b, length, dtype=torch.bool, device=mask_c.device)
    y = y_c.new_empty(2 * b, y_c.shape[1])
    txt[:b, : txt_c.shape[1]], mask[:b, : txt_c.shape[1]], y[:b] = txt_c, mask_c, y_c
    txt[b:, : txt_u.shape[1]], mask[b:, : txt_u.shape[1]], y[b:] = txt_u, mask_u, y_u   # broadcasts batch 1
    return {"txt": txt, "txt_mask": mask, "y": y}


@torch.no_grad()
def sample(model: nn.Module, noise: Tensor, cond: dict, uncond: dict | None, *, steps: int = 50,
           cfg_scale: float = 3.5) -> Tensor:
    """Euler from t = 1 to 0 on the grid t_i = i/steps (never evaluated at t = 0), with CFG
    v = v_u + s (v_c - v_u); conditional and unconditional rows go through one batched forward.

    noise: [B, 8, 256, 16] or tokens [B, 1024, 32]; returns x0 of the same shape.
    """
    z, grid = as_tokens(noise)
    b = z.shape[0]
    guided = uncond is not None and cfg_scale != 1.0
    batch_cond = cfg_batch(cond, uncond) if guided else cond
    for i in range(steps, 0, -1):
        t = torch.full((b,), i / steps, device=z.device, dtype=torch.float32)
        if guided:
            v_cond, v_uncond = velocity(model, z.repeat(2, 1, 1), t.repeat(2), batch_cond, grid).float().chunk(2)
            v = v_uncond + cfg_scale * (v_cond - v_uncond)
        else:
            v = velocity(model, z, t, batch_cond, grid).float()
        z = (z.float() - v / steps).to(z.dtype)
    return unpatchify(z, *grid) if noise.dim() == 4 else z

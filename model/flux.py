"""The FluxMusic transformer (spec §4): double-stream then single-stream blocks over [text; music] tokens."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from model.layers import (DoubleStreamBlock, LastLayer, MLPEmbedder, SingleStreamBlock, rope_angles,
                          timestep_embedding)

TIME_EMBED_DIM = 256


@dataclass
class FluxParams:
    in_channels: int = 32
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 768
    mlp_ratio: float = 4.0
    num_heads: int = 16
    depth: int = 12                  # double-stream blocks
    depth_single_blocks: int = 24
    axes_dim: list[int] = field(default_factory=lambda: [16, 16, 16])
    theta: float = 10_000.0
    qkv_bias: bool = True


# spec §4.9; `tiny` is ours, for CPU tests
SIZES: dict[str, FluxParams] = {
    "tiny": FluxParams(hidden_size=64, num_heads=4, depth=1, depth_single_blocks=2, axes_dim=[4, 6, 6]),
    "small": FluxParams(hidden_size=512, depth=8, depth_single_blocks=16, axes_dim=[8, 12, 12]),
    "base": FluxParams(hidden_size=768, depth=12, depth_single_blocks=24, axes_dim=[16, 16, 16]),
    "large": FluxParams(hidden_size=1024, depth=12, depth_single_blocks=24, axes_dim=[16, 24, 24]),
    "giant": FluxParams(hidden_size=1408, depth=16, depth_single_blocks=32, axes_dim=[16, 36, 36]),
    "giant_full": FluxParams(hidden_size=1408, depth=12, depth_single_blocks=24, axes_dim=[16, 36, 36]),
}


class FluxMusic(nn.Module):
    """Velocity model: forward(img, img_ids, txt, txt_ids, txt_mask, y, timesteps) -> [B, 1024, in_channels]."""

    def __init__(self, params: FluxParams):
        super().__init__()
        if params.hidden_size % params.num_heads:
            raise ValueError(f"hidden_size {params.hidden_size} not divisible by num_heads {params.num_heads}")
        head_dim = params.hidden_size // params.num_heads
        if sum(params.axes_dim) != head_dim:
            raise ValueError(f"axes_dim {params.axes_dim} must sum to the head dim {head_dim}")
        self.params = params
        self.gradient_checkpointing = False   # recompute each block in backward (for the big sizes)
        d = params.hidden_size
        self.img_in = nn.Linear(params.in_channels, d)
        self.time_in = MLPEmbedder(TIME_EMBED_DIM, d)
        self.vector_in = MLPEmbedder(params.vec_in_dim, d)
        self.txt_in = nn.Linear(params.context_in_dim, d)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(d, params.num_heads, params.mlp_ratio, params.qkv_bias) for _ in range(params.depth))
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(d, params.num_heads, params.mlp_ratio) for _ in range(params.depth_single_blocks))
        self.final_layer = LastLayer(d, params.in_channels)

    def _run(self, block: nn.Module, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, img: Tensor, img_ids: Tensor, txt: Tensor, txt_ids: Tensor, txt_mask: Tensor | None,
                y: Tensor, timesteps: Tensor) -> Tensor:
        dtype = self.img_in.weight.dtype   # inputs may arrive as fp16 (stored T5/CLAP): run in the model's dtype
        vec = self.time_in(timestep_embedding(timesteps).to(dtype)) + self.vector_in(y.to(dtype))
        img = self.img_in(img.to(dtype))
        txt = self.txt_in(txt.to(dtype))
        rope = rope_angles(torch.cat((txt_ids, img_ids), dim=1), self.params.axes_dim, self.params.theta)
        mask = joint_key_mask(txt_mask, img.shape[1])

        for block in self.double_blocks:
            img, txt = self._run(block, img, txt, vec, rope, mask)
        x = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            x = self._run(block, x, vec, rope, mask)
        return self.final_layer(x[:, txt.shape[1]:], vec)


def joint_key_mask(txt_mask: Tensor | None, img_len: int) -> Tensor | None:
    """Bool [B, 1, 1, L_txt + L_img]: padded text keys hidden from every query; None when nothing is padded.

    Music keys are always visible, so no query row is fully masked (no NaN, even for padded text queries).
    """
    if txt_mask is None or bool(txt_mask.all()):
        return None
    img_mask = torch.ones(txt_mask.shape[0], img_len, dtype=torch.bool, device=txt_mask.device)
    return torch.cat((txt_mask.bool(), img_mask), dim=1)[:, None, None, :]


def compile_blocks(model: FluxMusic, **compile_kwargs) -> FluxMusic:
    """torch.compile each double and single block in place (nn.Module.compile); returns the same model.

    Per block rather than the whole model: the blocks of one kind share one compiled graph, so compile time
    does not grow with depth, and the host-side mask check in forward stays outside the graphs. Not used by
    default (compile costs minutes); state_dict keys are unchanged.
    """
    for block in (*model.double_blocks, *model.single_blocks):
        block.compile(**compile_kwargs)
    return model


def build_model(size: str, *, context_in_dim: int = 4096, vec_in_dim: int = 768,
                device: torch.device | str | None = None, gradient_checkpointing: bool = False) -> FluxMusic:
    """FluxMusic of a named size (SIZES); device="meta" builds the structure without memory."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    params = replace(SIZES[size], context_in_dim=context_in_dim, vec_in_dim=vec_in_dim,
                     axes_dim=list(SIZES[size].axes_dim))
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = FluxMusic(params)
    model.gradient_checkpointing = gradient_checkpointing
    return model

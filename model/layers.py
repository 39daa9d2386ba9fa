"""Building blocks of the FluxMusic transformer (spec §4): RoPE, timestep embedding, modulation, blocks.

Shapes: B batch, L sequence, H heads, D head dim, d hidden size. Attention tensors are [B, H, L, D].
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

NORM_EPS = 1e-6


# ---------------------------------------------------------------- rotary position embedding (spec §4.2)

def rope_angles(ids: Tensor, axes_dim: list[int], theta: float) -> tuple[Tensor, Tensor]:
    """(cos, sin) [B, 1, L, sum(axes_dim)/2] for position ids [B, L, n_axes]; angles in float64, kept in fp32."""
    angles = []
    for axis, dim in enumerate(axes_dim):
        exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=ids.device) / dim
        frequency = theta ** (-exponent)                                   # [dim/2]
        angles.append(ids[..., axis].to(torch.float64)[..., None] * frequency)
    angle = torch.cat(angles, dim=-1)[:, None]                             # [B, 1, L, D/2]
    return angle.cos().float(), angle.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs (x_2k, x_2k+1) of x [B, H, L, D] by the given angles (computed in fp32)."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((cos * x0 - sin * x1, sin * x0 + cos * x1), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


def attention(q: Tensor, k: Tensor, v: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None) -> Tensor:
    """RoPE on q and k, then SDPA; [B, H, L, D] in, [B, L, H*D] out. mask: bool [B, 1, 1, L] (True = visible key).

    mask None (FluxMusic.forward passes None when no text is padded) lets CUDA run the FlashAttention kernel,
    which takes no arbitrary mask; a bool mask falls back to the memory-efficient kernel.
    """
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


def _sdpa_priority() -> list[SDPBackend]:
    """PyTorch's own dispatch order where it exposes one (2.13 CPU: FLASH, EFFICIENT, MATH, CUDNN), else ours."""
    try:
        order = [SDPBackend(int(i)) for i in torch._C._get_sdp_priority_order()]
    except (AttributeError, TypeError, ValueError):
        order = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                 SDPBackend.MATH]
    return [b for b in order if b not in (SDPBackend.ERROR, SDPBackend.OVERRIDEABLE)]


def sdpa_backend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> str:
    """Name of the SDPA backend that runs for these inputs on their device ("FLASH_ATTENTION", ...).

    Each backend is allowed alone, in the dispatcher's priority order; the first one that accepts the inputs
    is the one the unrestricted call would dispatch to. "NONE" if no backend accepts them.
    """
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")      # each refusing backend warns why; the answer is what we report
        for backend in _sdpa_priority():
            try:
                with sdpa_kernel([backend]):
                    F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            except RuntimeError:    # "No available kernel" for this backend: try the next
                continue
            return backend.name
    return "NONE"


# ---------------------------------------------------------------- conditioning (spec §4.3, §4.4)

def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10_000.0, time_factor: float = 1000.0) -> Tensor:
    """Sinusoidal embedding [B, dim] of t*1000, laid out [cos | sin] (float32)."""
    half = dim // 2
    frequency = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (time_factor * t.float())[:, None] * frequency[None]
    return torch.cat((args.cos(), args.sin()), dim=-1)


class MLPEmbedder(nn.Module):
    """Linear in->d, SiLU, Linear d->d (time_in, vector_in)."""

    def __init__(self, in_dim: int, hidden_size: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_size)
        self.out_layer = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS norm over the head dim, computed in fp32, with a learnable scale (init 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x_float = x.float()
        normed = x_float * torch.rsqrt(x_float.pow(2).mean(-1, keepdim=True) + NORM_EPS)
        return normed.to(x.dtype) * self.scale.to(x.dtype)


class QKNorm(nn.Module):
    def __init__(self, head_dim: int):
        super().__init__()
        self.query_norm = RMSNorm(head_dim)
        self.key_norm = RMSNorm(head_dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


@dataclass
class ModulationOut:
    shift: Tensor
    scale: Tensor
    gate: Tensor

    def apply(self, normed: Tensor) -> Tensor:
        return (1 + self.scale) * normed + self.shift


class Modulation(nn.Module):
    """Linear(SiLU(vec)) -> one or two (shift, scale, gate) triples, broadcast over tokens."""

    def __init__(self, hidden_size: int, double: bool):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(hidden_size, self.multiplier * hidden_size)

    def forward(self, vec: Tensor) -> tuple[ModulationOut, ModulationOut | None]:
        chunks = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        first = ModulationOut(*chunks[:3])
        second = ModulationOut(*chunks[3:]) if self.multiplier == 6 else None
        return first, second


def layer_norm(x: Tensor) -> Tensor:
    """Non-affine LayerNorm, eps 1e-6."""
    return F.layer_norm(x, x.shape[-1:], eps=NORM_EPS)


def split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """[B, L, 3*H*D] (q, k, v order) -> three [B, H, L, D]."""
    q, k, v = qkv.unflatten(-1, (3, num_heads, -1)).permute(2, 0, 3, 1, 4)
    return q, k, v


# ---------------------------------------------------------------- blocks (spec §4.5 - §4.7)

class StreamAttention(nn.Module):
    """qkv projection, QK-norm and output projection of one stream of a double block."""

    def __init__(self, hidden_size: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.norm = QKNorm(hidden_size // num_heads)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = split_heads(self.qkv(x), self.num_heads)
        q, k = self.norm(q, k, v)
        return q, k, v


def gelu_mlp(hidden_size: int, mlp_ratio: float) -> nn.Sequential:
    mlp_hidden = int(hidden_size * mlp_ratio)
    return nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"),
                         nn.Linear(mlp_hidden, hidden_size))


class DoubleStreamBlock(nn.Module):
    """Separate weights for music (img) and text; one joint attention over [text; music]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.img_mod = Modulation(hidden_size, double=True)
        self.img_attn = StreamAttention(hidden_size, num_heads, qkv_bias)
        self.img_mlp = gelu_mlp(hidden_size, mlp_ratio)
        self.txt_mod = Modulation(hidden_size, double=True)
        self.txt_attn = StreamAttention(hidden_size, num_heads, qkv_bias)
        self.txt_mlp = gelu_mlp(hidden_size, mlp_ratio)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, rope: tuple[Tensor, Tensor],
                mask: Tensor | None) -> tuple[Tensor, Tensor]:
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.qkv_heads(img_mod1.apply(layer_norm(img)))
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads(txt_mod1.apply(layer_norm(txt)))

        # text first, as in the ids and the mask
        q, k, v = (torch.cat(pair, dim=2) for pair in ((txt_q, img_q), (txt_k, img_k), (txt_v, img_v)))
        attn = attention(q, k, v, rope, mask)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1]:]

        img = img + img_mod1.gate * self.img_attn.proj(img_attn)
        img = img + img_mod2.gate * self.img_mlp(img_mod2.apply(layer_norm(img)))
        txt = txt + txt_mod1.gate * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod2.gate * self.txt_mlp(txt_mod2.apply(layer_norm(txt)))
        return img, txt


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP over the joint sequence: fused linear1 d -> 3d+4d, linear2 5d -> d."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, 3 * hidden_size + self.mlp_hidden)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x: Tensor, vec: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None) -> Tensor:
        mod, _ = self.modulation(vec)
        qkv, mlp = self.linear1(mod.apply(layer_norm(x))).split([3 * self.hidden_size, self.mlp_hidden], dim=-1)
        q, k, v = split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        attn = attention(q, k, v, rope, mask)
        return x + mod.gate * self.linear2(torch.cat((attn, F.gelu(mlp, approximate="tanh")), dim=-1))


class LastLayer(nn.Module):
    """adaLN (shift, scale) on a non-affine LayerNorm, then Linear d -> out channels."""

    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.linear = nn.Linear(hidden_size, out_channels)

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear((1 + scale) * layer_norm(x) + shift)

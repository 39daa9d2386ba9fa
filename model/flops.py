"""Parameter and FLOP counts of FluxMusic (spec §7): Table 1's GFLOPs and the training MFU's numerator."""
from __future__ import annotations

from torch import nn

from model.flux import TIME_EMBED_DIM, FluxParams
from schemas.constants import MUSIC_TOKENS


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- FLOPs (spec §7)

def _linear_macs(params: FluxParams, txt_len: int, img_len: int) -> int:
    d, n_tokens = params.hidden_size, txt_len + img_len
    block_token = 12 * d * d       # per token: qkv 3d² + proj d² + MLP 8d²  (single: linear1 7d² + linear2 5d²)
    double = params.depth * (block_token * n_tokens + 12 * d * d)          # + two 6d² modulations
    single = params.depth_single_blocks * (block_token * n_tokens + 3 * d * d)
    embed = d * (params.in_channels * img_len + params.context_in_dim * txt_len + TIME_EMBED_DIM
                 + params.vec_in_dim + params.in_channels * img_len)       # img_in, txt_in, MLP inputs, final linear
    return double + single + embed + 4 * d * d                             # MLP second layers + final adaLN


def _layer_norm_ops(params: FluxParams, txt_len: int, img_len: int) -> int:
    d, n_tokens = params.hidden_size, txt_len + img_len
    return params.depth * 4 * n_tokens * d + params.depth_single_blocks * 2 * n_tokens * d + 2 * img_len * d


def table1_gflops(params: FluxParams, txt_len: int = 256, img_len: int = MUSIC_TOKENS) -> float:
    """The paper's Table 1 "GFLOPs": 2 x thop MACs, i.e. Linear layers + LayerNorms only (spec §7.1)."""
    return 2 * (_linear_macs(params, txt_len, img_len) + _layer_norm_ops(params, txt_len, img_len)) / 1e9


def model_flops_per_sample(params: FluxParams, txt_len: int = 256, img_len: int = MUSIC_TOKENS) -> float:
    """Forward FLOPs of one sample including attention scores and values (4 N² d per block, spec §7.2).

    Training costs about 3x this (forward + backward); use it for MFU.
    """
    n_tokens = txt_len + img_len
    attention = 4 * n_tokens * n_tokens * params.hidden_size * (params.depth + params.depth_single_blocks)
    return 2.0 * (_linear_macs(params, txt_len, img_len) + _layer_norm_ops(params, txt_len, img_len)) + attention

"""The exponential moving average of the weights, kept per rank on its own shard of every parameter."""
from __future__ import annotations

import torch
from torch import Tensor

from pipelines.training.parallel import gather


def ema_due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


@torch.no_grad()
def ema_update(ema: list[Tensor], params: list[Tensor], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * params, in place."""
    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)


def full_ema(names: list[str], ema: list[Tensor], params: list[Tensor]) -> dict[str, Tensor]:
    """The whole EMA state dict on the CPU; every rank must call this (a gather under FSDP)."""
    return {n: gather(e, p).detach().cpu() for n, e, p in zip(names, ema, params)}


def ema_state_dict(names: list[str], ema: list[Tensor], params: list[Tensor]) -> dict[str, Tensor]:
    """The EMA laid out like the parameters, without a gather: a DTensor over this rank's piece under FSDP
    (so DCP saves and loads it sharded; global shape given: FSDP2 shards may be uneven), the plain tensor otherwise. Shares storage with `ema`."""
    from torch.distributed.tensor import DTensor

    return {n: DTensor.from_local(e, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                  stride=p.stride()) if isinstance(p, DTensor) else e
            for n, e, p in zip(names, ema, params)}

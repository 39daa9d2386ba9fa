"""Data parallelism: DDP or FSDP2 wrapping, and the few collectives the loop needs (all work without a group)."""
from __future__ import annotations

from torch import Tensor, nn


def process_group():
    """torch.distributed when a process group is up (Ray Train workers), else None (one process)."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def all_reduce_sum(t: Tensor) -> Tensor:
    dist = process_group()
    if dist is not None:
        dist.all_reduce(t)
    return t


def local(t: Tensor) -> Tensor:
    """This rank's piece of a (possibly FSDP-sharded DTensor) parameter."""
    return t.to_local() if hasattr(t, "to_local") else t


def gather(piece: Tensor, like: Tensor) -> Tensor:
    """The full tensor of a local piece laid out like parameter `like` (collective under FSDP)."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(piece, like.device_mesh, like.placements, shape=like.shape,
                                 stride=like.stride()).full_tensor()
    return piece


def scatter(full: Tensor, like: Tensor) -> Tensor:
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements).to_local()
    return full.to(like.device, like.dtype).clone()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def apply_fsdp(model: nn.Module) -> nn.Module:
    """FSDP2: shard each transformer block, then the root (embedders, final layer)."""
    from torch.distributed.fsdp import fully_shard

    for block in [*model.double_blocks, *model.single_blocks]:
        fully_shard(block)
    fully_shard(model)
    return model


def wrap_model(base: nn.Module, strategy: str, world: int, device) -> nn.Module:
    """The module the loop trains: FSDP2 shards for `fsdp` on several ranks, Ray Train's DDP wrapper otherwise."""
    import ray.train.torch

    if strategy == "fsdp" and world > 1:
        return apply_fsdp(base.to(device))
    return ray.train.torch.prepare_model(base, parallel_strategy="ddp")

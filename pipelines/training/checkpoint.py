"""Sharded checkpoints (torch.distributed.checkpoint): every rank writes its own shards; any world size reads them.

A checkpoint folder (one Ray Train checkpoint: every rank reports its own temporary folder and Ray merges them
into storage/run/checkpoint_step_NNNNNNNN/) holds:
- dcp/: model, optimiser and EMA as DCP shards (`.metadata` from rank 0, `__R_0.distcp` from rank R). Under FSDP
  they are DTensor shards, under DDP one copy of each (DCP de-duplicates replicated tensors across ranks).
  DCP re-shards on load, so a checkpoint loads at another world size or strategy (DDP <-> FSDP, 2 -> 1 workers).
- state.pt (rank 0): step, data position (epoch, consumed: train rows of the epoch's global order all ranks
  took, the same position at any world size), LR schedule, loss history, configs; no weights.
- rng_rankR.pt (rank R): that rank's RNG states. Resume at the same world size restores them exactly; at another
  world size the new ranks get fresh generators derived from (seed, rank, step): deterministic, not exact.
state.pt and the rng files load with weights_only=True, but DCP reads dcp/.metadata with pickle: resume only
from checkpoints you trust (untrusted weights: releases only). The read side without a process group (layout,
`load_state`, `load_weights`, `list_checkpoints`) is pipelines/runs/checkpoints.py, shared with evaluation.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict

import numpy as np
import torch
from torch import Tensor

from pipelines.runs.checkpoints import SHARDS_DIR, STATE_FILE
from pipelines.training.ema import ema_state_dict
from pipelines.training.parallel import local
from pipelines.training.state import TrainState

FORMAT = 3                       # 1: one full state.pt with weights (read, not resumed); 2: DCP shards, consumed
                                 # in per-rank micro-batches; 3: consumed in rows of the world-size-free order


def rng_state(generator: torch.Generator) -> dict[str, Tensor]:
    py_version, py_state, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
             "python": torch.tensor([py_version, *py_state], dtype=torch.int64),
             "python_gauss": torch.tensor([float("nan") if py_gauss is None else py_gauss], dtype=torch.float64),
             "numpy": torch.from_numpy(np_keys.astype(np.int64)),
             "numpy_extra": torch.tensor([np_pos, np_has_gauss, np_gauss], dtype=torch.float64)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    values = [int(v) for v in state["python"]]
    gauss = float(state["python_gauss"][0])
    random.setstate((values[0], tuple(values[1:]), None if np.isnan(gauss) else gauss))
    pos, has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def derived_seed(seed: int, rank: int, step: int) -> int:
    """A fresh per-rank seed after a resume at another world size (no saved RNG maps onto the new ranks)."""
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)


def reseed(generator: torch.Generator, seed: int) -> None:
    generator.manual_seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def sharded_state(state: TrainState) -> dict:
    """What DCP saves and loads in place: model, optimiser (FQN keys, DTensors under FSDP) and EMA shards."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    return {"model": get_model_state_dict(state.model),
            "optimizer": get_optimizer_state_dict(state.model, state.optimizer),
            "ema": ema_state_dict(state.names, state.ema, state.params)}


def train_state(state: TrainState) -> dict:
    """Rank 0's small file: everything but the weights, as tensors and plain types."""
    return {"format": FORMAT, "step": state.step, "epoch": state.epoch, "consumed": state.consumed,
            "world": state.world, "strategy": state.strategy, "scheduler": state.scheduler.state_dict(),
            "loss_history": torch.tensor(state.history, dtype=torch.float64).reshape(-1, 2),
            "config": asdict(state.cfg), "model_config": model_config(state)}


def model_config(state: TrainState) -> dict:
    return {"size": state.cfg.size, "context_in_dim": state.t5_dim, "vec_in_dim": state.clap_dim,
            "vae_scaling_factor": state.scaling_factor, "kit": state.kit}


_ASYNC_GROUP: list = []


def async_group():
    """A process group of its own for dcp.async_save (None without one): the background save runs its
    collectives from another thread, and on the training group they would interleave with FSDP's all-gathers
    (gloo aborts on the mismatched messages). Created at the first async save, which every rank reaches."""
    from pipelines.training.parallel import process_group

    dist = process_group()
    if dist is None:
        return None
    if not _ASYNC_GROUP:
        _ASYNC_GROUP.append(dist.new_group(backend="gloo"))
    return _ASYNC_GROUP[0]


def save_checkpoint(state: TrainState, folder: str, *, asynchronous: bool = False):
    """Every rank writes its shards and RNG into `folder` (its own local folder; Ray merges them); rank 0 also
    writes state.pt. Every rank must call this (DCP plans collectively). With `asynchronous`, returns the
    dcp.async_save future (the shards are staged in memory, written in the background); else None."""
    import torch.distributed.checkpoint as dcp

    torch.save(rng_state(state.generator), os.path.join(folder, rng_file(state.rank)))
    if state.rank == 0:
        torch.save(train_state(state), os.path.join(folder, STATE_FILE))
    shards = os.path.join(folder, SHARDS_DIR)
    if asynchronous:
        return dcp.async_save(sharded_state(state), checkpoint_id=shards, process_group=async_group())
    dcp.save(sharded_state(state), checkpoint_id=shards)
    return None


def restore_checkpoint(state: TrainState, folder: str) -> None:
    """Load a checkpoint folder into `state` in place (every rank; DCP reads each rank's part, re-sharding)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    saved = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
    if int(saved.get("format", 1)) < 2:
        raise ValueError(f"{folder}: a format-1 (full state.pt) checkpoint; resume needs format {FORMAT} (DCP)")
    target = sharded_state(state)
    dcp.load(target, checkpoint_id=os.path.join(folder, SHARDS_DIR))
    set_model_state_dict(state.model, target["model"])
    set_optimizer_state_dict(state.model, state.optimizer, target["optimizer"])
    state.ema[:] = [local(target["ema"][name]).detach().clone() for name in state.names]
    state.scheduler.load_state_dict(saved["scheduler"])
    state.step, state.epoch, state.consumed = int(saved["step"]), int(saved["epoch"]), int(saved["consumed"])
    if int(saved["format"]) == 2:      # micro-batches per rank of the old per-rank dealing: as many rows, new order
        state.consumed *= int(saved["world"]) * int(saved["config"]["micro_batch_size"])
        if state.rank == 0:
            print(f"{folder}: a format-2 checkpoint; its epoch continues after as many rows in the new data order, "
                  f"which may repeat or skip rows of that epoch")
    state.history = [tuple(r) for r in saved["loss_history"].tolist()]
    rng = os.path.join(folder, rng_file(state.rank))
    if int(saved.get("world", state.world)) == state.world and os.path.exists(rng):
        set_rng_state(torch.load(rng, weights_only=True), state.generator)     # exact resume
    else:
        reseed(state.generator, derived_seed(state.cfg.seed, state.rank, state.step))

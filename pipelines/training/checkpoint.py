"""Checkpoints with exact resume: weights, optimiser, EMA, schedule, data position and every RNG.

A checkpoint folder holds state.pt (rank 0: full state dicts, loadable at any world size) and one
rng_rankN.pt per rank. Everything is tensors and plain types, so it loads with weights_only=True.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict

import numpy as np
import torch
from torch import Tensor

from pipelines import storage
from pipelines.training.ema import full_ema
from pipelines.training.parallel import scatter
from pipelines.training.state import TrainState

CHECKPOINT_PREFIX = "checkpoint_step_"
STATE_FILE = "state.pt"


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


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def load_state(path: str) -> dict:
    """A checkpoint's state.pt (folder or file), loaded safely: tensors and plain types only."""
    if os.path.isdir(path):
        path = os.path.join(path, STATE_FILE)
    return torch.load(path, map_location="cpu", weights_only=True)


def _full_state_dict_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def list_checkpoints(storage_uri: str, run_name: str) -> list[str]:
    """This run's checkpoint folders (URIs), oldest first."""
    run_dir = storage.join(storage_uri, run_name)
    folders = {f.rsplit("/", 2)[-2] for f in storage.list_files(run_dir, STATE_FILE)}
    return [storage.join(run_dir, name) for name in sorted(folders) if name.startswith(CHECKPOINT_PREFIX)]


def save_checkpoint(state: TrainState, folder: str) -> None:
    """Every rank writes its RNG state; rank 0 writes state.pt. Every rank must call this (gathers)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _full_state_dict_options(cpu_offload=True)
    model_state = get_model_state_dict(state.model, options=options)
    optimizer_state = get_optimizer_state_dict(state.model, state.optimizer, options=options)
    ema = full_ema(state.names, state.ema, state.params)
    torch.save(rng_state(state.generator), os.path.join(folder, f"rng_rank{state.rank}.pt"))
    if state.rank != 0:
        return
    torch.save({
        "format": 1, "step": state.step, "epoch": state.epoch, "consumed": state.consumed,
        "model": model_state, "ema": ema, "optimizer": optimizer_state,
        "scheduler": state.scheduler.state_dict(),
        "loss_history": torch.tensor(state.history, dtype=torch.float64).reshape(-1, 2),
        "config": asdict(state.cfg),
        "model_config": {"size": state.cfg.size, "context_in_dim": state.t5_dim, "vec_in_dim": state.clap_dim,
                         "vae_scaling_factor": state.scaling_factor, "kit": state.kit},
    }, os.path.join(folder, STATE_FILE))


def restore_checkpoint(state: TrainState, folder: str) -> None:
    """Load a checkpoint folder into `state` in place (every rank; each re-shards the full state dicts)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    saved = load_state(folder)
    rng = torch.load(os.path.join(folder, f"rng_rank{state.rank}.pt"), weights_only=True)
    set_model_state_dict(state.model, saved["model"], options=_full_state_dict_options())
    set_optimizer_state_dict(state.model, state.optimizer, saved["optimizer"], options=_full_state_dict_options())
    for i, (name, p) in enumerate(zip(state.names, state.params)):
        state.ema[i] = scatter(saved["ema"][name], p)
    state.scheduler.load_state_dict(saved["scheduler"])
    state.step, state.epoch, state.consumed = int(saved["step"]), int(saved["epoch"]), int(saved["consumed"])
    state.history = [tuple(r) for r in saved["loss_history"].tolist()]
    set_rng_state(rng, state.generator)

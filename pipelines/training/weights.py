"""A trained FluxMusic from whatever a run leaves: a run folder, a checkpoint (sharded or full) or a release.

Sampling, evaluation and the release export read weights only through here; the formats themselves live in
checkpoint.py (DCP shards) and release.py (safetensors + config.json).
"""
from __future__ import annotations

import io

import torch
from torch import nn

from pipelines import storage
from pipelines.training.checkpoint import load_weights
from pipelines.training.release import (
    is_release,
    model_from_release,
    read_release_config,
    write_release,
)


def resolve_checkpoint(path: str) -> str:
    """The folder a --checkpoint names: a release folder, a checkpoint folder (or its state.pt), or a run
    folder (its latest checkpoint_step_NNNNNNNN/); local or s3://."""
    if path.endswith(".pt"):
        return path.rsplit("/", 1)[0]
    if storage.exists(storage.join(path, "state.pt")) or is_release(path):
        return path
    states = [f for f in storage.list_files(path, "/state.pt") if "/checkpoint_step_" in f]
    if not states:
        raise FileNotFoundError(f"no checkpoint (state.pt) or release (config.json + ema.safetensors) in {path}")
    return states[-1].rsplit("/", 1)[0]


def load_checkpoint_state(path: str) -> dict:
    """state.pt of a training checkpoint (see resolve_checkpoint), loaded with weights_only: model_config and
    the training position; the weights too for a format-1 checkpoint. A release folder gives
    {"format": "release", "model_config": its config.json, "step": ...}."""
    folder = resolve_checkpoint(path)
    if is_release(folder):
        config = read_release_config(folder)
        return {"format": "release", "model_config": config, "step": config.get("step")}
    raw = storage.read_bytes(storage.join(folder, "state.pt"))
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def model_from_checkpoint(path: str, weights: str = "ema") -> tuple[nn.Module, dict]:
    """(FluxMusic with the `weights` ("ema" | "model") of a checkpoint or release folder, its model_config).

    Format-2 (DCP) checkpoints are read shard by shard into one CPU copy of the model, in this process (no
    process group); a release folder from its safetensors file."""
    from model import build_model

    folder = resolve_checkpoint(path)
    state = load_checkpoint_state(folder)
    if state.get("format") == "release":
        return model_from_release(folder, weights)
    info = state["model_config"]
    model = build_model(info["size"], context_in_dim=int(info["context_in_dim"]),
                        vec_in_dim=int(info["vec_in_dim"]), device="meta")
    if weights in state:                        # format 1: full weights inside state.pt
        model.load_state_dict(state[weights], assign=True)
    else:
        load_weights(folder, weights, model.to_empty(device="cpu"))
    return model.float().eval(), info




def export_release(checkpoint: str, output: str) -> dict:
    """A training checkpoint (folder, its state.pt, or a run folder: its latest) -> a release folder at
    `output`. One set of weights is in memory at a time; returns the written config."""
    source = resolve_checkpoint(checkpoint)
    state = load_checkpoint_state(source)
    config = None
    for name in ("model", "ema"):        # ema last: config.json + ema mark a release complete (is_release)
        model, info = model_from_checkpoint(source, name)
        config = write_release(output, info, {name: model.state_dict()}, state.get("step"), source)
        del model
    return config



"""A trained FluxMusic from whatever a run leaves: a run folder, a checkpoint (sharded or full) or a release.

Sampling, evaluation and the release export read weights only through here; the formats themselves live in
checkpoints.py (DCP shards) and release.py (safetensors + config.json). Checkpoints unpickle DCP's metadata:
untrusted weights are read from releases only (docs/training.md, "Releases").
"""
from __future__ import annotations

import io

import torch
from torch import nn

from pipelines import storage
from pipelines.errors import UserPathError
from pipelines.runs.checkpoints import STATE_FILE, load_weights
from pipelines.runs.forms import CHECKPOINT_FORMS
from pipelines.runs.release import (
    is_release,
    model_from_release,
    read_release_config,
    weights_of_file,
    write_release,
)



def resolve_checkpoint(path: str) -> str:
    """The folder a --checkpoint names (CHECKPOINT_FORMS): a release folder, a checkpoint folder, or for a run
    folder its latest checkpoint_step_NNNNNNNN/; local or s3://."""
    import pyarrow.fs as pafs

    fs, where = storage.filesystem(path)
    kind = fs.get_file_info(where).type
    if kind == pafs.FileType.NotFound:
        raise UserPathError(f"--checkpoint {path} does not exist; give {CHECKPOINT_FORMS}")
    if kind == pafs.FileType.File:
        if not path.endswith((".pt", ".safetensors")):
            raise UserPathError(f"--checkpoint {path} is a file but not a state.pt or .safetensors; "
                                f"give {CHECKPOINT_FORMS}")
        path = path.rsplit("/", 1)[0] if "/" in path else "."
    if storage.exists(storage.join(path, STATE_FILE)) or is_release(path):
        return path
    states = [f for f in storage.list_files(path, "/" + STATE_FILE) if "/checkpoint_step_" in f]
    if not states:
        raise UserPathError(f"--checkpoint {path} holds no checkpoint (state.pt) or release (config.json + "
                            f"ema.safetensors); give {CHECKPOINT_FORMS}")
    return states[-1].rsplit("/", 1)[0]


def chosen_weights(path: str, weights: str) -> str:
    """A release's weights file names its weights ("ema" | "model"), whatever `weights` says; else `weights`."""
    return weights_of_file(path.rsplit("/", 1)[-1]) if path.endswith(".safetensors") else weights


def load_checkpoint_state(path: str) -> dict:
    """state.pt of a training checkpoint (see resolve_checkpoint), loaded with weights_only: model_config and
    the training position; the weights too for a format-1 checkpoint. A release gives
    {"format": "release", "model_config": its config.json, "step": ...}."""
    folder = resolve_checkpoint(path)
    if is_release(folder):
        config = read_release_config(folder)
        return {"format": "release", "model_config": config, "step": config.get("step")}
    raw = storage.read_bytes(storage.join(folder, STATE_FILE))
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def model_from_checkpoint(path: str, weights: str = "ema") -> tuple[nn.Module, dict]:
    """(FluxMusic with the `weights` ("ema" | "model") of any CHECKPOINT_FORMS, its model_config).

    Format-2 (DCP) checkpoints are read shard by shard into one CPU copy of the model, in this process (no
    process group); a release from its safetensors file."""
    from model import build_model

    weights = chosen_weights(path, weights)
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

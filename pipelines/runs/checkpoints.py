"""Reading a run's checkpoints: the folder layout, listing them, and loading one in a single process (no process group).

A checkpoint folder (storage/run/checkpoint_step_NNNNNNNN/, written by pipelines/training/checkpoint.py) holds
dcp/ (model, optimiser and EMA as torch.distributed.checkpoint shards), state.pt (step, data position, configs;
no weights) and rng_rankR.pt. state.pt and the rng files load with weights_only=True, but DCP reads its
`dcp/.metadata` with pickle: load checkpoints only from runs you trust; untrusted weights: releases only
(pipelines/runs/release.py, safetensors, nothing unpickled).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator

import torch
from torch import nn

from pipelines import storage

CHECKPOINT_PREFIX = "checkpoint_step_"
STATE_FILE = "state.pt"
SHARDS_DIR = "dcp"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(storage_uri: str, run_name: str) -> list[str]:
    """This run's checkpoint folders (URIs), oldest first."""
    run_dir = storage.join(storage_uri, run_name)
    folders = {f.rsplit("/", 2)[-2] for f in storage.list_files(run_dir, STATE_FILE)}
    return [storage.join(run_dir, name) for name in sorted(folders) if name.startswith(CHECKPOINT_PREFIX)]


@contextlib.contextmanager
def local_folder(uri: str) -> Iterator[str]:
    """A local path with the checkpoint folder's files: the folder itself, or an s3:// folder downloaded."""
    if not storage.is_s3(uri):
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="fluxmusic-ckpt-") as folder:
        for relative in all_files(uri):
            path = os.path.join(folder, relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(storage.read_bytes(storage.join(uri, relative)))
        yield folder


def all_files(uri: str) -> list[str]:
    """Every file below uri as a relative path, hidden ones included: DCP names its files `.metadata` and
    `__R_0.distcp`, which storage.list_files skips (it hides "." and "_" names, like Parquet readers do)."""
    import pyarrow.fs as pafs

    fs, root = storage.filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(storage.safe_relative(root, i.path) for i in infos if i.type == pafs.FileType.File)  # no ../ keys


def load_state(path: str) -> dict:
    """A whole checkpoint (folder or its state.pt; local or s3://) in one process, with full state dicts
    `model`, `ema`, `optimizer` beside the state.pt fields. Unpickles dcp/.metadata: trusted checkpoints only."""
    folder = path.rsplit("/", 1)[0] if path.endswith(".pt") else path
    with local_folder(folder) as local_path:
        saved = torch.load(os.path.join(local_path, STATE_FILE), map_location="cpu", weights_only=True)
        if int(saved.get("format", 1)) >= 2:
            from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

            with tempfile.TemporaryDirectory() as scratch:
                dcp_to_torch_save(os.path.join(local_path, SHARDS_DIR), os.path.join(scratch, "full.pt"))
                saved.update(torch.load(os.path.join(scratch, "full.pt"), map_location="cpu", weights_only=True))
    return saved


def load_weights(folder: str, weights: str, model: nn.Module) -> nn.Module:
    """Fill `model` (CPU, allocated) with one set of a format-2 checkpoint's weights ("ema" | "model") read
    straight from the DCP shards: one copy in memory, no process group. Unpickles dcp/.metadata: trusted only."""
    import torch.distributed.checkpoint as dcp

    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be ema or model, got {weights!r}")
    target = {weights: model.state_dict()}
    with local_folder(folder) as local_path:
        dcp.load(target, checkpoint_id=os.path.join(local_path, SHARDS_DIR))
    model.load_state_dict(target[weights])
    return model

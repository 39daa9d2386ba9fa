"""Release weights: a checkpoint's EMA and raw weights as safetensors beside a config.json, and reading them back.

    RELEASE/ema.safetensors     the EMA weights (what sampling uses by default)
    RELEASE/model.safetensors   the raw weights
    RELEASE/config.json         size, context_in_dim, vec_in_dim, vae_scaling_factor, kit (+ step, source)

Written at the end of a run (run_dir/release, by the driver from the last checkpoint) and on request
(jobs/export_weights.py). Safetensors hold tensors only, so a release loads without unpickling anything: the
one form in which to take weights from someone you do not trust (checkpoints unpickle DCP's metadata).
"""
from __future__ import annotations

import json

from torch import Tensor, nn

from pipelines import storage
from pipelines.errors import UserPathError, UserValueError

CONFIG_FILE = "config.json"
RELEASE_FORMAT = "fluxmusic-release-1"
WEIGHTS = ("ema", "model")
MODEL_KEYS = ("size", "context_in_dim", "vec_in_dim", "vae_scaling_factor", "kit")


def weights_file(weights: str) -> str:
    return f"{weights}.safetensors"


def weights_of_file(name: str) -> str:
    """"ema.safetensors" -> "ema": which weights a release's file holds."""
    weights = name.removesuffix(".safetensors")
    if weights not in WEIGHTS:
        raise UserValueError(f"{name}: a release's weights file is one of "
                             f"{', '.join(weights_file(w) for w in WEIGHTS)}")
    return weights


def is_release(uri: str) -> bool:
    return storage.exists(storage.join(uri, CONFIG_FILE)) and storage.exists(storage.join(uri, weights_file("ema")))


def release_config(model_config: dict, step: int | None, source: str) -> dict:
    config = {k: model_config[k] for k in MODEL_KEYS}
    return {**config, "format": RELEASE_FORMAT, "step": step, "source": source}


def read_release_config(uri: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(uri, CONFIG_FILE)))


def read_release_weights(uri: str, weights: str = "ema") -> dict[str, Tensor]:
    from safetensors.torch import load

    if weights not in WEIGHTS:
        raise UserValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    uri = storage.join(uri, weights_file(weights))
    if not storage.exists(uri):
        raise UserPathError(f"release {uri} does not exist (an incomplete release?); export it again with "
                            f"jobs/export_weights.py")
    return load(storage.read_bytes(uri))


def write_release(output: str, model_config: dict, weights: dict[str, dict[str, Tensor]], step: int | None,
                  source: str) -> dict:
    """{"ema": state dict, "model": state dict} -> OUTPUT/{ema,model}.safetensors + config.json; -> config."""
    from safetensors.torch import save

    config = release_config(model_config, step, source)
    for name, state_dict in weights.items():
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        storage.write_bytes_atomic(storage.join(output, weights_file(name)),
                                   save(tensors, metadata={"format": RELEASE_FORMAT, "weights": name}))
    storage.write_bytes_atomic(storage.join(output, CONFIG_FILE), json.dumps(config, indent=2).encode())
    return config


def model_from_release(uri: str, weights: str = "ema") -> tuple[nn.Module, dict]:
    from model import build_model

    info = read_release_config(uri)
    model = build_model(info["size"], context_in_dim=int(info["context_in_dim"]),
                        vec_in_dim=int(info["vec_in_dim"]), device="meta")
    try:
        model.load_state_dict(read_release_weights(uri, weights), assign=True)
    except RuntimeError as error:           # missing, unexpected or wrongly shaped tensors
        raise UserValueError(f"release {uri}: its {weights_file(weights)} does not fit the FluxMusic "
                             f"{info['size']} its {CONFIG_FILE} names ({str(error).splitlines()[0]}); "
                             f"export the release again from its run") from error
    return model.float().eval(), info

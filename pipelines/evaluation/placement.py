"""Moving a model holder (Generator, Evaluator, the encoder wrappers inside them) between devices as a whole.

The wrappers keep their torch modules as attributes next to a `device` field that their methods read, so moving
both keeps them consistent. Used to take preview/eval models off a training GPU between previews.
"""
from __future__ import annotations

import torch
from torch import nn


def _ours(value) -> bool:
    return type(value).__module__.startswith("pipelines.")


def move_to(holder, device: str | torch.device, _seen: set[int] | None = None):
    """Every nn.Module attribute of `holder` (and of the project objects it holds, recursively) to `device`,
    and every `device` attribute set to match; returns holder. HF tokenizers/feature extractors are left alone."""
    seen = _seen if _seen is not None else set()
    if id(holder) in seen:
        return holder
    seen.add(id(holder))
    for name, value in list(vars(holder).items()):
        if isinstance(value, nn.Module):
            setattr(holder, name, value.to(device))
        elif name == "device" and isinstance(value, (str, torch.device)):
            setattr(holder, name, str(device) if isinstance(value, str) else torch.device(device))
        elif _ours(value):
            move_to(value, device, seen)
        elif hasattr(value, "__self__") and _ours(value.__self__):      # a bound method of a wrapper
            move_to(value.__self__, device, seen)
    return holder


def module_devices(holder, _seen: set[int] | None = None) -> set[str]:
    """The device types of every parameter held (as move_to walks it): {"cpu"} after move_to(holder, "cpu")."""
    seen = _seen if _seen is not None else set()
    if id(holder) in seen:
        return set()
    seen.add(id(holder))
    found: set[str] = set()
    for value in vars(holder).values():
        if isinstance(value, nn.Module):
            found |= {p.device.type for p in value.parameters()}
        elif _ours(value):
            found |= module_devices(value, seen)
        elif hasattr(value, "__self__") and _ours(value.__self__):
            found |= module_devices(value.__self__, seen)
    return found

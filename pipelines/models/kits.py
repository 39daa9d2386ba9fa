"""Model kits: which pretrained model fills each role (vae, vocoder, t5, clap, llm), and loading them.

A kit is a YAML file (pipelines/models/kits/<name>.yaml, or any path) naming a `path` per role; where a path
points and how it is fetched (hub, local, s3://, pkg://, built://) is pipelines/models/paths.py. Every role is
then loaded here by one short `from_pretrained(local_path_or_hub_id, subfolder=...)` loader, the same for built
and real weights, and missing/unexpected checkpoint keys are printed (`print_load_warning`): a silent partial
load, like the CLAP text-tower pitfall, shows up in the log.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.models.paths import (  # noqa: F401 - re-exported: callers import these from here
    DTYPES,
    ROLES,
    KitError,
    ModelRef,
    ensure_built_kit,
    ensure_tiny_kit,
    kit_cache_dir,
)

KITS_DIR = Path(__file__).resolve().parent / "kits"


@dataclass
class Kit:
    name: str
    root: Path
    vae: ModelRef
    vocoder: ModelRef
    t5: ModelRef
    clap: ModelRef
    llm: ModelRef
    notes: dict[str, Any] = field(default_factory=dict)

    def refs(self) -> list[ModelRef]:
        return [getattr(self, role) for role in ROLES]

    def check(self, roles: tuple[str, ...] | list[str] = ROLES) -> "Kit":
        """Raise KitError naming every model of `roles` that cannot be loaded (config, weights, every shard,
        tokenizer, feature extractor: whatever its files lack); return self otherwise. Never downloads."""
        problems = [f"  {getattr(self, r).describe()}: {p}" for r in roles if (p := getattr(self, r).problem())]
        if problems:
            raise KitError(f"kit {self.name!r} ({self.root}): {len(problems)} model(s) missing:\n"
                           + "\n".join(problems))
        return self

    def models(self) -> dict[str, str]:
        """role -> path string, for the corpus manifest."""
        return {r.role: r.path + (f"/{r.subfolder}" if r.subfolder else "") for r in self.refs()}

    # ---- loaders: the one from_pretrained code path for built and real weights alike

    def load_vae(self, device: str | None = None):
        from diffusers import AutoencoderKL

        return _ready(_load(AutoencoderKL, self.vae, self.vae.location()), device)

    def load_vocoder(self, device: str | None = None):
        from transformers import SpeechT5HifiGan

        return _ready(_load(SpeechT5HifiGan, self.vocoder, self.vocoder.location()), device)

    def load_t5(self, device: str | None = None):
        """(encoder model, tokenizer). T5-family configs load as T5EncoderModel (no decoder); any other
        AutoModel whose last_hidden_state serves (BERT, MiniLM, ...) loads as AutoModel."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

        ref = self.t5
        where = ref.location()
        config = AutoConfig.from_pretrained(where, subfolder=ref.subfolder or "")
        cls = T5EncoderModel if config.model_type in ("t5", "mt5", "umt5") else AutoModel
        model = _ready(_load(cls, ref, where), device)
        return model, AutoTokenizer.from_pretrained(where, subfolder=ref.tokenizer_subfolder or ref.subfolder or "")

    def load_clap(self, device: str | None = None):
        """(ClapModel, tokenizer, feature extractor). Always the full ClapModel: ClapTextModel.from_pretrained
        on a ClapModel checkpoint silently leaves the text tower random (spec §3)."""
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        ref = self.clap
        where, sub = ref.location(), ref.subfolder or ""
        model = _ready(_load(ClapModel, ref, where), device)
        tokenizer = AutoTokenizer.from_pretrained(where, subfolder=ref.tokenizer_subfolder or sub)
        features = ClapFeatureExtractor.from_pretrained(where, subfolder=sub)
        return model, tokenizer, features

    def load_llm(self, device: str | None = None):
        """(causal LM, tokenizer with a chat template)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ref = self.llm
        where = ref.location()
        tok_kw = {"subfolder": ref.tokenizer_subfolder or ref.subfolder or ""}
        extra = {}
        if ref.gguf_file:
            extra["gguf_file"] = tok_kw["gguf_file"] = ref.gguf_file
        model = _ready(_load(AutoModelForCausalLM, ref, where, **extra), device)
        tokenizer = AutoTokenizer.from_pretrained(where, **tok_kw)
        if ref.chat_template and not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = ref.chat_template
        return model, tokenizer


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _load(cls, ref: ModelRef, where: str, **extra):
    """cls.from_pretrained(where, subfolder, dtype) with the loading info printed when keys did not match."""
    kw: dict[str, Any] = {"dtype": torch_dtype(ref.dtype), **extra}
    if ref.subfolder:
        kw["subfolder"] = ref.subfolder
    model, info = cls.from_pretrained(where, output_loading_info=True, **kw)
    print_load_warning(ref.describe(), info)
    return model


def print_load_warning(name: str, info: dict | None) -> list[str]:
    """Print (and return) the missing/unexpected/mismatched checkpoint keys of one load, as flux's util.py does."""
    lines = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in (info or {}).get(kind) or ())
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            lines.append(f"{name}: {len(keys)} {kind.replace('_', ' ')}: {shown}")
    for line in lines:
        print(f"[kit] {line}", flush=True)
    return lines


def _ready(model, device: str | None):
    model.eval().requires_grad_(False)
    return model.to(device) if device else model


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- parsing

def kit_path(name_or_path: str) -> Path:
    """A bare name -> pipelines/models/kits/<name>.yaml; anything else is a path to a kit YAML (or a folder holding kit.yaml)."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path or p.exists():
        return p / "kit.yaml" if p.is_dir() else p
    return KITS_DIR / f"{name_or_path}.yaml"


def load_kit(name_or_path: str) -> Kit:
    """Parse a kit YAML into a Kit (nothing is loaded or downloaded; call Kit.check() to verify)."""
    path = kit_path(name_or_path)
    if not path.exists():
        shipped = sorted(p.stem for p in KITS_DIR.glob("*.yaml"))
        raise KitError(f"kit {name_or_path!r} not found at {path}; shipped kits: {shipped}")
    data = yaml.safe_load(path.read_text()) or {}
    root = path.resolve().parent
    refs, problems = {}, []
    for role in ROLES:
        entry = data.get(role)
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not entry.get("path"):
            problems.append(f"role {role!r} needs a 'path'")
            continue
        unknown = set(entry) - {"path", "subfolder", "dtype", "tokenizer_subfolder", "gguf_file", "chat_template"}
        dtype = entry.get("dtype", "float32")
        if unknown:
            problems.append(f"role {role!r} has unknown keys {sorted(unknown)}")
        if dtype not in DTYPES:
            problems.append(f"role {role!r} dtype {dtype!r} is not one of {DTYPES}")
        refs[role] = ModelRef(role=role, path=str(entry["path"]), subfolder=entry.get("subfolder"), dtype=dtype,
                              tokenizer_subfolder=entry.get("tokenizer_subfolder"),
                              gguf_file=entry.get("gguf_file"), chat_template=entry.get("chat_template"),
                              kit_root=root)
    if problems:
        raise KitError(f"kit file {path}: " + "; ".join(problems))
    notes = {k: v for k, v in data.items() if k not in ROLES and k != "name"}
    return Kit(name=str(data.get("name", path.stem)), root=root, notes=notes, **refs)

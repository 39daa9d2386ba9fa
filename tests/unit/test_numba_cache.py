"""librosa's numba cache: two first users on a fresh node build it once, and a mixed pair left in a cache folder
(the SIGSEGV of numba issue 10128) no longer sinks the descriptors. Real compiles in child processes (~40 s)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Our way: prepare() says whether this process built the folder, then the descriptors run (loaded from it).
OURS = """
import numpy as np
from pipelines.corpus.numba_cache import cache_dir, prepare
print("built" if prepare(cache_dir()) else "found")
from pipelines.corpus.tags import signal_descriptors
noise = np.random.default_rng(1).standard_normal(163840).astype(np.float32) * 0.1
print(signal_descriptors(noise)["tempo_bpm"] > 0)
"""
# The old way: a plain librosa import, numba's cache wherever NUMBA_CACHE_DIR says.
PLAIN = """
import numpy as np, librosa
y = np.random.default_rng(1).standard_normal(163840).astype(np.float32) * 0.1
onset = librosa.onset.onset_strength(y=y, sr=16000, hop_length=256)
librosa.beat.beat_track(onset_envelope=onset, sr=16000, hop_length=256)
"""


def _start(code: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out + err


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A cache base built by two processes that started at the same moment on a fresh node."""
    base = tmp_path_factory.mktemp("numba-base")
    first, second = _start(OURS, FLUXMUSIC_NUMBA_CACHE=str(base)), _start(OURS, FLUXMUSIC_NUMBA_CACHE=str(base))
    results = [_finish(first), _finish(second)]
    assert [rc for rc, _ in results] == [0, 0], results
    assert sorted(out.split()[0] for _, out in results) == ["built", "found"], results    # one compile, one wait
    assert all("True" in out for _, out in results)
    return base


def test_two_first_users_build_one_proven_cache(built):
    folders = [p for p in built.iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "READY").exists()
    assert any(folders[0].rglob("*beat.__beat_track_dp*.nbc"))


def _mixed_pair(ready: Path, work: Path) -> Path:
    """The issue's recipe: A complete; B = A without the beat_track_dp files, compiled again; B's
    `beat.__beat_track_dp*` files copied into A. A process that loads A segfaults."""
    a, b = work / "A", work / "B"
    shutil.copytree(ready, a)
    shutil.copytree(ready, b)
    for f in b.rglob("*beat.__beat_track_dp*"):
        f.unlink()
    assert _finish(_start(PLAIN, NUMBA_CACHE_DIR=str(b)))[0] == 0
    for f in b.rglob("beat.__beat_track_dp*"):
        shutil.copy2(f, a / f.relative_to(b))
    return a


def test_a_mixed_pair_sinks_plain_librosa_but_not_the_descriptors(built, tmp_path):
    ready = next(p for p in built.iterdir() if p.is_dir())
    mixed = _mixed_pair(ready, tmp_path)
    rc, log = _finish(_start(PLAIN, NUMBA_CACHE_DIR=str(mixed)))
    assert rc == -signal.SIGSEGV, log                        # the control: the pair is really poisoned
    # The venv or the user's NUMBA_CACHE_DIR holding that pair is ignored: our folder is used.
    rc, log = _finish(_start(OURS, NUMBA_CACHE_DIR=str(mixed), FLUXMUSIC_NUMBA_CACHE=str(built)))
    assert rc == 0 and log.split()[:2] == ["found", "True"], log


def test_a_folder_left_unproven_is_rebuilt(built, tmp_path):
    """A folder without READY (a build that died) is deleted and built again, here from a poisoned copy."""
    ready = next(p for p in built.iterdir() if p.is_dir())
    base = tmp_path / "base"
    mixed = _mixed_pair(ready, tmp_path)
    shutil.copytree(mixed, base / ready.name)
    (base / ready.name / "READY").unlink()
    rc, log = _finish(_start(OURS, FLUXMUSIC_NUMBA_CACHE=str(base)))
    assert rc == 0 and log.split()[:2] == ["built", "True"], log

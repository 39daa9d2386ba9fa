"""Every local Ray listens on loopback only, however a job is started: even `python jobs/prepare_corpus.py` run
bare on a host with a LAN address, without the Makefile's or the tests' environment."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_loopback import LAN_ADDRESS, MUSIC, REPO, non_loopback


def test_workers_see_hf_hub_offline(ray_local):
    @ray_local.remote(num_cpus=0)
    def offline() -> str | None:
        return os.environ.get("HF_HUB_OFFLINE")

    assert ray_local.get(offline.remote()) == "1"


def _can_unshare() -> str:
    if not shutil.which("unshare") or not shutil.which("ip") or not shutil.which("ss"):
        return "needs unshare, ip (iproute2) and ss"
    done = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return "" if done.returncode == 0 else f"unshare -n is not permitted here: {done.stderr.decode().strip()}"


@pytest.mark.skipif(bool(_can_unshare()), reason=_can_unshare() or "-")
@pytest.mark.skipif(not os.path.exists(MUSIC), reason=f"needs the Debian sonic-pi-samples ({MUSIC})")
def test_job_run_bare_on_a_lan_host_listens_on_loopback_only(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    shutil.copyfile(MUSIC, music / "amen.flac")
    listeners, log = tmp_path / "listeners.txt", tmp_path / "job.log"
    # A network namespace that looks like a LAN host: its only non-loopback address and default route is
    # LAN_ADDRESS (on lo, so nothing leaves). The job runs as a user would: no RAY_* or HF_* variables.
    script = f"""
ip link set lo up && ip addr add {LAN_ADDRESS}/32 dev lo && ip route add default dev lo src {LAN_ADDRESS} || exit 97
"$PY" jobs/prepare_corpus.py --input "{music}" --output "{tmp_path / 'out'}" > "{log}" 2>&1 &
job=$!
while kill -0 $job 2>/dev/null; do ss -ltnpH >> "{listeners}"; sleep 0.3; done
wait $job
"""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "PY": sys.executable, "LANG": "C.UTF-8"}
    if "FLUXMUSIC_KIT_CACHE" in os.environ:
        env["FLUXMUSIC_KIT_CACHE"] = os.environ["FLUXMUSIC_KIT_CACHE"]
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], cwd=REPO, env=env, timeout=900)
    output = log.read_text() if log.exists() else ""
    assert done.returncode == 0, f"job failed ({done.returncode}):\n{output[-3000:]}"
    seen = listeners.read_text().splitlines() if listeners.exists() else []
    assert any("127.0.0.1" in line for line in seen), "Ray's listeners were seen"
    assert non_loopback(seen) == [], "listeners beyond loopback"

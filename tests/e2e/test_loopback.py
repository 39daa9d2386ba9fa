"""Every local Ray and training job stays on loopback, however it is started: even `python jobs/prepare_corpus.py`
and a 2-worker `jobs/train.py` run bare on a host with a LAN address, without the Makefile's or the tests'
environment; and a driver joining a cluster carries its HF_* variables to the workers."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_loopback import LAN_ADDRESS, MUSIC, REPO, non_loopback_sockets


DRIVER = """
import os, sys, ray
from pipelines import raylocal
if sys.argv[1] == "carried":
    raylocal.init_local_ray()                      # joins RAY_ADDRESS, carrying CARRIED_ENV in the runtime_env
else:
    ray.init(address=os.environ["RAY_ADDRESS"])    # the same join without it: the control
print("WORKER-SEES", ray.get(ray.remote(num_cpus=0)(lambda: os.environ.get("HF_HUB_OFFLINE")).remote()))
"""


def test_workers_of_a_joined_cluster_see_the_drivers_hf_hub_offline(tmp_path):
    """A driver that joins a running cluster (RAY_ADDRESS) with HF_HUB_OFFLINE=1, on a head whose raylet was
    started without it: its workers see the variable only through raylocal's runtime_env (CARRIED_ENV), the
    control (plain ray.init) shows they would not inherit it. The session's local Ray cannot show this: its
    raylet inherits the test process's environment."""
    from tests.raycluster import RayHead

    class BareHead(RayHead):          # the raylet (and so its workers) without any HF_* variable
        @property
        def env(self):
            return {k: v for k, v in super().env.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}

    head = BareHead(num_cpus=1).start()
    try:
        env = {**head.env, "RAY_ADDRESS": f"127.0.0.1:{head.gcs_port}", "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": str(REPO)}
        seen = {}
        for mode in ("control", "carried"):
            done = subprocess.run([sys.executable, "-c", DRIVER, mode], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
            seen[mode] = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("WORKER-SEES")]
    finally:
        head.stop()
    assert seen == {"control": ["None"], "carried": ["1"]}


def _can_unshare() -> str:
    if not shutil.which("unshare") or not shutil.which("ip") or not shutil.which("ss"):
        return "needs unshare, ip (iproute2) and ss"
    done = subprocess.run(["unshare", "-n", "-m", "true"], capture_output=True)
    return "" if done.returncode == 0 else f"unshare -n -m is not permitted here: {done.stderr.decode().strip()}"


@pytest.mark.skipif(bool(_can_unshare()), reason=_can_unshare() or "-")
@pytest.mark.skipif(not os.path.exists(MUSIC), reason=f"needs the Debian sonic-pi-samples ({MUSIC})")
def test_jobs_run_bare_on_a_lan_host_use_loopback_only(tmp_path):
    """prepare_corpus, then a 2-worker train.py (gloo: TCPStore, Gloo pair sockets), run bare on a host whose
    name resolves to its LAN address: every TCP and UDP socket, listening or connected, sampled every 0.1 s
    for both jobs, is on loopback."""
    from tests.corpus_fixture import write_tiny_corpus

    music = tmp_path / "music"
    music.mkdir()
    shutil.copyfile(MUSIC, music / "amen.flac")
    corpus = tmp_path / "corpus"             # 16 tiny clips: enough train rows for 2 workers (the amen is 7 s)
    write_tiny_corpus(corpus, n_clips=16)
    hosts = tmp_path / "hosts"               # the host name resolves to the LAN address, as on a LAN host
    hosts.write_text(f"127.0.0.1 localhost\n{LAN_ADDRESS} {socket.gethostname()}\n")
    sockets, log = tmp_path / "sockets.txt", tmp_path / "job.log"
    # A network namespace that looks like a LAN host: its only non-loopback address and default route is
    # LAN_ADDRESS (on lo, so nothing leaves). The jobs run as a user would: no RAY_* or HF_* variables.
    script = f"""
mount --bind "{hosts}" /etc/hosts || exit 96
ip link set lo up && ip addr add {LAN_ADDRESS}/32 dev lo && ip route add default dev lo src {LAN_ADDRESS} || exit 97
run() {{
  "$@" >> "{log}" 2>&1 &
  job=$!
  while kill -0 $job 2>/dev/null; do ss -tunapH >> "{sockets}"; sleep 0.1; done
  wait $job
}}
# its exit status is about the music (exit 1 when every input is rejected); here it must only run to its end
run "$PY" jobs/prepare_corpus.py --input "{music}" --output "{tmp_path / 'out'}"
[ -f "{tmp_path / 'out' / 'manifest.json'}" ] || exit 1
run "$PY" jobs/train.py --size tiny --data "{corpus}" --storage "{tmp_path / 'runs'}" --run-name ns --num-workers 2 \
  --cpus-per-worker 0.25 --global-batch-size 4 --micro-batch-size 2 --max-steps 2 --checkpoint-every 2 \
  --val-every 0 || exit 2
"""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "PY": sys.executable, "LANG": "C.UTF-8"}
    if "FLUXMUSIC_KIT_CACHE" in os.environ:
        env["FLUXMUSIC_KIT_CACHE"] = os.environ["FLUXMUSIC_KIT_CACHE"]
    done = subprocess.run(["unshare", "-n", "-m", "sh", "-c", script], cwd=REPO, env=env, timeout=900)
    output = log.read_text() if log.exists() else ""
    assert done.returncode == 0, f"job failed ({done.returncode}):\n{output[-3000:]}"
    assert (tmp_path / "runs" / "ns" / "checkpoint_step_00000002").is_dir(), output[-3000:]
    seen = sockets.read_text().splitlines() if sockets.exists() else []
    assert any("LISTEN" in line and "127.0.0.1" in line for line in seen), "Ray's listeners were seen"
    assert any("ESTAB" in line for line in seen), "connected sockets were seen"
    # Every socket bound or connected between our own processes is on loopback (Ray, the TCPStore, Gloo's pairs:
    # without the interface pinning they run 198.51.100.7 <-> 198.51.100.7). Attempts to reach another host are
    # kept apart: the driver's C++ libraries (pyarrow's AWS SDK, no Python socket call) probe the instance
    # metadata address and the resolver, which fail here; nothing else may be tried.
    outside = [line for line in seen if len(line.split()) > 5 and line.split()[5].rsplit(":", 1)[0].strip("[]")
               not in ("127.0.0.1", "::1", "::ffff:127.0.0.1", LAN_ADDRESS, "*", "0.0.0.0", "::")]
    assert non_loopback_sockets([line for line in seen if line not in outside]) == [], "sockets beyond loopback"
    nameservers = {line.split()[1] for line in Path("/etc/resolv.conf").read_text().splitlines()
                   if line.startswith("nameserver")}
    tried = {line.split()[5] for line in outside}
    assert tried <= {"169.254.169.254:80"} | {f"{n}:53" for n in nameservers}, f"other hosts tried: {tried}"

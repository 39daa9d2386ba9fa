"""A real Ray head started with `ray start --head --block` on loopback, stopped by its own PID only."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from pipelines.raylocal import LOOPBACK_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    def __init__(self, num_cpus: int = 4):
        self.num_cpus = num_cpus
        self.proc: subprocess.Popen | None = None
        self.temp_dir = tempfile.mkdtemp(prefix="rayh", dir="/tmp")   # short: Ray's socket paths have a length limit
        self.dashboard_port = free_port()
        self.gcs_port = free_port()
        # Every fixed default port too: another Ray on this machine (the tests' own local one) holds them.
        self.extra_ports = {flag: free_port() for flag in (
            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
            "--metrics-export-port", "--ray-client-server-port", "--object-manager-port", "--node-manager-port")}

    @property
    def env(self) -> dict[str, str]:
        bin_dir = os.path.dirname(sys.executable)
        return {**os.environ, **LOOPBACK_ENV, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 90.0) -> "RayHead":
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        self.proc = subprocess.Popen(
            [ray_cli, "start", "--head", "--block", f"--num-cpus={self.num_cpus}", "--node-ip-address=127.0.0.1",
             f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
             f"--temp-dir={self.temp_dir}", "--disable-usage-stats",
             *(f"{flag}={port}" for flag, port in self.extra_ports.items())],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"{self.address}/api/version", timeout=2)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"ray start exited with {self.proc.returncode}")
                time.sleep(1)
        self.stop()
        raise TimeoutError("the Ray head did not start")

    def submit(self, *entrypoint: str, working_dir: str, timeout: float = 600) -> subprocess.CompletedProcess:
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        command = [ray_cli, "job", "submit", "--address", self.address, "--working-dir", working_dir, "--", *entrypoint]
        for _ in range(30):
            done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
            # The dashboard answers before its job agent is up; Ray itself says to try again.
            if "No available agent to submit job" not in done.stderr + done.stdout:
                return done
            time.sleep(2)
        return done

    def stop(self) -> None:
        """SIGTERM to our `ray start --block` process group only: it takes down the processes it started."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

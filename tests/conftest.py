"""Shared fixtures. Every test talks only to 127.0.0.1: Ray is kept on loopback by its environment."""
from __future__ import annotations

import os

# Must be set before Ray starts: keep every Ray listener on 127.0.0.1, no token auth, no usage stats, no hub.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two OpenMP threads on two busy shared cores ran ~20x slower than one (measured): use one here."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One in-process local Ray for the whole session (starting one costs ~4 s). It starts after the S3
    server, so every Ray worker inherits the AWS variables that point at it, whichever test runs first."""
    import ray

    from pipelines.raylocal import init_local_ray

    # train_node: the node-type tag of ray_cluster.yaml's training nodes, which training tests request
    init_local_ray(num_cpus=4, resources={"train_node": 2})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (SeaweedFS on 127.0.0.1) with bucket `fluxmusic-test`; the standard AWS variables
    point at it for the whole session. Ray workers started before this fixture do not see them: pass
    `pipelines.storage.ray_worker_env()` as runtime_env env_vars (or request this fixture before `ray_local`)."""
    from tests.s3server import S3Server, restore_env, set_env

    server = S3Server().start()
    previous = set_env(server.env())
    try:
        server.bucket = "fluxmusic-test"
        server.create_bucket(server.bucket)
        yield server
    finally:
        restore_env(previous)
        server.cleanup()

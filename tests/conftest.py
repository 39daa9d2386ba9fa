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


@pytest.fixture(scope="session")
def ray_local():
    """One in-process local Ray for the whole session (starting one costs ~4 s)."""
    import ray

    from pipelines.raylocal import init_local_ray

    init_local_ray(num_cpus=4)
    yield ray
    ray.shutdown()

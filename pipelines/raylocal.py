"""Starting Ray the safe way on one machine: on loopback only, or joining the cluster we were submitted to."""
from __future__ import annotations

import os

LOOPBACK_ENV = {
    # Without this Ray listens on the machine's other address; with it every listener uses 127.0.0.1.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def init_local_ray(num_cpus: int | None = None, **kwargs) -> None:
    """Join the cluster this job was submitted to (RAY_ADDRESS), or start a private local one on loopback.

    Logical CPUs may exceed physical cores: on a 2-core machine whole-CPU actors otherwise starve the
    CPU tasks feeding them (environment notes, "Ray on 2 cores").
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
        return
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(address="local", num_cpus=num_cpus or max(4, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=True, **kwargs)

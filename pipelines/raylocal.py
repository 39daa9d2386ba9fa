"""Starting Ray the safe way on one machine: on loopback only, or joining the cluster we were submitted to."""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

LOOPBACK_ENV = {
    # Without this Ray listens on the machine's other address; with it every listener uses 127.0.0.1.
    # Ray reads it when it is imported (ray._private.ray_constants), so it must be set before that.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # No token auth: safe only because nothing listens beyond loopback (never set without the line above).
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}

# Variables of the driver that every worker of the job must see too (workers are started by the raylet,
# not by the driver, so they do not inherit the driver's environment).
CARRIED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE",
               "FLUXMUSIC_INJECT_CRASH")   # the test-only fault hook (pipelines/corpus/crashguard.py)


class UnsafeRayEnvironment(RuntimeError):
    """The environment asks for a local Ray beyond loopback with auth disabled."""


def _cluster_mode(value: str | None) -> bool:
    """Ray's own reading of RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER (unset on Linux: cluster mode, every interface)."""
    return value is None or value.lower() in ("1", "true")


def loopback_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The LOOPBACK_ENV variables not already set, for a local Ray on loopback only.

    A caller who set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 keeps it, but then auth is never disabled for them,
    and asking for both (listen on every interface, no auth) is refused: the one combination that opens a door.
    """
    updates = {k: v for k, v in LOOPBACK_ENV.items() if k not in environ}
    if _cluster_mode({**environ, **updates}["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]):
        updates.pop("RAY_AUTH_MODE", None)
        if environ.get("RAY_AUTH_MODE") == "disabled":
            raise UnsafeRayEnvironment(
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 (Ray listens beyond loopback) with RAY_AUTH_MODE=disabled: refusing "
                "to start a local Ray open to the network without auth. Unset one of them.")
    return updates


def carried_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The driver's CARRIED_ENV variables, for runtime_env={"env_vars": ...}."""
    return {k: environ[k] for k in CARRIED_ENV if k in environ}


def _with_env_vars(kwargs: dict, env_vars: dict[str, str]) -> dict:
    """ray.init kwargs with env_vars added to runtime_env (the caller's own values win)."""
    if not env_vars:
        return kwargs
    runtime_env = dict(kwargs.get("runtime_env") or {})
    runtime_env["env_vars"] = {**env_vars, **(runtime_env.get("env_vars") or {})}
    return {**kwargs, "runtime_env": runtime_env}


def init_local_ray(num_cpus: int | None = None, **kwargs) -> None:
    """Join the cluster this job was submitted to (RAY_ADDRESS), or start a private local one on loopback.

    Logical CPUs may exceed physical cores: on a 2-core machine whole-CPU actors otherwise starve the
    CPU tasks feeding them (environment notes, "Ray on 2 cores").
    """
    if os.environ.get("RAY_ADDRESS"):
        import ray

        if not ray.is_initialized():
            ray.init(address=os.environ["RAY_ADDRESS"], **_with_env_vars(kwargs, carried_env(os.environ)))
        return
    os.environ.update(loopback_environ(os.environ))
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:       # Ray was imported before the variable was set: correct what it read
        constants.ENABLE_RAY_CLUSTER = _cluster_mode(os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"])
    import ray

    if ray.is_initialized():
        return
    ray.init(address="local", num_cpus=num_cpus or max(4, os.cpu_count() or 1), include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=True, **_with_env_vars(kwargs, carried_env(os.environ)))

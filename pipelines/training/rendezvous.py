"""The process group's sockets stay on the address its ranks are given (127.0.0.1 locally).

torch.distributed's env:// rendezvous starts its TCPStore on every interface whatever host it is given; here
rank 0 binds a socket to (MASTER_ADDR, MASTER_PORT) itself and hands it to the TCPStore (`master_listen_fd`).
Gloo's pair sockets and NCCL's bootstrap pick their interface from the host name instead (on a LAN host: the
LAN address); when the rank-0 address is loopback (a local Ray) they are pinned to the loopback interface
(GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME), unless the user set them. On a real cluster nothing changes.
The rest is what Ray Train's own torch backend does: a backend by the resources, rank 0's address and a free
port, the torch environment variables on every worker, then init_process_group on all ranks at once.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from datetime import timedelta

from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend


def loopback_interface() -> str:
    """The name of the interface holding 127.0.0.1 ("lo" on Linux)."""
    try:
        import psutil

        for name, addresses in psutil.net_if_addrs().items():
            if any(a.family == socket.AF_INET and a.address == "127.0.0.1" for a in addresses):
                return name
    except ImportError:
        pass
    return "lo"


def interface_env(addr: str, environ: Mapping[str, str]) -> dict[str, str]:
    """GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME to set so the collectives' sockets use the loopback interface when
    the rank-0 address is loopback; nothing for any other address or a variable the user set."""
    if not ipaddress.ip_address(addr).is_loopback:
        return {}
    return {name: loopback_interface() for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if name not in environ}


def join_process_group(backend: str, addr: str, port: int, world_rank: int, world_size: int, timeout_s: int) -> None:
    """On one worker: rank 0 serves the store from a socket bound to addr only; every rank then joins."""
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    os.environ.update(interface_env(addr, os.environ))      # before any group: the async-save group reads them too
    if backend == "nccl":                  # as Ray Train does: fail on a hung collective instead of waiting
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    timeout = timedelta(seconds=timeout_s)
    listener = None
    if world_rank == 0:
        listener = socket.create_server((addr, port), family=socket.AF_INET6 if ":" in addr else socket.AF_INET)
    store = dist.TCPStore(addr, port, world_size, world_rank == 0, timeout=timeout, wait_for_workers=False,
                          master_listen_fd=listener.fileno() if listener else None)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


def _address_and_free_port() -> tuple[str, int]:
    """This worker's node address and a port free on it."""
    import ray

    addr = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET) as probe:
        probe.bind((addr, 0))
        return addr, probe.getsockname()[1]


class _BoundStoreBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config) -> None:
        import ray

        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        addr, port = worker_group.execute_single(0, _address_and_free_port)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, join_process_group, backend=backend, addr=addr, port=port,
                                                   world_rank=i, world_size=len(worker_group),
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])


class BoundStoreTorchConfig(TorchConfig):
    """TorchConfig whose process group's store listens on the rank-0 node's address only."""

    @property
    def backend_cls(self):
        return _BoundStoreBackend

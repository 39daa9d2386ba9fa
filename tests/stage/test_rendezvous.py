"""Training's rendezvous store listens on the address the ranks are given, not on every interface."""
from __future__ import annotations

import os
import socket

import torch.distributed as dist

from pipelines.training.rendezvous import join_process_group

LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}


def _own_listeners() -> list[str]:
    """Local addresses (hex, as /proc/net prints them) of this process's listening TCP sockets."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:        # LISTEN, ours
                    out.append(fields[1].split(":")[0])
    return out


def test_the_store_of_a_process_group_listens_on_loopback_only():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    join_process_group("gloo", "127.0.0.1", port, world_rank=0, world_size=1, timeout_s=60)
    try:
        assert dist.is_initialized() and dist.get_world_size() == 1
        listening = _own_listeners()
        assert listening and all(address in LOOPBACK for address in listening), listening
    finally:
        dist.destroy_process_group()

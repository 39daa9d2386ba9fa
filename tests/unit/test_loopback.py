"""Every local Ray listens on loopback only, however a job is started: even `python jobs/prepare_corpus.py` run
bare on a host with a LAN address, without the Makefile's or the tests' environment."""
from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from pipelines import raylocal

REPO = Path(__file__).resolve().parents[2]
LAN_ADDRESS = "198.51.100.7"        # TEST-NET-2: what a host's LAN address looks like, routed nowhere
MUSIC = "/usr/share/sonic-pi/samples/loop_amen_full.flac"


def test_loopback_environ_fills_only_what_is_unset():
    assert raylocal.loopback_environ({}) == raylocal.LOOPBACK_ENV
    assert raylocal.loopback_environ({"RAY_AUTH_MODE": "token"}) == {
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def test_auth_is_never_disabled_beyond_loopback():
    # Cluster mode asked for: kept, but auth is left on.
    assert "RAY_AUTH_MODE" not in raylocal.loopback_environ({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"})
    with pytest.raises(raylocal.UnsafeRayEnvironment, match="without auth"):
        raylocal.loopback_environ({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "true", "RAY_AUTH_MODE": "disabled"})


def test_driver_variables_reach_workers_through_runtime_env():
    env = raylocal.carried_env({"HF_HUB_OFFLINE": "1", "PATH": "/bin"})
    assert env == {"HF_HUB_OFFLINE": "1"}
    merged = raylocal._with_env_vars({"runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "0", "X": "1"}}}, env)
    assert merged["runtime_env"]["env_vars"] == {"HF_HUB_OFFLINE": "0", "X": "1"}, "the caller's own value wins"


def _is_loopback(endpoint: str) -> bool:
    host = endpoint.rsplit(":", 1)[0].strip("[]").split("%")[0]
    try:
        address = ipaddress.ip_address(host)
        return (getattr(address, "ipv4_mapped", None) or address).is_loopback      # [::ffff:127.0.0.1]
    except ValueError:            # "*" : every interface
        return False


def non_loopback_sockets(ss_lines: list[str]) -> list[str]:
    """The `ss -tunapH` lines (TCP and UDP, listening and connected) with a local address, or a peer address
    (when connected), outside 127.0.0.0/8 and ::1; wildcards count as outside."""
    bad = []
    for line in ss_lines:
        fields = line.split()
        if len(fields) < 6 or fields[0] not in ("tcp", "udp"):
            continue
        local, peer = fields[4], fields[5]
        connected = not peer.endswith(":*")
        if not _is_loopback(local) or (connected and not _is_loopback(peer)):
            bad.append(line.strip())
    return sorted(set(bad))


def test_non_loopback_sockets_parser():
    good = ['tcp LISTEN 0 128 127.0.0.1:6379 0.0.0.0:* users:(("gcs",pid=1,fd=3))',
            "tcp ESTAB 0 0 127.0.0.1:40000 127.0.0.1:6379 users:((\"raylet\",pid=2,fd=9))",
            "udp UNCONN 0 0 [::1]:5353 [::]:*", "tcp ESTAB 0 0 [::ffff:127.0.0.1]:1 [::ffff:127.0.0.1]:2"]
    bad = ["tcp LISTEN 0 128 0.0.0.0:22 0.0.0.0:*", f"tcp ESTAB 0 0 {LAN_ADDRESS}:41000 {LAN_ADDRESS}:42000",
           f"tcp ESTAB 0 0 127.0.0.1:41000 {LAN_ADDRESS}:42000", "udp UNCONN 0 0 *:9 *:*", "tcp LISTEN 0 1 [::]:80 [::]:*"]
    assert non_loopback_sockets(good + bad) == sorted(bad)


def test_collectives_are_pinned_to_loopback_only_for_a_loopback_rank_0():
    from pipelines.training.rendezvous import interface_env

    assert interface_env("127.0.0.1", {}) == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "lo"}
    assert interface_env("::1", {"GLOO_SOCKET_IFNAME": "eth1"}) == {"NCCL_SOCKET_IFNAME": "lo"}   # the user's wins
    assert interface_env("10.0.3.7", {}) == {} and interface_env(LAN_ADDRESS, {}) == {}          # real clusters


def non_loopback(ss_lines: list[str]) -> list[str]:
    """The `ss -ltnpH` lines whose local address is outside 127.0.0.0/8 and ::1 (wildcards included)."""
    bad = []
    for line in ss_lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        host = fields[3].rsplit(":", 1)[0].strip("[]").split("%")[0]
        try:
            address = ipaddress.ip_address(host)
            address = getattr(address, "ipv4_mapped", None) or address      # [::ffff:127.0.0.1]
            loop = address.is_loopback
        except ValueError:            # "*" : every interface
            loop = False
        if not loop:
            bad.append(line.strip())
    return sorted(set(bad))


def test_non_loopback_parser():
    assert non_loopback(["LISTEN 0 128 127.0.0.1:6379 0.0.0.0:* users:((\"gcs\"))", "LISTEN 0 1 [::ffff:127.0.0.1]:1 *:*",
                         "LISTEN 0 128 [::1]:80 [::]:*", "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*",
                         f"LISTEN 0 128 {LAN_ADDRESS}:8265 0.0.0.0:*", "LISTEN 0 128 *:9 *:*"]) == [
        "LISTEN 0 128 *:9 *:*", "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*", f"LISTEN 0 128 {LAN_ADDRESS}:8265 0.0.0.0:*"]

"""Root-only shell over ``ip`` and ``nft``: make the plan's namespaces, links and routes, or
sweep them away. Also lets this process open sockets inside a namespace (``inside``)."""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lab.plan import BACKBONE, DELAY_TABLE, PREFIX, TUN, WAN, Plan, Role

logger = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000  # linux/sched.h
NETNS_DIR = Path("/run/netns")
_libc = ctypes.CDLL(None, use_errno=True)


class LabError(Exception):
    """A lab step failed; the message says which command and why."""


def sh(*argv: str, check: bool = True, stdin: str | None = None) -> str:
    """Run one command; ``LabError`` with its stderr when it fails and ``check``."""
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def can_make_namespaces() -> str | None:
    """``None`` when this process can build the lab, else why not (for a clear skip)."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces)"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun for the WAN delay line"
    probe = PREFIX + "probe"
    try:
        sh("ip", "netns", "add", probe)
    except (LabError, OSError) as exc:
        return f"cannot make network namespaces: {exc}"
    sh("ip", "netns", "del", probe, check=False)
    return None


def lab_namespaces(prefix: str = PREFIX) -> list[str]:
    out = sh("ip", "netns", "list", check=False)
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


@contextmanager
def inside(netns: str) -> Iterator[None]:
    """Switch this thread into ``netns``: sockets opened meanwhile stay in it."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(NETNS_DIR / netns, os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        yield
    finally:
        _libc.setns(own, CLONE_NEWNET)
        os.close(own)
        os.close(target)


def sysctl(netns: str, **values: str) -> None:
    for key, value in values.items():
        sh("ip", "netns", "exec", netns, "sysctl", "-qw", f"{key.replace('__', '.')}={value}")


def ipn(netns: str, *args: str) -> None:
    sh("ip", "-n", netns, *args)


def _links(plan: Plan) -> None:
    wan = PREFIX + WAN
    for segment in plan.segments:
        ipn(wan, "link", "add", segment.name, "type", "bridge")
        ipn(wan, "addr", "add", f"{segment.gateway}/{segment.prefixlen}", "dev", segment.name)
        ipn(wan, "link", "set", segment.name, "up")
    for veth in plan.veths:
        ipn(veth.peer_ns, "link", "add", veth.peer, "type", "veth", "peer", "name",
            veth.ifname, "netns", veth.netns)
        ipn(veth.netns, "addr", "add", veth.address, "dev", veth.ifname)
        ipn(veth.netns, "link", "set", veth.ifname, "up")
        if veth.bridge is not None:
            ipn(veth.peer_ns, "link", "set", veth.peer, "master", veth.bridge)
        if veth.peer_address is not None:
            ipn(veth.peer_ns, "addr", "add", veth.peer_address, "dev", veth.peer)
        ipn(veth.peer_ns, "link", "set", veth.peer, "up")
    for route in plan.routes:
        ipn(route.netns, "route", "add", route.destination, "via", route.via)


def wan_policy(wan: str) -> None:
    """Forwarded traffic goes into the TUN unless it came out of it or stays on the backbone."""
    ipn(wan, "tuntap", "add", "dev", TUN, "mode", "tun")
    ipn(wan, "link", "set", TUN, "up")
    ipn(wan, "route", "add", "default", "dev", TUN, "table", str(DELAY_TABLE))
    ipn(wan, "rule", "add", "pref", "100", "iif", TUN, "lookup", "main")
    ipn(wan, "rule", "add", "pref", "110", "from", BACKBONE, "to", BACKBONE, "lookup", "main")
    ipn(wan, "rule", "add", "pref", "120", "iif", "lo", "lookup", "main")
    ipn(wan, "rule", "add", "pref", "200", "lookup", str(DELAY_TABLE))
    sysctl(wan, net__ipv4__ip_forward="1", net__ipv4__conf__all__rp_filter="0",
           net__ipv4__conf__default__rp_filter="0", **{f"net__ipv4__conf__{TUN}__rp_filter": "0"})


def build_network(plan: Plan, nft_ruleset: str, wan_ruleset: str) -> None:
    """Namespaces, bridges, veths, addresses, routes, forwarding, the WAN policy and filter,
    and NAT on the client routers."""
    for netns in plan.namespaces:
        sh("ip", "netns", "add", netns)
        ipn(netns, "link", "set", "lo", "up")
    _links(plan)
    routers = [h.netns for h in plan.by_role(Role.ROUTER)]
    for netns in routers:
        sysctl(netns, net__ipv4__ip_forward="1", net__ipv4__conf__all__rp_filter="0",
               net__ipv4__conf__default__rp_filter="0")
    wan_policy(PREFIX + WAN)
    sh("ip", "netns", "exec", PREFIX + WAN, "nft", "-f", "-", stdin=wan_ruleset)
    for host in plan.by_role(Role.ROUTER):
        if host.name != WAN:
            sh("ip", "netns", "exec", host.netns, "nft", "-f", "-", stdin=nft_ruleset)


def namespace_pids(netns: str) -> list[int]:
    out = sh("ip", "netns", "pids", netns, check=False)
    return [int(pid) for pid in out.split() if pid.isdigit()]


def remove_namespaces(names: Sequence[str]) -> list[str]:
    """Delete namespaces (their veths, bridges, TUN and nft tables go with them)."""
    failed = []
    existing = set(lab_namespaces(""))
    for netns in (name for name in names if name in existing):
        try:
            sh("ip", "netns", "del", netns)
        except LabError as exc:
            logger.warning("%s", exc)
            failed.append(netns)
    return failed

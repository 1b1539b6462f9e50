"""Hosts in network namespaces: each node of a test cluster gets a network
namespace of its own, with one address on a bridge that the test's host
(the root namespace) also sits on, so that nodes are as far apart as
machines on one switch: every connection between them crosses a veth pair
and the bridge, and no node shares another's loopback.

    net = Network.create(4)        # needs root and `ip` (iproute2)
    net.hosts[0].ns, net.hosts[0].addr      # "jmig-1234-0-0", "198.18.42.2"
    net.close()                    # deletes the namespaces and the bridge

Addresses come from 198.18.0.0/15, the block set aside for benchmarking
networks (RFC 2544): never an address of a real machine.  The bridge gets
.1 (the test process, jmigctl and the link proxies use it), host i gets
.(i+2).  Names carry the creating process's pid so that runs side by side
do not meet, and existing() finds what any run left behind."""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess

import attrs

PREFIX = "jmig-"
_serial = itertools.count()

# Every namespace and bridge created by this process and not yet deleted,
# so that a run can check it left none behind.
LIVE: set[str] = set()


class NetnsUnavailable(Exception):
    """Namespaces cannot be made here (not root, no `ip`); says why."""


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (this run is not root)"
    if shutil.which("ip") is None:
        return "network namespaces need the `ip` command (iproute2), not found"
    return None


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")


def _used_subnets() -> set[int]:
    r = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, timeout=30)
    used = set()
    for word in r.stdout.split():
        if word.startswith("198.18."):
            used.add(int(word.split(".")[2]))
    return used


@attrs.define
class Host:
    ns: str           # the namespace's name
    addr: str         # its address on the bridge


@attrs.define
class Network:
    bridge: str
    gateway: str                  # the root namespace's address on the bridge
    hosts: list[Host]
    extra: int = 0                # addresses added to the bridge by add_address

    @classmethod
    def create(cls, n: int) -> "Network":
        why = unavailable()
        if why:
            raise NetnsUnavailable(why)
        pid, k = os.getpid(), next(_serial)
        used = _used_subnets()
        third = next((x for x in itertools.chain(range(pid % 250, 250), range(0, pid % 250))
                      if x not in used), None)
        if third is None:
            raise NetnsUnavailable("every 198.18.x.0/24 is in use on this machine")
        net = cls(bridge=f"jmbr{pid % 100000}x{k}"[:15], gateway=f"198.18.{third}.1", hosts=[])
        try:
            _ip("link", "add", net.bridge, "type", "bridge")
            LIVE.add(net.bridge)
            _ip("addr", "add", f"{net.gateway}/24", "dev", net.bridge)
            _ip("link", "set", net.bridge, "up")
            for i in range(n):
                net.add_host(f"198.18.{third}.{i + 2}", f"{PREFIX}{pid}-{k}-{i}",
                             f"jmv{pid % 100000}x{k}x{i}"[:15])
        except BaseException:
            net.close()
            raise
        return net

    def add_host(self, addr: str, ns: str, veth: str) -> Host:
        _ip("netns", "add", ns)
        LIVE.add(ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        host = Host(ns, addr)
        self.hosts.append(host)
        return host

    def add_address(self) -> str:
        """One more address of the test's host on the bridge (.200 on)."""
        prefix = self.gateway.rsplit(".", 1)[0]
        addr = f"{prefix}.{200 + self.extra}"
        if self.extra >= 50:
            raise NetnsUnavailable("a network has at most 50 extra addresses")
        _ip("addr", "add", f"{addr}/24", "dev", self.bridge)
        self.extra += 1
        return addr

    def close(self) -> None:
        """Delete the namespaces (their veth pairs go with them) and the bridge."""
        for h in self.hosts:
            delete(h.ns)
        delete(self.bridge)
        self.hosts = []


def delete(name: str) -> None:
    """Delete a namespace or bridge of ours by name."""
    if name.startswith(PREFIX):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
    else:
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)
    LIVE.discard(name)


def existing() -> set[str]:
    """Namespaces and bridges of this module on the machine now (any run's)."""
    out = set()
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    out |= {line.split()[0] for line in r.stdout.splitlines() if line.startswith(PREFIX)}
    r = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"], capture_output=True,
                       text=True, timeout=30)
    out |= {line.split(":")[1].strip() for line in r.stdout.splitlines()
            if line.split(":")[1].strip().startswith("jmbr")}
    return out


def left_behind() -> set[str]:
    """What this process created and is still on the machine."""
    return LIVE & existing() if LIVE else set()

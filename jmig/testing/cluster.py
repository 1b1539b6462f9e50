"""A cluster of real jmig-node processes for a test, and the links between
them: each node on an address of its own (a loopback address, or a host in
a network namespace), one fresh cluster secret, data directories under the
test's directory, and everything it started stopped by close().

    with Cluster(tmp_path) as c:          # or the jmig_cluster fixture
        a, b = c.start("a"), c.start("b")
        env = c.spawn(a, "memtest", "1024", "256")
        c.migrate(a, env, b, "--method", "pgfault")
        b.wait_for_console(r"memtest: pass \\d+ ok")

Links put a proxy between two nodes (jmig.testing.proxy): migrations
`via=` a link cross it, and the pgfault back channel (the destination
fetching pages from the origin) crosses it the other way.
"""
from __future__ import annotations

import itertools
import json
import os
import secrets
import socket
from pathlib import Path

from .netns import Network
from .process import PORT, NodeError, NodeProcess
from .proxy import Proxy, ProxyThread

_addrs = itertools.count(10 + (os.getpid() % 97) * 600)

# Under coverage (mutation testing's selection run, tests/mutation), the
# nodes measure themselves and write their data when they exit: close()
# shuts them down (SIGTERM) instead of killing them.
_MEASURED = "COVERAGE_PROCESS_START" in os.environ


def next_host(port: int = PORT) -> str:
    """A loopback address no other cluster of this process has used and
    whose ports port..port+3 are free.  Each process takes its own stretch
    of 127.0.0.0/8 (from its pid), so that test runs side by side on one
    machine do not meet."""
    while True:
        n = next(_addrs)
        host = f"127.0.{n // 250 + 10}.{n % 250 + 2}"
        if _free(host, port):
            return host


def _free(host: str, port: int) -> bool:
    try:
        for p in range(port, port + 4):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, p))
    except OSError:
        return False
    return True


def make_secret(tmp: Path) -> Path:
    """A fresh cluster secret in tmp/secret, mode 0600."""
    p = tmp / "secret"
    p.write_text(secrets.token_hex(32) + "\n")
    p.chmod(0o600)
    return p


class CtlError(AssertionError):
    """jmigctl exited non-zero where a test expected success."""


class Link:
    """A proxied path between two nodes, src -> dst: `addr` stands for dst
    (all four ports) and `back` for src, so a migration from src to `addr`
    with its page server at `back` crosses the link both ways.  Controls
    apply to both directions: cut(), blackhole() / restore(), down() / up(),
    delay(seconds), rate(bytes per second)."""

    def __init__(self, src: NodeProcess, dst: NodeProcess, fwd_host: str, back_host: str):
        self.src, self.dst = src, dst
        self._fwd = ProxyThread(Proxy(fwd_host, dst.port, dst.reach, dst.port, count=4))
        self._back = ProxyThread(Proxy(back_host, src.port, src.reach, src.port, count=4))

    def start(self) -> "Link":
        self._fwd.start()
        try:
            self._back.start()
        except BaseException:
            self._fwd.close()
            raise
        return self

    @property
    def addr(self) -> str:
        """HOST:P that reaches dst across the link."""
        return self._fwd.proxy.addr

    @property
    def back(self) -> str:
        """The host that reaches src across the link (migrate's
        `--page-server`: the destination fetches pages through it)."""
        return self._back.proxy.listen_host

    @property
    def proxies(self) -> tuple[Proxy, Proxy]:
        return self._fwd.proxy, self._back.proxy

    def _each(self, method: str, *args) -> None:
        for t in (self._fwd, self._back):
            t.call(getattr(t.proxy, method), *args)

    def cut(self) -> None:
        """Close every connection across the link now (new ones may follow)."""
        self._each("cut")

    def blackhole(self) -> None:
        """Forward nothing, close nothing: connections hang."""
        self._each("pause")

    def restore(self) -> None:
        """Forward again (after blackhole, or held bytes)."""
        self._each("resume")

    def down(self) -> None:
        """Cut everything and refuse new connections until up()."""
        self._each("down")

    def up(self) -> None:
        self._each("up")

    def delay(self, seconds: float) -> None:
        """One-way latency added to every byte, both directions."""
        for t in (self._fwd, self._back):
            t.call(setattr, t.proxy, "delay", seconds)

    def rate(self, bytes_per_second: float | None) -> None:
        """At most that many bytes/s per direction of each connection."""
        for t in (self._fwd, self._back):
            t.call(setattr, t.proxy, "rate", bytes_per_second)

    def bytes(self) -> dict[str, int]:
        """Bytes forwarded so far: to dst ("fwd") and to src ("back")."""
        return {"fwd": sum(k.c2s for k in self._fwd.proxy.links),
                "back": sum(k.c2s for k in self._back.proxy.links)}

    def close(self) -> None:
        self._fwd.close()
        self._back.close()


class Cluster:
    """Real jmig-node processes sharing one secret.  With netns=True each
    node is a host of its own (jmig.testing.netns) bound to every address
    of its namespace; otherwise each binds a loopback address of its own."""

    def __init__(self, tmp: Path, netns: bool = False, hosts: int = 8):
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.secret_file = make_secret(self.tmp)
        self.nodes: list[NodeProcess] = []
        self.links: list[Link] = []
        self.net = Network.create(hosts) if netns else None
        self._free_hosts = list(self.net.hosts) if self.net else []

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getitem__(self, name: str) -> NodeProcess:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named {name!r} in this cluster")

    # -- nodes ----------------------------------------------------------------------
    def start(self, name: str | None = None, *args, env=None, wait: bool = True,
              host: str | None = None, memory: str | None = None,
              cpus: int | None = None, stdout=None) -> NodeProcess:
        """Start a node (named a, b, c, ... by default) with jmig-node's
        extra `args`; with wait, return once it accepts connections."""
        name = name or "abcdefghijklmnopqrstuvwxyz"[len(self.nodes)]
        extra = list(args)
        if memory is not None:
            extra += ["--memory", str(memory)]
        if cpus is not None:
            extra += ["--cpus", str(cpus)]
        if self.net is not None:
            if not self._free_hosts:
                raise NodeError(f"this cluster has {len(self.net.hosts)} hosts; all are used")
            h = self._free_hosts.pop(0)
            node = NodeProcess(self.tmp, self.secret_file, name, extra, env=env,
                               host="0.0.0.0", port=PORT, netns=h.ns, reach=h.addr)
        else:
            node = NodeProcess(self.tmp, self.secret_file, name, extra, env=env,
                               host=host or next_host(), port=PORT)
        self.nodes.append(node)
        return node.start(wait=wait, stdout=stdout)

    def start_many(self, n: int, args=(), **kw) -> list[NodeProcess]:
        """n nodes started side by side, each with jmig-node's extra args;
        returns once all accept connections."""
        nodes = [self.start(None, *args, wait=False, **kw) for _ in range(n)]
        for node in nodes:
            node.wait_listening()
        return nodes

    # -- jmigctl ----------------------------------------------------------------------
    def ctl(self, node: NodeProcess, *argv, check: bool = True) -> tuple[int, str, str]:
        """jmigctl argv against node: (exit code, stdout, stderr); with
        check, CtlError unless it exits 0."""
        code, out, err = node.ctl(*argv)
        if check and code != 0:
            raise CtlError(f"jmigctl {' '.join(map(str, argv))} on {node.name} exited "
                           f"{code}: {out}{err}")
        return code, out, err

    def ctl_json(self, node: NodeProcess, *argv):
        """jmigctl --json argv against node; its parsed result."""
        _, out, _ = self.ctl(node, argv[0], "--json", *argv[1:])
        return json.loads(out)

    def spawn(self, node: NodeProcess, program: str, *args) -> int:
        """Start a bundled program on node; its envid."""
        return self.ctl_json(node, "spawn", program, *args)["new_envid"]

    def ps(self, node: NodeProcess) -> list[dict]:
        """The node's envs, as `jmigctl ps --json` gives them."""
        return self.ctl_json(node, "ps")

    def migrate(self, node: NodeProcess, envid: int, to: "NodeProcess | Link", *args) -> dict:
        """Migrate envid from node to another node (or across a Link to its
        far end, page server included); jmigctl migrate's result."""
        argv = ["migrate", str(envid), "--to", to.addr, *args]
        if isinstance(to, Link) and "--page-server" not in args and "pgfault" in args:
            argv += ["--page-server", to.back]
        return self.ctl_json(node, *argv)

    def jobs(self, node: NodeProcess) -> list[dict]:
        """Jobs in flight and recently finished (`jmigctl jobs --json`)."""
        return self.ctl_json(node, "jobs")

    # -- links ------------------------------------------------------------------------
    def link(self, src: NodeProcess, dst: NodeProcess) -> Link:
        """A proxied link from src to dst (see Link)."""
        if self.net is not None:
            hosts = self.net.add_address(), self.net.add_address()
        else:
            hosts = next_host(), next_host()
        link = Link(src, dst, *hosts)
        self.links.append(link)
        return link.start()

    # -- the end ------------------------------------------------------------------------
    def close(self) -> None:
        """Kill every node and link this cluster started, and its namespaces."""
        for link in self.links:
            link.close()
        for node in self.nodes:
            if _MEASURED:
                node.stop(grace=3.0)
            node.kill()
        if self.net is not None:
            self.net.close()

    def report(self, lines: int = 40) -> list[tuple[str, str]]:
        """(title, text) sections with each node's last console and log
        lines, for a failing test's report."""
        out = []
        for n in self.nodes:
            out.append((f"jmig node {n.name} ({n.addr}) console",
                        "\n".join(n.console().splitlines()[-lines:])))
            out.append((f"jmig node {n.name} ({n.addr}) log",
                        "\n".join(n.log().splitlines()[-lines:])))
        return out

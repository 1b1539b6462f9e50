"""Membership: the nodes of a cluster know each other and each other's load.

A node started with `--join HOST:P` (or `--peers FILE`) asks that member
for a heartbeat; the answer lists the members it knows, and the node then
exchanges heartbeats with each of them.  Every member asks every other
one every HEARTBEAT_SECONDS over its control port (authenticated, one
kept connection per peer):

    cluster_heartbeat {from: {addr, name, incarnation, load}, members: [[addr, incarnation]]}
      -> {from: ..., members: [...]}      (the answering node's own)

so news of a member spreads in one heartbeat, and each pair hears of each
other from both directions.  A member not heard from for FAIL_SECONDS is
`failed` (so a crash, a SIGSTOP or a cut link is seen within FAIL_SECONDS
plus one heartbeat); it is still asked, every RETRY_FAILED_SECONDS, and
answers again as `alive` (a restarted node, with a new incarnation, too).
A node that stops cleanly sends cluster_leave to every member, which then
forgets it; a failed member is forgotten after FORGET_FAILED_SECONDS.
Only alive members are passed on to others, so a failed or departed node
is not brought back by gossip.

The load a heartbeat carries (Node.load): envs, runnable envs (those that
want the CPU), the share of wall time the node's kernel ran in the last
heartbeat interval, instructions per second, free and total memory, jobs
in flight, cpus, and whether it is cordoned, balancing or stopping.
"""
from __future__ import annotations

import random
import time

import attrs
import trio

from ..errors import Error
from ..proto.control import RemoteError
from ..proto.frames import ProtocolError
from ..proto.wire import ConnectionClosed, parse_node

HEARTBEAT_SECONDS = 0.5            # every member asks every other one this often
FAIL_SECONDS = 3.0                 # not heard from for this long: failed
RETRY_FAILED_SECONDS = 2.0         # a failed member is asked again this often
FORGET_FAILED_SECONDS = 600.0      # ... and forgotten after this long
CALL_SECONDS = 2.0                 # one heartbeat: connect and answer
LEFT_KEPT_SECONDS = 600.0          # a departed (addr, incarnation) is ignored this long
MAX_MEMBERS = 256                  # the most members a node keeps (gossip beyond is dropped)
PEERS_FILE_BYTES = 64 << 10        # --peers FILE is read up to this size

NODE_IDS = 8                       # --node-id 0..7
SLOTS_PER_NODE = 1024 // NODE_IDS  # each node id's share of envs[] (NENV = 1024)

ALIVE, FAILED, JOINING = "alive", "failed", "joining"
LOAD_KEYS = {"envs": int, "runnable": int, "cpu": float, "ips": float, "free": int,
             "total": int, "jobs": int, "cpus": int, "cordoned": bool, "balance": bool,
             "stopping": bool}


class PeersFileError(Exception):
    pass


def slots_of(node_id: int | None) -> range | None:
    """The env slots a node with this --node-id gives new envs: slots
    K*128 .. K*128+127, so that env ids are unique in a cluster whose nodes
    have distinct ids (docs/kernel.md); None (all 1024) without one."""
    if node_id is None:
        return None
    return range(node_id * SLOTS_PER_NODE, (node_id + 1) * SLOTS_PER_NODE)


def read_peers_file(path) -> list[str]:
    """HOST:P per line ('#' starts a comment), at most PEERS_FILE_BYTES."""
    try:
        with open(path, "rb") as f:
            data = f.read(PEERS_FILE_BYTES + 1)
    except OSError as exc:
        raise PeersFileError(f"cannot read --peers {path}: {exc.strerror or exc}") from None
    if len(data) > PEERS_FILE_BYTES:
        raise PeersFileError(f"--peers {path} is larger than {PEERS_FILE_BYTES} bytes")
    out = []
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            parse_node(line)
        except ValueError as exc:
            raise PeersFileError(f"--peers {path}, line {n}: {exc}") from None
        out.append(line)
    return out


def clean_load(load) -> dict:
    """A peer's load as this node keeps it: known keys of the right types only."""
    out = {}
    if isinstance(load, dict):
        for k, typ in LOAD_KEYS.items():
            v = load.get(k)
            if typ is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if isinstance(v, typ) and (typ is bool or not isinstance(v, bool)):
                out[k] = v
    return out


@attrs.define(eq=False)
class Member:
    """Another node, as this one knows it."""
    addr: str                          # HOST:P, where it is reached
    name: str = ""
    incarnation: str = ""              # its process; a restart is another
    node_id: int | None = None         # its --node-id
    state: str = JOINING
    load: dict = attrs.Factory(dict)
    heard: float | None = None         # trio clock of the last word from it
    since: float = 0.0                 # trio clock of the last change of state
    error: str = ""                    # why the last heartbeat to it failed
    sent: list = attrs.Factory(list)   # jobs moving envs there, not yet in its load (balance)

    def view(self, now: float) -> dict:
        return {"addr": self.addr, "name": self.name, "incarnation": self.incarnation,
                "node_id": self.node_id, "state": self.state, "load": dict(self.load), "self": False,
                "heard_s": None if self.heard is None else round(now - self.heard, 3),
                "since_s": round(now - self.since, 3), "error": self.error}


class Membership:
    def __init__(self, node, seeds=()):
        self.node = node
        self.seeds = list(seeds)
        self.members: dict[str, Member] = {}
        self.left: dict[tuple[str, str], float] = {}   # (addr, incarnation) -> when it left
        self._nursery: trio.Nursery | None = None
        self.log = node.log

    # -- what others see of this node ---------------------------------------------------
    def me(self, fs=None) -> dict:
        node = self.node
        host = node.advertised_host(fs) if fs is not None else node.cfg.host
        return {"addr": f"{host}:{node.cfg.port or node.ports.get('normal', 0)}",
                "name": node.name, "incarnation": node.incarnation,
                "node_id": node.cfg.node_id, "load": node.load()}

    def gossip(self) -> list[list[str]]:
        return [[m.addr, m.incarnation] for m in self.members.values()
                if m.state == ALIVE and m.incarnation]

    # -- running ----------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for addr in self.seeds:
                self.add(addr)
            nursery.start_soon(self._sweep)
            task_status.started()
            await trio.sleep_forever()

    def add(self, addr: str, incarnation: str = "") -> Member | None:
        """Know of a member (start asking it), unless it is this node, left
        cleanly, or there are MAX_MEMBERS already."""
        try:
            host, port = parse_node(addr)
        except ValueError:
            return None
        if incarnation == self.node.incarnation or self.node.is_me(host, port):
            return None
        if incarnation and (addr, incarnation) in self.left:
            return None
        m = self.members.get(addr)
        if m is None:
            if len(self.members) >= MAX_MEMBERS or self._nursery is None:
                return None
            m = Member(addr, incarnation=incarnation, since=trio.current_time())
            self.members[addr] = m
            self.log.info("member known", member=addr)
            self._nursery.start_soon(self._peer, m)
        return m

    def _heard(self, m: Member, info: dict) -> None:
        """A word from m (its heartbeat, or its answer to ours)."""
        now = trio.current_time()
        inc = info.get("incarnation") if isinstance(info.get("incarnation"), str) else ""
        name = info.get("name") if isinstance(info.get("name"), str) else ""
        if m.incarnation and inc and inc != m.incarnation:
            self.log.info("member restarted", member=m.addr, name=name)
        if m.state != ALIVE:
            self.log.info("member alive", member=m.addr, name=name,
                          was=m.state)
            m.state, m.since = ALIVE, now
        m.incarnation, m.name = inc or m.incarnation, name[:256] or m.name
        nid = info.get("node_id")
        nid = nid if isinstance(nid, int) and not isinstance(nid, bool) else None
        if nid is not None and nid != m.node_id and nid == self.node.cfg.node_id:
            self.log.warning("member has this node's --node-id: env ids may clash",
                             member=m.addr, node_id=nid)
        m.node_id = nid
        m.load = clean_load(info.get("load"))
        m.heard, m.error = now, ""
        # The load was taken as it answered: envs that arrived are in it.
        m.sent = [j for j in m.sent if not j.done.is_set()]

    def _merge(self, members) -> None:
        if not isinstance(members, list):
            return
        for item in members[:MAX_MEMBERS]:
            if (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], str) and len(item[0]) <= 300):
                self.add(item[0], item[1])

    async def _peer(self, m: Member) -> None:
        """Ask m for a heartbeat every HEARTBEAT_SECONDS (a failed one every
        RETRY_FAILED_SECONDS) until it is forgotten."""
        peers = self.node.peers
        try:
            while self.members.get(m.addr) is m:
                try:
                    async with peers.client(m.addr, CALL_SECONDS) as c:
                        reply = await c.request("cluster_heartbeat", {
                            "from": self.me(c.fs), "members": self.gossip()})
                    if self.members.get(m.addr) is not m:
                        break
                    if isinstance(reply, dict) and isinstance(reply.get("from"), dict):
                        self._heard(m, reply["from"])
                        self._merge(reply.get("members"))
                except (OSError, Error, ProtocolError, RemoteError, ConnectionClosed,
                        trio.TooSlowError) as exc:
                    m.error = getattr(exc, "message", "") or str(exc) or type(exc).__name__
                await trio.sleep((RETRY_FAILED_SECONDS if m.state == FAILED
                                  else HEARTBEAT_SECONDS) * random.uniform(0.9, 1.1))
        finally:
            if m.addr not in self.members:
                await peers.forget(m.addr)

    async def _sweep(self) -> None:
        """Mark members not heard from for FAIL_SECONDS failed; forget
        failed ones after FORGET_FAILED_SECONDS; sample this node's load."""
        while True:
            await trio.sleep(HEARTBEAT_SECONDS / 2)
            self.node.meter.sample()
            now = trio.current_time()
            for m in list(self.members.values()):
                last = m.heard if m.heard is not None else m.since
                if m.state != FAILED and now - last > FAIL_SECONDS:
                    m.state, m.since = FAILED, now
                    self.log.warning("member failed", member=m.addr, name=m.name,
                                     silent_s=round(now - last, 2), error=m.error)
                elif m.state == FAILED and now - m.since > FORGET_FAILED_SECONDS \
                        and m.addr not in self.seeds:
                    del self.members[m.addr]
                    self.log.info("member forgotten", member=m.addr, name=m.name)
            wall = time.monotonic()
            for key, t in list(self.left.items()):
                if wall - t > LEFT_KEPT_SECONDS:
                    del self.left[key]

    # -- requests from other members ------------------------------------------------------
    def on_heartbeat(self, args: dict, fs) -> dict:
        sender = args.get("from")
        if not isinstance(sender, dict) or not isinstance(sender.get("addr"), str):
            raise Error("cluster_heartbeat needs from: {addr, name, incarnation, load}",
                        code="bad-request")
        try:
            parse_node(sender["addr"])
        except ValueError as exc:
            raise Error(str(exc), code="bad-request") from None
        m = self.add(sender["addr"], sender.get("incarnation") or "")
        if m is not None:
            self._heard(m, sender)
        self._merge(args.get("members"))
        return {"from": self.me(fs), "members": self.gossip()}

    def on_leave(self, args: dict) -> dict:
        addr, inc = args.get("addr"), args.get("incarnation")
        if not isinstance(addr, str) or not isinstance(inc, str):
            raise Error("cluster_leave needs addr and incarnation", code="bad-request")
        m = self.members.get(addr)
        self.left[(addr, inc)] = time.monotonic()
        if m is not None and m.incarnation in ("", inc):
            del self.members[addr]
            self.log.info("member left", member=addr, name=m.name)
        return {}

    async def leave(self) -> None:
        """Tell every member this node leaves (at most CALL_SECONDS)."""
        me = self.me()

        async def tell(m: Member) -> None:
            try:
                await self.node.peers.call(m.addr, "cluster_leave", {
                    "addr": me["addr"], "incarnation": me["incarnation"]}, CALL_SECONDS)
            except (OSError, Error, ProtocolError, RemoteError, ConnectionClosed,
                    trio.TooSlowError):
                pass
        async with trio.open_nursery() as nursery:
            for m in list(self.members.values()):
                if m.state == ALIVE:
                    nursery.start_soon(tell, m)
        self.members.clear()

    # -- facts ----------------------------------------------------------------------------
    def alive(self) -> list[Member]:
        return [m for m in self.members.values() if m.state == ALIVE]

    def view(self) -> list[dict]:
        """This node first, then the members by address."""
        now = trio.current_time()
        me = {**self.me(), "state": "alive", "self": True, "heard_s": 0.0, "since_s": 0.0,
              "error": ""}
        if self.node.stopping:
            me["state"] = "leaving"
        return [me] + [m.view(now) for m in sorted(self.members.values(), key=lambda m: m.addr)]


class LoadMeter:
    """This node's kernel CPU share and instruction rate over the last
    sample interval (sampled every HEARTBEAT_SECONDS / 2)."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.busy = 0.0                    # seconds the kernel ran (the kernel task adds)
        self.cpu = 0.0                     # share of wall time, 0..1
        self.ips = 0.0                     # guest instructions per second
        self._last = (time.monotonic(), 0.0, kernel.instructions)

    def sample(self) -> None:
        t0, busy0, n0 = self._last
        now = time.monotonic()
        if now - t0 < 0.05:
            return
        self.cpu = min(1.0, max(0.0, (self.busy - busy0) / (now - t0)))
        self.ips = (self.kernel.instructions - n0) / (now - t0)
        self._last = (now, self.busy, self.kernel.instructions)

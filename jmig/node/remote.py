"""Envs on other nodes: where they are, and IPC to them.

Location.  A node that gives an env away to another node (a migration
decided go, not --keep) keeps a forwarding pointer to where it went
(`where`), and tells its kernel the env lives elsewhere now (so that a
send from here goes out instead of to a ghost: a pgfault origin's copy).
To find an env, a node tries, in order: its pointer or the last answer it
got; the pointer the node there has, if the env moved on (at most
MAX_HOPS); and then every alive member at once (`env_where`), which
finds the env wherever it is, even when nodes it passed through have
shut down.  Answers are cached in `where`; a wrong one costs a hop.

IPC.  sys_ipc_try_send to an env that is not here stops the sender in the
kernel (kernel.IpcSend); this module finds the env and asks its node
(`ipc_try_send`), which delivers exactly as JOS does locally or answers
-E_IPC_NOT_RECV (the sender's ipc_send loop yields and tries again) or
-E_BAD_ENV; the answer becomes the sender's eax.  sys_env_destroy and
sys_env_set_status of a child that is not here go the same way
(kernel.EnvCall, `env_call`; the node there checks it is the caller's
child).  A page travels as a copy
(JOS maps the sender's frame; across nodes the receiver gets its own).
Each request is one round trip on a kept control connection per peer.
No answer within IPC_DEADLINE_SECONDS: -E_BAD_ENV, and the sender runs on.
"""
from __future__ import annotations

import statistics
import time
from collections import deque

import trio

from ..errors import Error
from ..kernel import events as ev
from ..kernel.kernel import WAITING_FOR
from ..kernel.memlayout import E_BAD_ENV, E_IPC_NOT_RECV
from ..proto.control import RemoteError
from ..proto.frames import ProtocolError
from .args import BadRequest, arg_envid, arg_word

IPC_DEADLINE_SECONDS = 5.0         # a remote send answers within this, or fails -E_BAD_ENV
MAX_HOPS = 8                       # forwarding pointers followed before asking everyone
WHERE_KEPT = 4096                  # cached locations (oldest dropped)
LATENCIES_KEPT = 10_000            # the last remote syscalls' times, for stats


class RemoteEnvs:
    def __init__(self, node):
        self.node = node
        self.peers = node.peers
        self.where: dict[int, str] = {}          # envid -> HOST:P it went to / was found at
        self.visitors: set[int] = set()          # envs that came here by migration
        self.stats = {"ipc_remote_sends": 0, "ipc_round_trips": 0, "ipc_delivered_here": 0,
                      "ipc_failed": 0, "env_calls": 0, "env_gone_sent": 0, "locate_broadcasts": 0,
                      "locate_hops": 0}
        self.latencies: deque[float] = deque(maxlen=LATENCIES_KEPT)   # seconds each
        self._nursery: trio.Nursery | None = None

    def figures(self) -> dict:
        """stats' ipc section: the counters, and the time from a remote
        syscall's stop to its answer (ms, over the last LATENCIES_KEPT)."""
        out = dict(self.stats)
        lat = sorted(self.latencies)
        if lat:
            out["latency_ms"] = {"n": len(lat), "p50": round(statistics.median(lat) * 1e3, 3),
                                 "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                                              * 1e3, 3)}
        return out

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.node.kernel.remote_ipc = True
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # -- where envs are -----------------------------------------------------------------
    def departed(self, envid: int, addr: str) -> None:
        """envid is addr's now (a migration from here decided go)."""
        self._remember(envid, addr)
        self.node.kernel.elsewhere.add(envid)

    def arrived(self, envid: int) -> None:
        """envid runs here (created, restored or arrived)."""
        self.where.pop(envid, None)
        self.node.kernel.elsewhere.discard(envid)

    def visiting(self, envid: int) -> None:
        """envid came here by a migration: other nodes may show it in their
        envs[] (Env.away) until told it ended."""
        self.visitors.add(envid)

    def destroyed(self, envid: int) -> None:
        """envid's env here is gone (EnvDestroyed).  If it had come from
        elsewhere and did not just leave again, tell every member (they
        free its old slots: env_gone)."""
        if envid not in self.visitors:
            return
        self.visitors.discard(envid)
        if envid in self.node.kernel.elsewhere or self._nursery is None:
            return                              # it moved on: its new node tells, later
        self.stats["env_gone_sent"] += 1
        self._nursery.start_soon(self._tell_gone, envid)

    async def _tell_gone(self, envid: int) -> None:
        async def tell(addr: str) -> None:
            try:
                await self.peers.call(addr, "env_gone", {"envid": envid})
            except (OSError, Error, ProtocolError, RemoteError, trio.TooSlowError):
                pass                              # its envs[] keeps showing the env (documented)
        async with trio.open_nursery() as nursery:
            for m in self.node.membership.alive():
                nursery.start_soon(tell, m.addr)

    def on_gone(self, args: dict) -> dict:
        envid = arg_envid(args)
        self.where.pop(envid, None)
        self.node.kernel.env_gone(envid)
        return {}

    def _remember(self, envid: int, addr: str) -> None:
        self.where.pop(envid, None)
        self.where[envid] = addr
        if len(self.where) > WHERE_KEPT:
            del self.where[next(iter(self.where))]

    def here(self, envid: int) -> bool:
        k = self.node.kernel
        return k.live_env(envid) is not None and envid not in k.elsewhere

    def on_where(self, args: dict) -> dict:
        """Another node asks whether envid is here (or where it went)."""
        envid = arg_envid(args)
        return {"here": self.here(envid), "forward": self.where.get(envid)}

    async def _ask_everyone(self, envid: int, skip: set[str]) -> str | None:
        self.stats["locate_broadcasts"] += 1
        found: list[str] = []

        async def ask(addr: str) -> None:
            try:
                r = await self.peers.call(addr, "env_where", {"envid": envid})
            except (OSError, Error, ProtocolError, RemoteError, trio.TooSlowError):
                return
            if isinstance(r, dict) and r.get("here") is True:
                found.append(addr)
                nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            for m in self.node.membership.alive():
                if m.addr not in skip:
                    nursery.start_soon(ask, m.addr)
        return found[0] if found else None

    async def finish_fork(self, envid: int) -> None:
        """Let envid (running) finish a fork in progress (Kernel.forking):
        its child's pages are mapped from this node's frames, which a move
        in between would cut off.  At most IPC_DEADLINE_SECONDS, then on."""
        k = self.node.kernel
        with trio.move_on_after(IPC_DEADLINE_SECONDS):
            while k.forking(envid):
                await trio.sleep(0.001)

    async def quiesce(self, envid: int) -> None:
        """Wait until envid has no syscall waiting for another node's answer
        (a migration pauses it, waits here, then takes its registers, so
        that no answer is lost; each such wait ends within
        IPC_DEADLINE_SECONDS)."""
        k = self.node.kernel
        with trio.move_on_after(IPC_DEADLINE_SECONDS + 1):
            while (e := k.live_env(envid)) is not None and e.frozen.startswith(WAITING_FOR):
                await trio.sleep(0.001)

    # -- asking -------------------------------------------------------------------------
    def ask(self, event) -> None:
        """A waiting env's syscall on an env not here (dispatch_events):
        IpcSend (ipc_try_send) or EnvCall (env_call)."""
        if isinstance(event, ev.IpcSend):
            self.stats["ipc_remote_sends"] += 1
            op, args = "ipc_try_send", {"src": event.src, "dst": event.dst,
                                        "value": event.value, "perm": event.perm}
            if event.page is not None:
                args["page"] = event.page
        else:
            self.stats["env_calls"] += 1
            op, args = "env_call", {"src": event.src, "dst": event.dst, "op": event.op,
                                    "arg": event.arg}
        self._nursery.start_soon(self._ask, event, op, args)

    async def _ask(self, event, op: str, args: dict) -> None:
        result = -E_BAD_ENV
        t0 = time.perf_counter()
        with trio.move_on_after(IPC_DEADLINE_SECONDS) as scope:
            result = await self._request(event.dst, op, args)
        self.latencies.append(time.perf_counter() - t0)
        if scope.cancelled_caught:
            self.node.log.warning("remote env syscall timed out", op=op, src=event.src,
                                  dst=event.dst, seconds=IPC_DEADLINE_SECONDS)
        if result < 0 and result != -E_IPC_NOT_RECV:
            self.stats["ipc_failed"] += 1
        if self.node.kernel.network_result(event.src, result):
            self.node.poke()

    async def _request(self, dst: int, op: str, args: dict) -> int:
        """op on env dst's node, wherever dst is: JOS's result."""
        tried: set[str] = set()
        addr = self.where.get(dst)
        for _ in range(MAX_HOPS):
            if addr is None or addr in tried:
                addr = await self._ask_everyone(dst, tried)
                if addr is None:
                    self.where.pop(dst, None)
                    return -E_BAD_ENV
            tried.add(addr)
            try:
                self.stats["ipc_round_trips"] += 1
                r = await self.peers.call(addr, op, args)
            except (OSError, Error, ProtocolError, RemoteError, trio.TooSlowError) as exc:
                self.node.log.info("remote env syscall: node unreachable", op=op, dst=dst,
                                   node=addr, error=getattr(exc, "message", "") or str(exc))
                addr = None
                continue
            if isinstance(r, dict) and isinstance(r.get("result"), int):
                self._remember(dst, addr)
                return r["result"]
            self.stats["locate_hops"] += 1
            addr = r.get("forward") if isinstance(r, dict) else None
        return -E_BAD_ENV

    def on_ipc_try_send(self, args: dict) -> dict:
        """Another node's env sends to one of ours: {result} or, if it is
        not here, {forward: where it went (or null)}."""
        src, dst = arg_envid(args, "src"), arg_envid(args, "dst")
        value, perm = arg_word(args, "value"), arg_word(args, "perm")
        page = args.get("page")
        if page is not None and not isinstance(page, bytes):
            raise BadRequest("page must be bytes")
        if not self.here(dst):
            return {"forward": self.where.get(dst)}
        r = self.node.kernel.ipc_deliver(src, dst, value, page, perm)
        if r == 0:
            self.stats["ipc_delivered_here"] += 1
            self.node.poke()
        return {"result": r}

    def on_env_call(self, args: dict) -> dict:
        """Another node's env destroys or sets the status of one of ours."""
        src, dst, arg = arg_envid(args, "src"), arg_envid(args, "dst"), arg_word(args, "arg")
        op = args.get("op")
        if op not in ("destroy", "set_status"):
            raise BadRequest("op must be destroy or set_status")
        if not self.here(dst):
            return {"forward": self.where.get(dst)}
        r = self.node.kernel.env_call(src, dst, op, arg)
        self.node.dispatch_events()
        self.node.poke()
        return {"result": r}


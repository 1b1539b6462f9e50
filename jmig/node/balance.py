"""Automatic load balancing, and where drained or balanced envs go.

Each node balances its own envs (MOSIX's way: a loaded node sends work
away; no coordinator).  A node with balancing on looks every
BALANCE_SECONDS (jittered, so that nodes do not act in step) and moves at
most one env at a time, by this policy:

- its load is the number of its envs that want the CPU (Kernel.wants_cpu:
  runnable, not paused, held, asleep or waiting for a page); a member's is
  the same figure from its last heartbeat, plus the envs this node has
  sent it since (Member.sent);
- it acts only if its load exceeds the least loaded schedulable member's
  (alive, not cordoned, not stopping) by THRESHOLD or more, so the
  cluster settles when no two nodes differ by more than one env, and a
  move never makes the target busier than the source was;
- the env it moves has the best expected gain: the largest share of this
  node's instructions since the last look (CPU-bound first), then the
  fewest pages; it must have lived here MIN_RESIDENCE_SECONDS (since it
  started or arrived: an env never bounces straight back), not be pinned
  (`jmigctl pin`), not be held by a migration, and fit in the target's
  free memory with MEMORY_HEADROOM to spare;
- it moves by pre-copy (the env keeps running while its pages are copied;
  resumed on arrival), or by pgfault (with push) for envs of more than
  PGFAULT_PAGES pages, so a large env is running on its target at once.

Every decision is logged ("balance decision", with its reason) and is the
`reason` of the migration job it starts (`jmigctl jobs`).
"""
from __future__ import annotations

import random
import time
from collections import deque

import trio

from ..errors import Error
from .migration import JobState

BALANCE_SECONDS = 1.0              # how often a balancing node looks
THRESHOLD = 2                      # move only when this many more envs want the CPU here
MIN_RESIDENCE_SECONDS = 5.0        # an env stays at least this long where it started or arrived
PGFAULT_PAGES = 4096               # envs above this (16 MiB) move by pgfault
MEMORY_HEADROOM = 1.25             # a target needs this times the env's memory free
DECISIONS_KEPT = 100


def pages_of(kernel, e) -> int:
    return len(e.aspace.pte) if e.aspace is not None else 0


def member_load(m) -> int:
    """A member's envs that want the CPU, with those on their way there."""
    return int(m.load.get("runnable", 0)) + len(m.sent)


def schedulable(members) -> list:
    return [m for m in members if not m.load.get("cordoned") and not m.load.get("stopping")
            and "runnable" in m.load]


def choose_target(members, need_bytes: int):
    """The least loaded schedulable member with room for need_bytes (the
    most free memory among equals, then at random); None if none has."""
    fits = [m for m in schedulable(members)
            if m.load.get("free", 0) >= need_bytes * MEMORY_HEADROOM]
    if not fits:
        return None
    least = min(member_load(m) for m in fits)
    best = [m for m in fits if member_load(m) == least]
    most_free = max(m.load.get("free", 0) for m in best)
    return random.choice([m for m in best if m.load.get("free", 0) == most_free])


class Balancer:
    def __init__(self, node, on: bool = False):
        self.node = node
        self.on = on
        self.pinned: set[int] = set()
        self.since: dict[int, float] = {}          # envid -> trio clock it started or arrived
        self.decisions: deque[dict] = deque(maxlen=DECISIONS_KEPT)
        self._executed: dict[int, int] = {}        # envid -> its instructions at the last look

    # -- envs coming and going (Node.dispatch_events) ----------------------------------
    def arrived(self, envid: int) -> None:
        try:
            self.since[envid] = trio.current_time()
        except RuntimeError:                       # outside trio (a kernel test)
            self.since[envid] = 0.0

    def gone(self, envid: int) -> None:
        self.since.pop(envid, None)
        self.pinned.discard(envid)
        self._executed.pop(envid, None)

    def pin(self, envid: int, on: bool) -> None:
        self.node.kernel.get_env(envid)            # raises for no such env
        (self.pinned.add if on else self.pinned.discard)(envid)

    # -- the policy ---------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await trio.sleep(BALANCE_SECONDS * random.uniform(0.75, 1.25))
            node = self.node
            if self.on and not node.stopping and not node.cordoned:
                try:
                    await self.step()
                except Error as exc:             # the env went meanwhile, ...: next time
                    node.log.info("balance step skipped", reason=exc.message)

    def _shares(self) -> dict[int, float]:
        """Each env's share of the instructions run here since the last look."""
        k = self.node.kernel
        now = {e.env_id: e.executed for e in k.live_envs()}
        delta = {i: n - self._executed.get(i, 0) for i, n in now.items()}
        self._executed = now
        total = sum(d for d in delta.values() if d > 0)
        return {i: (d / total if total and d > 0 else 0.0) for i, d in delta.items()}

    async def step(self) -> dict | None:
        """One look: start (and wait for) at most one move; its decision."""
        node = self.node
        k = node.kernel
        shares = self._shares()
        mine = [e for e in k.live_envs() if k.wants_cpu(e)]
        targets = schedulable(node.membership.alive())
        if not targets:
            return None
        least = min(member_load(m) for m in targets)
        if len(mine) - least < THRESHOLD:
            return None
        now = trio.current_time()
        movable = [e for e in mine if e.env_id not in self.pinned
                   and e.env_id not in node.migrations.busy
                   and now - self.since.get(e.env_id, 0.0) >= MIN_RESIDENCE_SECONDS]
        movable.sort(key=lambda e: (-shares.get(e.env_id, 0.0), pages_of(k, e), e.env_id))
        for e in movable:
            pages = pages_of(k, e)
            target = choose_target(targets, pages * 4096)
            if target is None or len(mine) - member_load(target) < THRESHOLD:
                continue
            method = "pgfault" if pages > PGFAULT_PAGES else "precopy"
            where = (f"{target.name} ({target.addr})"
                     if target.name and target.name != target.addr else target.addr)
            reason = (f"balance: {len(mine)} envs want the CPU on {node.name}, "
                      f"{member_load(target)} on {where}; env {e.env_id} ran "
                      f"{shares.get(e.env_id, 0.0):.0%} of this node's instructions, "
                      f"{pages} pages; by {method}")
            job = node.migrations.migrate(e.env_id, target.addr, method, resume=True,
                                          reason=reason)
            target.sent.append(job)
            decision = {"envid": e.env_id, "to": target.addr, "method": method,
                        "job": job.id, "reason": reason, "time": time.time()}
            self.decisions.append(decision)
            node.log.info("balance decision", envid=e.env_id, to=target.addr, method=method,
                          job=job.id, reason=reason)
            await job.done.wait()
            if job.state is not JobState.SUCCEEDED:
                node.log.warning("balance move failed", envid=e.env_id, to=target.addr,
                                 job=job.id, error=job.error)
            return decision
        return None

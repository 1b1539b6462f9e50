"""jmigctl demo --distributed: the prime sieve spread over four local nodes.

Starts four jmig-node processes on loopback with --node-id 0..3 (so that
env ids are unique in the cluster and never change when an env moves;
node2..node4 join node1; a fresh secret and data directories in a temporary
directory, as `jmigctl demo` does), waits until each lists all four as
alive members, and spawns `primes 40 300` on node1: JOS's concurrent prime
sieve, a generator that sends 2..300 (one every 40 ms) down a chain of
filter envs, each of which prints the first number that reaches it (a
prime), forks the next filter and passes on what its prime does not divide.
As each of the first three filters appears (it prints its prime and forks
the next filter), it moves by pre-copy, to node2, node3 and node4 in turn;
the rest of the chain stays on node1, so each number travels node1 ->
node2 -> node3 -> node4 -> node1 by IPC.  (A filter moves only once its
fork is done, the kernel's "new env" line on a console telling the demo it
started: a migration may stop an env between JOS fork's system calls, and
the fork cannot finish on the other node.)  Then: exactly
the primes up to 300 came out, each once, across the four consoles; a
cluster-wide ps shows where each stage lives, every env on exactly one
node; and each node's IPC figures.  Each claim is checked, not just
narrated (demo.Demo.check).
"""
from __future__ import annotations

import re
from collections import Counter

import trio

from ..node.cluster import SLOTS_PER_NODE
from .client import ControlClient
from .cluster_demo import NAMES, ClusterDemo
from .demo import DemoFailed, play
from .render import plural

PRIMES_MS = 40             # the generator sleeps this long before each number
LIMIT = 300
PRIMES = [p for p in range(2, LIMIT + 1) if all(p % q for q in range(2, int(p ** 0.5) + 1))]
MOVED = 3                  # the first three filters move, to node2, node3, node4
DONE = f"primes: generated 2..{LIMIT}"
SHOWN = re.compile(r"^\d+$|^primes:|panic|error|bad env", re.I)
NEW_ENV = re.compile(r"^\[([0-9a-f]{8})\] new env ([0-9a-f]{8})$")


def span(xs: list[int]) -> str:
    """2, 3, 5 or 7, 11, 13 .. 293 (a long list's ends)."""
    return ", ".join(map(str, xs)) if len(xs) <= 6 else \
        ", ".join(map(str, xs[:3])) + " .. " + ", ".join(map(str, xs[-2:]))


class DistributedDemo(ClusterDemo):
    NODE_IDS = True                   # cluster-wide env ids: a filter keeps its id as it moves
    DONE = "The distributed demo is complete."

    def __init__(self, ctx, fast: bool):
        super().__init__(ctx, fast)
        self.printed: list[tuple[str, int, str]] = []        # (node, envid, line)
        self.born: dict[int, tuple[str, int]] = {}          # parent -> (node, its first child)

    def on_line(self, node: str, envid: int, line: str) -> None:
        """Record every console line with the env that printed it; show the
        sieve's own lines (primes, the generator's last line, any panic),
        not the kernel's "new env" and "exiting" ones; note where each
        env's first child was born (the kernel's "[PARENT] new env CHILD",
        as the fork starts)."""
        line = line.strip()
        self.printed.append((node, envid, line))
        m = NEW_ENV.match(line)
        if m:
            self.born.setdefault(int(m.group(1), 16), (node, int(m.group(2), 16)))
        if SHOWN.search(line):
            self.say(f"  {node} | {line}")

    def owners(self) -> dict[int, list[tuple[str, int]]]:
        """prime -> every (node, env) that printed it."""
        out: dict[int, list[tuple[str, int]]] = {}
        for node, envid, line in self.printed:
            if line.isdigit():
                out.setdefault(int(line), []).append((node, envid))
        return out

    async def cluster_ps(self) -> list[tuple[str, dict]]:
        """(node, env) for every env of every node, in node order."""
        res: dict[str, list] = {}

        async def one(n):
            res[n] = (await self.call(n, "ps"))["envs"]
        async with trio.open_nursery() as nursery:
            for n in NAMES:
                nursery.start_soon(one, n)
        return [(n, e) for n in NAMES for e in res[n]]

    async def forked(self, parent: int, timeout: float = 10.0) -> tuple[str, int]:
        """(node, env) of parent's first child once parent's fork of it is
        done (the child runnable, run, or waiting in ipc_recv): the parent
        is then on that node and forks no more (a filter forks once)."""
        with trio.move_on_after(timeout):
            while parent not in self.born:
                await trio.sleep(0.002)
            node, env = self.born[parent]
            async with await ControlClient.open(self.nodes[node], self.secret) as c:
                while True:
                    e = next((e for e in (await c.request("ps"))["envs"]
                              if e["envid"] == env), None)
                    if e is None:
                        raise DemoFailed(f"env {env}, forked by {parent} on {node}, is gone")
                    if e["status"] in ("Runnable", "Running") or e["runs"] \
                            or "ipc_recv" in e["state"]:
                        return node, env
                    await trio.sleep(0.002)
        raise DemoFailed(f"env {parent} forked no filter within {timeout:.0f}s")

    async def walkthrough(self) -> None:
        n1 = NAMES[0]
        addrs = ", ".join(f"{n} {self.nodes[n]} (--node-id {k})" for k, n in enumerate(NAMES))
        self.step(1, f"four nodes: {addrs}; node2-4 started with --join {self.nodes[n1]}")
        self.say(f"  node-id K hands out env slots K*{SLOTS_PER_NODE} .. "
                 f"K*{SLOTS_PER_NODE}+{SLOTS_PER_NODE - 1}: env ids are unique in the "
                 "cluster and an env keeps its id wherever it moves")
        await self.wait_alive()
        await self.nodes_table(n1)
        await self.pause(1.0)

        self.step(2, f"spawn `primes {PRIMES_MS} {LIMIT}` on node1: a generator sends "
                     f"2..{LIMIT}, one every {PRIMES_MS} ms, down a chain of filters")
        self.say("  (each filter prints the first number that reaches it, a prime, forks the "
                 "next filter and passes on the numbers its prime does not divide; the "
                 "consoles' sieve lines are shown as they print, marked with their node)")
        gen = (await self.call(n1, "spawn", {"program": "primes",
                                             "args": [str(PRIMES_MS), str(LIMIT)]}))["envid"]
        self.say(f"  the generator is env {gen}")

        self.step(3, f"as each of the first {MOVED} filters appears (prints its prime and "
                     "forks the next filter), move it: to " + ", ".join(NAMES[1:MOVED + 1])
                     + " in turn (pre-copy, resumed there)")
        self.say("  (a filter forks only once, so it moves when its fork is done: stopped "
                 "halfway, the fork could not finish, its child being left on the node "
                 "it came from)")
        stage, moved = gen, []
        for k, target in enumerate(NAMES[1:MOVED + 1]):
            _, env = await self.forked(stage)
            where, child = await self.forked(env)
            self.say(f"  the filter of {PRIMES[k]} is env {env} (child of {stage}) on {where}, "
                     f"and it forked env {child}, the next filter; moving it to {target}")
            res = await self.call(where, "migrate", {"envid": env, "to": self.nodes[target],
                                                     "method": "precopy", "resume": True})
            self.say(f"  env {env} moved {where} -> {target}: "
                     f"{plural(res['rounds'], 'round')}, downtime "
                     f"{res['downtime_s'] * 1000:.1f} ms, total {res['total_s'] * 1000:.1f} ms")
            self.check(res["new_envid"] == env, f"env {env} keeps its id on {target}")
            moved.append((env, target))
            stage = env

        self.step(4, f"wait for the generator's `{DONE}`")
        with trio.move_on_after(LIMIT * PRIMES_MS / 1000 + 45):
            while not any(n == n1 and line == DONE for n, _, line in self.printed):
                await trio.sleep(0.05)
        self.check(any(n == n1 and line == DONE for n, _, line in self.printed),
                   f"node1's generator sent 2..{LIMIT}")
        # The last numbers still pass down the chain, node to node.
        with trio.move_on_after(15):
            while sorted(self.owners()) != PRIMES \
                    or any(len(w) != 1 for w in self.owners().values()):
                await trio.sleep(0.05)
        owners = self.owners()
        twice = sorted(p for p, w in owners.items() if len(w) > 1)
        missing = sorted(set(PRIMES) - set(owners))
        extra = sorted(set(owners) - set(PRIMES))
        self.check(not twice and not missing and not extra,
                   f"exactly the {len(PRIMES)} primes up to {LIMIT} were printed, each once"
                   + (f" (twice: {twice}; missing: {missing}; not primes: {extra})"
                      if twice or missing or extra else ""))
        by_node = Counter(w[0][0] for w in owners.values())
        self.say("  printed on " + ", ".join(f"{n} {by_node[n]}" for n in NAMES))
        owner = {w[0][1]: p for p, w in owners.items()}             # env -> its prime
        for k, (env, target) in enumerate(moved):
            # On target, unless its prime reached it before it moved.
            (there, by), = owners[PRIMES[k]]
            self.check(by == env, f"{PRIMES[k]} was printed by env {env}, on {there} "
                       f"(before it moved to {target})")
        await self.pause(1.0)

        self.step(5, "ps, cluster-wide: where each stage lives")
        rows = await self.cluster_ps()
        self.say(f"  {'NODE':6} {'ENV':>6} {'PARENT':>6} {'PROGRAM':8} {'STATUS':9} STAGE")
        for n, e in sorted(rows, key=lambda r: (owner.get(r[1]["envid"], LIMIT + 1),
                                                r[1]["envid"])):
            env = e["envid"]
            what = ("generator" if env == gen else f"filter {owner[env]}" if env in owner
                    else "next filter (no number reached it)")
            self.say(f"  {n:6} {env:>6} {e['parent']:>6} {e['name']:8} {e['status']:9} {what}")
        if all(e["envid"] != gen for _, e in rows):
            self.say(f"  (the generator, env {gen}, exited after its last number)")
        places = Counter(e["envid"] for _, e in rows)
        dup = sorted(env for env, c in places.items() if c > 1)
        self.check(not dup, f"each of the {plural(len(places), 'env')} is on exactly one node"
                   + (f" (on more than one: {dup})" if dup else ""))
        where = {e["envid"]: n for n, e in rows}
        lost = sorted(p for env, p in owner.items() if env not in where)
        self.check(not lost, f"all {len(PRIMES)} filters are still there, waiting for numbers"
                   + (f" (gone: the filters of {lost})" if lost else ""))
        for env, target in moved:
            self.check(where.get(env) == target, f"env {env} (filter {owner.get(env)}) lives "
                       f"on {target}")
        for n in NAMES:
            mine = sorted(p for env, p in owner.items() if where.get(env) == n)
            rest = sum(1 for m, e in rows if m == n and e["envid"] not in owner)
            self.say(f"  {n}: " + (f"the filters of {span(mine)}" if mine else "no filter")
                     + (f" and {plural(rest, 'other env')}" if rest else ""))
        await self.pause(1.0)

        self.step(6, "IPC between the nodes (each node's `stats` ipc section)")
        stats = {}
        for n in NAMES:
            stats[n] = (await self.call(n, "stats"))["ipc"]
        self.say(f"  {'NODE':6} {'REMOTE SENDS':>12} {'ROUND TRIPS':>11} {'DELIVERED':>9} "
                 f"{'ERRORS':>6} {'LATENCY p50/p99':>16}")
        for n in NAMES:
            s = stats[n]
            lat = s.get("latency_ms")
            self.say(f"  {n:6} {s['ipc_remote_sends']:>12} {s['ipc_round_trips']:>11} "
                     f"{s['ipc_delivered_here']:>9} {s['ipc_failed']:>6} "
                     + (f"{lat['p50']:>7.2f}/{lat['p99']:.2f} ms" if lat else f"{'-':>16}"))
        self.say("  (remote sends: sys_ipc_try_send to an env on another node, each "
                 "-E_IPC_NOT_RECV retry of JOS's ipc_send loop included; round trips: "
                 "requests to other nodes; delivered: sends from other nodes' envs taken "
                 "here; errors: answers other than 0 and -E_IPC_NOT_RECV; latency: from a remote "
                 "syscall's stop to its answer)")
        self.check(all(stats[n]["ipc_failed"] == 0 for n in NAMES), "no remote syscall failed")
        self.check(all(stats[n]["ipc_remote_sends"] > 0 and stats[n]["ipc_delivered_here"] > 0
                       for n in NAMES),
                   "the numbers crossed nodes: each node sent to envs of others and took "
                   "their sends")
        panics = [n for n, _, line in self.printed if "panic" in line]
        self.check(not panics, "no env panicked")


def distributed_demo(ctx) -> int:
    return play(ctx, DistributedDemo(ctx, ctx.args.fast), NAMES, "demo --distributed")

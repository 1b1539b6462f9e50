"""Automatic load balancing on real jmig-node daemons: twelve CPU-bound
`burn` envs started on one of four balancing nodes spread out evenly, then
stay where they are (no oscillation); a pinned env never moves; every
balancing move succeeds.  (Membership, drain and the errors are in
test_cluster.py.)"""
from __future__ import annotations

import json
import time
from collections import Counter

from .test_cluster import all_alive, ok, spawn, start_nodes, wait_until

SETTLE_SECONDS = 60          # the spread must be even within this
QUIET_SECONDS = 60           # ... and then no move for this long


def burn_rows(d) -> list[dict]:
    """Every burn env of d's cluster (`ps --all --json`), which must answer
    whole: a member reported failed is a failure of the test."""
    code, out, err = d.ctl("ps", "--all", "--json")
    rows = json.loads(out)
    errors = [r for r in rows if "error" in r]
    assert code == 0 and not errors, f"ps --all exited {code}: {errors} {err}"
    return [r for r in rows if r.get("program") == "burn"]


def per_node(rows, nodes) -> dict[str, int]:
    c = Counter(r["node"] for r in rows)
    return {d.name: c.get(d.addr, 0) for d in nodes}


def balance_jobs(nodes) -> dict[str, dict]:
    """Every migration job (by id) whose reason starts with "balance", on
    every node (a job is listed by the node that started it)."""
    out = {}
    for d in nodes:
        for j in json.loads(ok(d, "jobs", "--json")):
            if (j.get("reason") or "").startswith("balance"):
                out[j["id"]] = {**j, "node": d.name}
    return out


def test_balancing_spreads_twelve_burns_evenly_and_then_holds_still(daemons):
    nodes = start_nodes(daemons, [("node1", ["--balance"])] + [
        (f"node{i}", lambda s: ["--join", s[0].addr, "--balance"]) for i in (2, 3, 4)])
    n1 = nodes[0]
    wait_until(lambda: all_alive(nodes), 10, "the four nodes to see each other")
    status = json.loads(ok(n1, "balance", "status", "--json"))
    assert [r["balance"] for r in status["nodes"]] == [True] * 4 and status["errors"] == [], \
        status

    pinned = spawn(n1, "burn")
    ok(n1, "pin", str(pinned))
    envs = [pinned] + [spawn(n1, "burn") for _ in range(11)]
    t0 = time.monotonic()
    assert len(set(envs)) == 12

    history = []

    def even() -> bool:
        rows = burn_rows(n1)
        counts = per_node(rows, nodes)
        history.append((round(time.monotonic() - t0, 1), counts))
        return (len(rows) == 12 and len({r["envid"] for r in rows}) == 12
                and max(counts.values()) - min(counts.values()) <= 1)
    try:
        wait_until(even, SETTLE_SECONDS, "the burns to spread evenly", interval=0.5)
    except AssertionError:
        raise AssertionError(f"not even within {SETTLE_SECONDS} s; burns per node over "
                             f"time: {history[::4]}") from None
    settled = time.monotonic() - t0
    print(f"even after {settled:.1f} s: {history[-1][1]}")

    # No oscillation: for QUIET_SECONDS no new balancing move anywhere.
    known = balance_jobs(nodes)
    quiet_start = time.monotonic()
    while time.monotonic() - quiet_start < QUIET_SECONDS:
        time.sleep(2.0)
        now = balance_jobs(nodes)
        new = {i: j for i, j in now.items() if i not in known}
        assert not new, (
            f"{len(new)} new balancing moves {time.monotonic() - quiet_start:.1f} s after "
            f"the spread was even ({history[-1][1]}): "
            + "; ".join(f"{j['node']}: env {j['envid']} -> {j['target']} ({j['state']}): "
                        f"{j['reason']}" for j in new.values()))
        known.update(now)
    rows = burn_rows(n1)
    counts = per_node(rows, nodes)
    assert len(rows) == 12 and max(counts.values()) - min(counts.values()) <= 1, counts

    # The pinned env never moved; every balancing move succeeded.
    home = {r["envid"]: r for r in rows if r["node"] == n1.addr}
    assert pinned in home and "pinned" in home[pinned]["state"], rows
    assert all(j["envid"] != pinned for j in known.values())
    failed = [j for j in known.values() if j["state"] != "succeeded"]
    assert not failed, failed
    assert len(known) >= 9, f"12 burns on node1 spread to 3 per node in {len(known)} moves"
    print(f"{len(known)} balancing moves, all succeeded; {QUIET_SECONDS} s quiet after")


def test_balance_on_off_and_status_reach_every_member(daemons):
    """`jmigctl balance on|off` switches every alive member, whichever one
    is asked; `status` reports each member under its address (as
    `ps --all --json` and the command's own error rows do)."""
    nodes = start_nodes(daemons, [("b1", []), ("b2", lambda s: ["--join", s[0].addr])])
    b1, b2 = nodes
    wait_until(lambda: all_alive(nodes), 10, "the two nodes to see each other")

    def flags(seen_by) -> dict[str, bool]:
        return {v["addr"]: v["load"]["balance"]
                for v in json.loads(ok(seen_by, "nodes", "--json"))}

    assert flags(b1) == {b1.addr: False, b2.addr: False}
    out = ok(b1, "balance", "on")
    assert sorted(out.splitlines()) == sorted(f"{d.addr}: balancing on" for d in nodes), out
    for d in nodes:
        wait_until(lambda: flags(d) == {b1.addr: True, b2.addr: True}, 3,
                   f"{d.name} to see balancing on everywhere")
    out = ok(b2, "balance", "off")
    assert sorted(out.splitlines()) == sorted(f"{d.addr}: balancing off" for d in nodes), out
    assert flags(b2)[b2.addr] is False
    wait_until(lambda: flags(b1) == {b1.addr: False, b2.addr: False}, 3,
               "b1 to see balancing off everywhere")
    status = json.loads(ok(b1, "balance", "status", "--json"))
    assert status["errors"] == []
    assert sorted((r["node"], r["balance"]) for r in status["nodes"]) == sorted(
        (d.addr, False) for d in nodes), \
        f"balance status --json names the nodes {[r['node'] for r in status['nodes']]}, " \
        f"not their addresses {[d.addr for d in nodes]}"

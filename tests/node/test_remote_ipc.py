"""IPC between envs on different nodes, on real daemons: JOS's pingpong
(`pingpong 150`: each side waits 150 ms before passing the counter on)
with the child migrated to another node mid-game and back, by each method,
plays exactly the game it plays unmigrated; a send to a node that stopped
answering fails after the deadline instead of hanging."""
from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from jmig.node.remote import IPC_DEADLINE_SECONDS

from .test_cluster import all_alive, ok, start_nodes, wait_until

GOT = re.compile(r"^([0-9a-f]+) got (\d+) from ([0-9a-f]+)$", re.M)


def game(*nodes) -> list[tuple[int, int, int]]:
    """Every "X got N from Y" line of the nodes' consoles, by N."""
    lines = [(int(n), int(x, 16), int(y, 16)) for d in nodes
             for x, n, y in GOT.findall(d.console())]
    return sorted(lines)


def round_trips(*nodes) -> int:
    """Remote IPC syscalls the nodes' envs made (stats)."""
    return sum(json.loads(ok(d, "stats", "--json"))["ipc"]["ipc_round_trips"] for d in nodes)


def children(d, parent: int) -> list[int]:
    return [e["envid"] for e in json.loads(ok(d, "ps", "--json")) if e["parent"] == parent]


def joined(daemons, n: int, node_ids: bool = False) -> list:
    """n nodes a, b, ... that joined a (with node ids 0.., if node_ids),
    once every one sees the others alive."""
    def args(k):
        ids = ["--node-id", str(k)] if node_ids else []
        return ids if k == 0 else lambda s: [*ids, "--join", s[0].addr]
    nodes = start_nodes(daemons, [("abcd"[k], args(k)) for k in range(n)])
    wait_until(lambda: all_alive(nodes), 10, "the nodes to see each other")
    return nodes


def forked(d, program: str, *args: str) -> tuple[int, int]:
    """Spawn program on d; (its envid, its first child's) once it forked."""
    parent = json.loads(ok(d, "spawn", "--json", program, *args))["new_envid"]
    wait_until(lambda: children(d, parent), 5, f"{program} to fork its child")
    return parent, children(d, parent)[0]


NAP = 2.0          # pingpong's nap (s) in child_waiting_for_two


def child_waiting_for_two(d) -> tuple[int, int]:
    """`pingpong 2000` on d, its parent paused in the nap after it got 1
    (so its child waits in ipc_recv for 2), once that nap is over: resumed,
    it sends 2 at once.  Paused, so that moving the child before that send
    does not race the nap however slow the machine (with a 300 ms nap and
    no pause, a loaded machine let the send in before the move)."""
    parent, child = forked(d, "pingpong", str(int(NAP * 1000)))
    wait_until(lambda: len(game(d)) >= 2, 3 * NAP + 10, "two turns of the game")
    got = time.monotonic()
    ok(d, "pause", str(parent))
    assert len(game(d)) == 2, "the parent sent 2 before it was paused"
    time.sleep(max(0.0, got + NAP - time.monotonic()))
    return parent, child


@pytest.mark.parametrize("there,back", [("normal", "precopy"), ("precopy", "pgfault"),
                                        ("pgfault", "normal")])
def test_pingpong_counts_to_ten_with_the_child_moved_away_and_back(daemons, there, back):
    a, b = joined(daemons, 2)
    parent, child = forked(a, "pingpong", "150")
    wait_until(lambda: len(game(a)) >= 2, 10, "two turns of the game on a")
    res = json.loads(ok(a, "migrate", str(child), "--to", b.addr, "--method", there,
                        "--resume", "--json"))
    assert res["new_envid"] == child               # the same env id over there
    wait_until(lambda: any(x == child for _, x, _ in game(b)), 10,
               f"the child to receive on b after a {there} migration")
    # Its first line on b may be a turn received on a just before it moved:
    # wait for a turn that crosses the nodes before moving it back.
    wait_until(lambda: round_trips(a, b) >= 1, 10, "a turn across the nodes")
    res = json.loads(ok(b, "migrate", str(child), "--to", a.addr, "--method", back,
                        "--resume", "--json"))
    assert res["new_envid"] == child
    wait_until(lambda: len(game(a, b)) == 11, 20, "the game to reach 10")
    got = game(a, b)
    # Exactly the unmigrated game: 0..10 once each, the child receiving the
    # even values from the parent and the parent the odd ones from the child.
    assert [n for n, _, _ in got] == list(range(11)), got
    for n, receiver, sender in got:
        assert (receiver, sender) == ((child, parent) if n % 2 == 0 else (parent, child)), got
    assert any(x == child for _, x, _ in game(b)), "the child never received on b"
    wait_until(lambda: f"[{child:08x}] exiting gracefully" in a.console() + b.console()
               and f"[{parent:08x}] exiting gracefully" in a.console(), 10,
               "both to exit")
    for d in (a, b):
        assert "panic" not in d.console() and "ipc_send" not in d.console()
    # The turn across the nodes was delivered over the wire, counted in stats.
    stats = [json.loads(ok(d, "stats", "--json"))["ipc"] for d in (a, b)]
    assert sum(x["ipc_delivered_here"] for x in stats) >= 1, stats


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_send_to_a_node_that_is_gone_or_silent_fails_within_the_deadline(daemons, how):
    a, b = joined(daemons, 2)
    parent, child = child_waiting_for_two(a)
    ok(a, "migrate", str(child), "--to", b.addr, "--resume")
    if how == "kill":
        b.kill()                                  # nothing listens: refused at once
    else:
        os.kill(b.proc.pid, signal.SIGSTOP)       # connects, never answers
    t0 = time.monotonic()
    ok(a, "resume", str(parent))                  # its nap is over: it sends 2 at once
    try:
        # The parent's next ipc_send goes to b: -E_BAD_ENV, on which JOS's
        # ipc_send panics (any error but -E_IPC_NOT_RECV); the node serves on.
        wait_until(lambda: f"sending to {child:08x}: bad environment" in a.console(),
                   IPC_DEADLINE_SECONDS + 10, "the parent's send to fail")
        took = time.monotonic() - t0
    finally:
        if how == "stop":
            os.kill(b.proc.pid, signal.SIGCONT)
    assert took <= IPC_DEADLINE_SECONDS + 1, took
    print(f"{how}: the send failed after {took:.2f} s")
    wait_until(lambda: not json.loads(ok(a, "ps", "--json")), 5, "the parent to be gone")
    stats = json.loads(ok(a, "stats", "--json"))["ipc"]
    assert stats["ipc_failed"] >= 1, stats


def test_a_parent_destroys_its_child_on_another_node(daemons):
    a, b = joined(daemons, 2)
    # `spin 2500`: the parent forks a child that spins, sleeps 2.5 s, then
    # destroys it (and panics if sys_env_destroy fails).
    parent = json.loads(ok(a, "spawn", "--json", "spin", "2500"))["new_envid"]
    wait_until(lambda: "I am the child.  Spinning..." in a.console(), 5, "the child to spin")
    child = children(a, parent)[0]
    ok(a, "migrate", str(child), "--to", b.addr, "--method", "precopy", "--resume")
    assert [e["envid"] for e in json.loads(ok(b, "ps", "--json"))] == [child]
    wait_until(lambda: f"[{parent:08x}] destroying {child:08x}" in b.console(), 10,
               "the parent's sys_env_destroy to reach b")
    wait_until(lambda: not json.loads(ok(b, "ps", "--json")), 5, "the child to be gone from b")
    wait_until(lambda: f"[{parent:08x}] exiting gracefully" in a.console(), 5,
               "the parent to exit")
    assert "panic" not in a.console(), a.console()
    stats = json.loads(ok(a, "stats", "--json"))["ipc"]
    assert stats["env_calls"] == 1 and stats["ipc_failed"] == 0, stats


def test_sendpage_passes_a_page_between_nodes(daemons):
    a, b = joined(daemons, 2, node_ids=True)
    # `sendpage 1500`: the parent waits 1.5 s before sending its page; the
    # child, blocked in ipc_recv, moves to b meanwhile.
    parent, child = forked(a, "sendpage", "1500")
    ok(a, "migrate", str(child), "--to", b.addr, "--resume")
    wait_until(lambda: "parent received correct message" in a.console(), 15,
               "the parent to get the child's page back")
    # Each side got the other's page, the child on b.
    assert f"{parent:x} got message: hello child environment! how are you?" in b.console()
    assert "child received correct message" in b.console()
    assert f"{child:x} got message: hello parent environment! I'm good." in a.console()
    assert "panic" not in a.console() + b.console()


PRIMES_TO = 200


def test_primes_runs_with_its_filters_spread_over_four_nodes(daemons):
    """`primes 30 200`: the generator sends 2..200, one every 30 ms; the
    first three filters move, one by one, to three other nodes while it
    runs (a filter forked after its parent moved is born on that node, with
    an env id of that node's slots).  Exactly the primes up to 200 are printed, each once."""
    nodes = joined(daemons, 4, node_ids=True)
    a = nodes[0]
    gen = json.loads(ok(a, "spawn", "--json", "primes", "30", str(PRIMES_TO)))["new_envid"]
    stage, moved = gen, []
    for d in nodes[1:]:
        # The next filter: the env whose parent is the last one (on a).
        wait_until(lambda: children(a, stage), 10, f"a filter after {stage}")
        stage = children(a, stage)[0]
        ok(a, "migrate", str(stage), "--to", d.addr, "--method", "precopy", "--resume")
        moved.append((stage, d))
    wait_until(lambda: f"primes: generated 2..{PRIMES_TO}" in a.console(), 30,
               "the generator to finish")
    want = [p for p in range(2, PRIMES_TO + 1) if all(p % q for q in range(2, p))]
    time.sleep(0.5)                                # the last numbers pass the chain

    def printed():
        return sorted(int(line) for d in nodes for line in d.console().splitlines()
                      if line.strip().isdigit())
    wait_until(lambda: printed() == want, 10, f"exactly the primes up to {PRIMES_TO}")
    rows = json.loads(a.ctl("ps", "--all", "--json")[1])
    where = {r["envid"]: r["node"] for r in rows}
    assert len(where) == len(rows), "two envs share an env id"
    for envid, d in moved:
        assert where[envid] == d.addr, (envid, d.name, where.get(envid))
    # The filters (one per prime) and the generator are all still there,
    # each on exactly one node, every node holding at least one.
    assert len(rows) == len(want) + 1 and set(where.values()) == {d.addr for d in nodes}, rows
    for d in nodes:
        assert "panic" not in d.console(), d.console()[-2000:]


def test_a_parent_watching_envs_sees_its_moved_child_until_it_ends_elsewhere(daemons):
    """`waitchild 2000`: the parent polls envs[ENVX(child)] until the slot no
    longer holds the child.  Moved to b, the child still shows in a's
    envs[] (as Runnable) until it exits on b; then a frees the slot."""
    a, b = joined(daemons, 2, node_ids=True)
    parent, child = forked(a, "waitchild", "2000")
    ok(a, "migrate", str(child), "--to", b.addr, "--resume")
    time.sleep(0.5)
    assert "is gone" not in a.console(), "the parent lost sight of its child when it moved"
    wait_until(lambda: f"waitchild: child {child:08x} done" in b.console(), 10,
               "the child to finish on b")
    wait_until(lambda: f"waitchild: child {child:08x} is gone" in a.console(), 5,
               "the parent to see the child gone")
    stats = json.loads(ok(b, "stats", "--json"))["ipc"]
    assert stats["env_gone_sent"] == 1, stats


def test_an_env_moved_while_its_send_waits_for_a_silent_node_takes_the_answer_along(daemons):
    """The parent's send to its child waits for b, which was SIGSTOPped;
    meanwhile the parent is migrated to c.  The migration waits for the
    answer (-E_BAD_ENV after the deadline) and the env carries it: JOS's
    ipc_send panics on c with it.  (An answer lost in the move would leave
    eax holding the syscall number, which ipc_send takes for success.)"""
    a, b, c = joined(daemons, 3, node_ids=True)
    parent, child = child_waiting_for_two(a)
    ok(a, "migrate", str(child), "--to", b.addr, "--resume")
    os.kill(b.proc.pid, signal.SIGSTOP)
    ok(a, "resume", str(parent))
    try:
        def waiting() -> bool:
            rows = json.loads(ok(a, "ps", "--json"))
            return any(r["envid"] == parent and "waiting for the node of" in r["state"]
                       for r in rows)
        wait_until(waiting, 5, "the parent to wait for b's answer")
        t0 = time.monotonic()
        res = json.loads(ok(a, "migrate", str(parent), "--to", c.addr, "--method", "precopy",
                            "--resume", "--json"))
        took = time.monotonic() - t0
        assert res["new_envid"] == parent
        wait_until(lambda: f"sending to {child:08x}: bad environment" in c.console(), 10,
                   "the parent to get the answer on c")
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    assert took >= 1.0, f"the migration did not wait for the answer ({took:.2f} s)"
    assert "bad environment" not in a.console()


def test_an_env_is_found_after_several_moves_and_an_orderly_stop_of_a_node_it_passed(daemons):
    """The child of `pingpong 300` moves a -> b -> c; b stops cleanly.
    a's pointer names b, which is gone: a asks every member and finds the
    child on c; the game ends exactly as unmigrated.  The parent is paused
    while the child moves and b stops: a send of its in between would ask
    b, learn c from b's pointer, and never need to ask everyone."""
    a, b, c = joined(daemons, 3, node_ids=True)
    parent, child = forked(a, "pingpong", "300")
    wait_until(lambda: len(game(a)) >= 2, 10, "two turns of the game on a")
    ok(a, "pause", str(parent))
    ok(a, "migrate", str(child), "--to", b.addr, "--resume")
    ok(b, "migrate", str(child), "--to", c.addr, "--method", "precopy", "--resume")
    assert b.stop() == 0                            # an orderly stop
    ok(a, "resume", str(parent))
    wait_until(lambda: len(game(a, b, c)) == 11, 30, "the game to reach 10")
    got = game(a, b, c)
    assert [n for n, _, _ in got] == list(range(11)), got
    for n, receiver, sender in got:
        assert (receiver, sender) == ((child, parent) if n % 2 == 0 else (parent, child)), got
    stats = json.loads(ok(a, "stats", "--json"))["ipc"]
    assert stats["locate_broadcasts"] >= 1 and stats["ipc_failed"] == 0, stats


def test_a_drain_moves_a_pingpong_pair_that_plays_on(daemons):
    """Issue 17's drain with a pair that talks: `pingpong 700` on a (node
    ids 0..2); a is drained after the first turns, both envs leave, each
    for the least loaded member, and the game ends exactly as unmigrated."""
    a, b, c = joined(daemons, 3, node_ids=True)
    parent, child = forked(a, "pingpong", "700")
    wait_until(lambda: len(game(a)) >= 1, 10, "the first turn on a")
    code, out, err = a.ctl("drain", a.addr)
    assert code == 0, (code, out, err)
    assert f"{a.addr} drained: 2 envs moved, 0 failed, 0 skipped; 0 envs left there" in out, out
    wait_until(lambda: len(game(a, b, c)) == 11, 30, "the game to reach 10")
    got = game(a, b, c)
    assert [n for n, _, _ in got] == list(range(11)), got
    for n, receiver, sender in got:
        assert (receiver, sender) == ((child, parent) if n % 2 == 0 else (parent, child)), got
    assert len(game(b, c)) >= 5, "most of the game was not played after the drain"
    assert json.loads(ok(a, "ps", "--json")) == []
    for d in (a, b, c):
        assert "panic" not in d.console(), d.console()[-2000:]

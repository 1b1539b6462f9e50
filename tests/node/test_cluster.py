"""Clusters of real jmig-node daemons, as a user meets them: membership
(--join, --peers), failure detection and recovery, a clean leave, drain and
cordon (with the memory oracle memtest and the counting programs burn and
loop showing that every env went on where it was), an interrupted drain,
and the errors of the cluster commands.  Balancing is in test_balance.py.

Every node runs on its own loopback address (jmig.testing); the
`daemons` fixture kills them all at the end of each test."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

from jmig.node.cluster import FAIL_SECONDS, HEARTBEAT_SECONDS

from jmig.testing import NodeProcess

BURN = re.compile(r"burn ([0-9a-f]{8}): (\d+) \(([0-9a-f]{8})\)\n")
COUNTER = re.compile(r"Test Program, Env ID: (\d+), Counter: (\d+)\n")
PASS = re.compile(r"memtest: pass (\d+) ok, (\d+) pages verified")
BAD_MEMORY = ("MISMATCH", "is corrupt")
MOVED = re.compile(r"^env (\d+): moved to (\S+?)(?: as env (\d+))?$", re.M)

# The documented bound of failure detection (cluster.py): FAIL_SECONDS plus
# one heartbeat; the tests allow 5 s on this loaded 2-core machine.
DETECT_BOUND = FAIL_SECONDS + HEARTBEAT_SECONDS
DETECT_ALLOWED = 5.0


# -- helpers ----------------------------------------------------------------------------

def wait_until(pred, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def ok(d: NodeProcess, *argv) -> str:
    code, out, err = d.ctl(*argv)
    assert code == 0, f"jmigctl {' '.join(argv)} on {d.name} exited {code}: {err}{out}"
    return out


def view(d: NodeProcess) -> list[dict]:
    """`jmigctl nodes --json` on d."""
    return json.loads(ok(d, "nodes", "--json"))


def states(d: NodeProcess) -> dict[str, str]:
    """addr -> state, as d sees its cluster (d itself included)."""
    return {v["addr"]: v["state"] for v in view(d)}


def ps_all(d: NodeProcess) -> tuple[int, list[dict], list[dict]]:
    """`jmigctl ps --all --json` on d: (exit code, env rows, {node, error} rows)."""
    code, out, err = d.ctl("ps", "--all", "--json")
    rows = json.loads(out)
    return code, [r for r in rows if "envid" in r], [r for r in rows if "error" in r]


def spawn(d: NodeProcess, *argv) -> int:
    out = json.loads(ok(d, "spawn", "--json", *argv))
    return out["new_envid"]


def start_nodes(daemons, specs) -> list[NodeProcess]:
    """Start daemons at once, [(name, args)], args may name earlier ones by
    index via a callable; wait until all listen."""
    started = []
    for name, args in specs:
        args = args(started) if callable(args) else args
        started.append(daemons(name, *args, wait=False))
    for d in started:
        d.wait_listening()
    return started


def all_alive(nodes: list[NodeProcess]) -> bool:
    want = {d.addr for d in nodes}
    for d in nodes:
        v = view(d)
        if {x["addr"] for x in v} != want or any(x["state"] != "alive" for x in v):
            return False
    return True


def burns(text: str) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for env, n, _ in BURN.findall(text):
        out.setdefault(int(env, 16), []).append(int(n))
    return out


def loop_counters(text: str) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for env, n in COUNTER.findall(text):
        out.setdefault(int(env), []).append(int(n))
    return out


def memtest_passes(text: str) -> dict[int, list[int]]:
    """npages -> pass numbers (each memtest of a test has its own NPAGES)."""
    out: dict[int, list[int]] = {}
    for n, pages in PASS.findall(text):
        out.setdefault(int(pages), []).append(int(n))
    return out


def assert_no_bad_memory(*nodes: NodeProcess) -> None:
    for d in nodes:
        text = d.console()
        for w in BAD_MEMORY:
            assert w not in text, f"memtest found corrupt memory on {d.name}:\n" \
                f"{text[max(0, text.find(w) - 1500):text.find(w) + 500]}"


def assert_no_crash(*nodes: NodeProcess) -> None:
    for d in nodes:
        log = d.log()
        assert "unexpected error" not in log and "Traceback" not in log, \
            f"{d.name} logged an unexpected error:\n{log[-3000:]}"


def cordoned(d: NodeProcess, seen_by: NodeProcess | None = None) -> bool:
    v = {x["addr"]: x for x in view(seen_by or d)}
    return bool(v[d.addr]["load"].get("cordoned"))


def envs_of(d: NodeProcess, seen_by: NodeProcess) -> int:
    return {x["addr"]: x for x in view(seen_by)}[d.addr]["load"]["envs"]


def running_jobs(d: NodeProcess) -> list[dict]:
    return [j for j in json.loads(ok(d, "jobs", "--json")) if j["state"] == "running"]


# -- 1. joining ---------------------------------------------------------------------------

def test_four_nodes_join_and_see_each_other(daemons, tmp_path):
    """node1 plain, node2 and node3 --join node1, node4 --peers FILE naming
    node2 only: every node lists all four alive, itself once, first."""
    peers = tmp_path / "peers"
    n1, n2, n3 = start_nodes(daemons, [
        ("node1", []), ("node2", lambda s: ["--join", s[0].addr]),
        ("node3", lambda s: ["--join", s[0].addr])])
    peers.write_text(f"# node2 is all node4 knows\n\n  {n2.addr}  # the seed\n")
    n4 = daemons("node4", "--peers", str(peers))
    nodes = [n1, n2, n3, n4]
    t0 = time.monotonic()
    wait_until(lambda: all_alive(nodes), 10, "all four nodes to list each other alive")
    took = time.monotonic() - t0
    names = {d.addr: d.name for d in nodes}
    for d in nodes:
        v = view(d)
        assert [x["addr"] for x in v if x["self"]] == [d.addr], v
        assert v[0]["self"] is True and v[0]["addr"] == d.addr
        assert {x["addr"]: x["name"] for x in v} == names
        assert all(x["incarnation"] for x in v)
        assert all(x["load"]["envs"] == 0 and x["load"]["cordoned"] is False for x in v), v
    print(f"all four saw each other {took:.2f} s after node4 listened")

    e1 = spawn(n1, "loop", "1000")
    e4 = spawn(n4, "loop", "1000")
    code, rows, errors = ps_all(n2)
    assert code == 0 and errors == []
    got = {(r["node"], r["envid"], r["program"]) for r in rows}
    assert got == {(n1.addr, e1, "loop"), (n4.addr, e4, "loop")}, rows
    # The table says where each env is too.
    code, out, _ = n2.ctl("ps", "--all")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NODE", "ENV"]
    assert any(ln.split()[:2] == [n1.addr, str(e1)] for ln in lines), out
    assert any(ln.split()[:2] == [n4.addr, str(e4)] for ln in lines), out
    # The load heartbeats carry shows the new envs to every member.
    wait_until(lambda: {x["addr"]: x["load"]["envs"] for x in view(n3)}
               == {n1.addr: 1, n2.addr: 0, n3.addr: 0, n4.addr: 1}, 3,
               "node3 to see one env on node1 and node4 in their heartbeats")


# -- 2. failure detection and recovery ----------------------------------------------------------

def _time_until_all_report(observers: list[NodeProcess], member: NodeProcess, state: str,
                           timeout: float, t0: float) -> dict[str, float]:
    """Seconds from t0 until each observer first listed member in state."""
    seen: dict[str, float] = {}
    deadline = t0 + timeout + 2          # look a little longer, to report the real time
    while len(seen) < len(observers) and time.monotonic() < deadline:
        for d in observers:
            if d.name not in seen and states(d).get(member.addr) == state:
                seen[d.name] = round(time.monotonic() - t0, 2)
        time.sleep(0.05)
    return seen


def test_a_killed_or_stopped_member_is_failed_then_alive_again(daemons):
    nodes = start_nodes(daemons, [("node1", [])] + [
        (f"node{i}", lambda s: ["--join", s[0].addr]) for i in (2, 3, 4)])
    n1, n2, n3, n4 = nodes
    wait_until(lambda: all_alive(nodes), 10, "the four nodes to see each other")
    envs = {d.addr: spawn(d, "loop", "1000") for d in nodes}
    old_incarnation = {x["addr"]: x["incarnation"] for x in view(n1)}[n3.addr]

    # SIGKILL node3: every other node says it failed.
    others = [n1, n2, n4]
    t0 = time.monotonic()
    n3.kill()
    seen = _time_until_all_report(others, n3, "failed", DETECT_ALLOWED, t0)
    assert len(seen) == 3 and max(seen.values()) <= DETECT_ALLOWED, \
        f"seconds from SIGKILL to 'failed' per node: {seen} (documented bound " \
        f"{DETECT_BOUND} s, allowed {DETECT_ALLOWED} s)"
    print(f"SIGKILL seen as failed after {seen} s (bound {DETECT_BOUND} s)")
    for d in others:
        v = {x["addr"]: x for x in view(d)}
        assert {a: x["state"] for a, x in v.items()} == {
            n1.addr: "alive", n2.addr: "alive", n3.addr: "failed", n4.addr: "alive"}
        assert v[n3.addr]["heard_s"] >= FAIL_SECONDS

    # ps --all: exit 3 for the failed member, the others' envs still listed.
    code, rows, errors = ps_all(n2)
    assert code == 3
    assert {(r["node"], r["envid"]) for r in rows} == {
        (d.addr, envs[d.addr]) for d in others}
    assert [e["node"] for e in errors] == [n3.addr], errors
    assert "failed" in errors[0]["error"]["message"], errors
    code, out, err = n2.ctl("ps", "--all")
    assert code == 3 and n3.addr in err and str(envs[n1.addr]) in out

    # Restarted on the same address, without --join: alive again everywhere,
    # as another incarnation.
    n3.args = []
    n3.start()
    t0 = time.monotonic()

    def back() -> bool:
        for d in nodes:
            v = {x["addr"]: x for x in view(d)}
            if set(v) != {d.addr for d in nodes} or any(x["state"] != "alive"
                                                       for x in v.values()):
                return False
            if v[n3.addr]["incarnation"] == old_incarnation:
                return False
        return True
    wait_until(back, DETECT_ALLOWED, "every node (node3 too) to list the restarted node3 "
               "alive with a new incarnation and all four members alive", interval=0.1)
    print(f"restarted node3 alive everywhere after {time.monotonic() - t0:.2f} s")

    # SIGSTOP node2: failed; SIGCONT: alive again.
    others = [n1, n3, n4]
    t0 = time.monotonic()
    os.kill(n2.proc.pid, signal.SIGSTOP)
    try:
        seen = _time_until_all_report(others, n2, "failed", DETECT_ALLOWED, t0)
        assert len(seen) == 3 and max(seen.values()) <= DETECT_ALLOWED, \
            f"seconds from SIGSTOP to 'failed' per node: {seen} (documented bound " \
            f"{DETECT_BOUND} s, allowed {DETECT_ALLOWED} s)"
        print(f"SIGSTOP seen as failed after {seen} s")
    finally:
        os.kill(n2.proc.pid, signal.SIGCONT)
    t0 = time.monotonic()
    wait_until(lambda: all_alive(nodes), DETECT_ALLOWED,
               "every node (node2 too) to list all four alive after SIGCONT", interval=0.1)
    print(f"continued node2 alive everywhere after {time.monotonic() - t0:.2f} s")
    code, rows, errors = ps_all(n1)
    assert code == 0 and errors == []
    # node3's env went with its process; the others are all there.
    assert {(r["node"], r["envid"]) for r in rows} == {
        (d.addr, envs[d.addr]) for d in (n1, n2, n4)}


# -- 3. a clean leave ---------------------------------------------------------------------------

def test_a_member_that_stops_cleanly_is_forgotten_not_failed(daemons):
    nodes = start_nodes(daemons, [("node1", [])] + [
        (f"node{i}", lambda s: ["--join", s[0].addr]) for i in (2, 3)])
    n1, n2, n3 = nodes
    wait_until(lambda: all_alive(nodes), 10, "the three nodes to see each other")
    t0 = time.monotonic()
    n2.proc.terminate()
    seen_states: set[str] = set()

    def gone() -> bool:
        ok_ = True
        for d in (n1, n3):
            s = states(d)
            if n2.addr in s:
                seen_states.add(s[n2.addr])
                ok_ = False
        return ok_
    wait_until(gone, 3.0, "node1 and node3 to stop listing the node that left", interval=0.05)
    took = time.monotonic() - t0
    assert "failed" not in seen_states, seen_states
    assert n2.proc.wait(10) == 0
    for d in (n1, n3):
        assert states(d) == {n1.addr: "alive", n3.addr: "alive"}
    # ... and it stays forgotten (a departed node is not brought back by gossip).
    time.sleep(1.5)
    for d in (n1, n3):
        assert states(d) == {n1.addr: "alive", n3.addr: "alive"}
    print(f"left node forgotten after {took:.2f} s")


# -- 4. drain ----------------------------------------------------------------------------------

def _three_nodes(daemons) -> list[NodeProcess]:
    nodes = start_nodes(daemons, [("a", []), ("b", lambda s: ["--join", s[0].addr]),
                                  ("c", lambda s: ["--join", s[0].addr])])
    wait_until(lambda: all_alive(nodes), 10, "the three nodes to see each other")
    return nodes


def _fill(a: NodeProcess, memtest_pages: list[int], memtest_args=("64", "50"),
          wait: bool = True) -> dict:
    """4 burn, 3 loop 100 (the last one paused once it has counted), and a
    memtest per NPAGES on a; wait until each has printed on a (the loops
    only, unless wait)."""
    spawned = {"burn": [spawn(a, "burn", "65536") for _ in range(4)],
               "loop": [spawn(a, "loop", "100") for _ in range(3)],
               "memtest": {spawn(a, "memtest", str(n), *memtest_args): n
                           for n in memtest_pages}}
    wait_until(lambda: all(loop_counters(a.console()).get(e, [])[-2:] for e in spawned["loop"])
               and len(loop_counters(a.console()).get(spawned["loop"][-1], [])) >= 2,
               20, "every loop to count on a")
    paused = spawned["loop"][-1]
    ok(a, "pause", str(paused))
    spawned["paused"] = paused
    if not wait:
        return spawned
    wait_until(lambda: all(burns(a.console()).get(e) for e in spawned["burn"]), 30,
               "every burn to print a line on a")
    wait_until(lambda: all(memtest_passes(a.console()).get(n) for n in memtest_pages), 60,
               "every memtest to pass once on a")
    return spawned


def _programs(rows: list[dict]) -> Counter:
    return Counter(r["program"] for r in rows)


def test_drain_moves_every_env_off_the_node_and_each_goes_on_where_it_was(daemons):
    a, b, c = _three_nodes(daemons)
    pages = [64, 65, 66]
    spawned = _fill(a, pages)
    paused = spawned["paused"]
    paused_last = loop_counters(a.console())[paused][-1]

    t0 = time.monotonic()
    code, out, err = a.ctl("drain", a.addr)
    took = time.monotonic() - t0
    assert code == 0, f"drain exited {code}: {err}\n{out}"
    moved = {int(e): (to, int(new) if new else int(e)) for e, to, new in MOVED.findall(out)}
    all_envs = spawned["burn"] + spawned["loop"] + list(spawned["memtest"])
    assert set(moved) == set(all_envs), out
    assert all(to in (b.addr, c.addr) for to, _ in moved.values()), out
    assert len(re.findall(r"^env \d+: moving to ", out, re.M)) == 10, out
    assert f"{a.addr} drained: 10 envs moved, 0 failed, 0 skipped; 0 envs left there" in out
    print(f"drain of 10 envs took {took:.2f} s")

    # a is empty and cordoned; b and c have exactly what a had.
    assert json.loads(ok(a, "ps", "--json")) == []
    assert cordoned(a)
    # (b and c see a as its last heartbeat showed it: wait for one sent
    # after the drain, which cordoned a first and then emptied it.)
    wait_until(lambda: all(cordoned(a, seen_by=d) and envs_of(a, seen_by=d) == 0
                           for d in (b, c)), 3, "b and c to see a cordoned and empty")
    table = ok(b, "nodes").splitlines()
    assert table[0].split() == ["NODE", "NAME", "ID", "STATE", "ENVS", "RUNNABLE", "CPU",
                                "FREE", "JOBS", "FLAGS", "HEARD"]
    row = next(ln.split() for ln in table if ln.startswith(a.addr))
    assert row[1:5] == ["a", "-", "alive", "0"] and "cordoned" in row, table
    code, rows, errors = ps_all(b)
    assert code == 0 and errors == []
    assert {r["node"] for r in rows} <= {b.addr, c.addr}
    assert _programs(rows) == Counter(burn=4, loop=3, memtest=3), rows
    where = {(r["node"], r["envid"]): r for r in rows}
    assert set(where) == set(moved.values()), (where.keys(), moved)
    # The paused loop is still paused, and counts no further.
    to, new = moved[paused]
    assert "paused" in where[(to, new)]["state"], where[(to, new)]

    dest = {b.addr: b, c.addr: c}

    def on_dest(envid: int, parse) -> list[int]:
        """What env envid of a printed on its new node (nothing it printed
        there before the drain: b and c had no envs)."""
        to, new = moved[envid]
        return parse(dest[to].console()).get(new, [])

    def memtest_on_dest(envid: int) -> list[int]:
        return memtest_passes(dest[moved[envid][0]].console()).get(spawned["memtest"][envid], [])

    running_loops = [e for e in spawned["loop"] if e != paused]
    wait_until(lambda: all(memtest_on_dest(e) for e in spawned["memtest"])
               and all(on_dest(e, burns) for e in spawned["burn"])
               and all(on_dest(e, loop_counters) for e in running_loops), 30,
               "each memtest to pass, each burn and running loop to print, on its new node")
    a_text = a.console()           # read now: all a printed is in its stdout file by now

    # Every memtest verifies all its pages on its new node (the memory oracle),
    # starting with the pass after its last on a.
    for e, n in spawned["memtest"].items():
        last_on_a = memtest_passes(a_text)[n][-1]
        there = memtest_on_dest(e)
        assert there[0] == last_on_a + 1, \
            f"memtest {n} pages (env {e}): last pass on a {last_on_a}, on " \
            f"{moved[e][0]} {there[:5]}"
    # Every burn goes on counting from its last line on a; so do the running loops.
    for e in spawned["burn"]:
        last_on_a = burns(a_text)[e][-1]
        there = on_dest(e, burns)
        assert there[0] == last_on_a + 1, \
            f"burn {e}: last line on a {last_on_a}, lines on {moved[e][0]}: {there[:5]}"
    for e in running_loops:
        last_on_a = loop_counters(a_text)[e][-1]
        there = on_dest(e, loop_counters)
        assert there[0] == last_on_a + 1, \
            f"loop {e}: last counter on a {last_on_a}, on {moved[e][0]}: {there[:5]}"
    # The paused one counted no further, neither on a nor on its new node.
    assert loop_counters(a_text)[paused][-1] == paused_last
    assert moved[paused][1] not in loop_counters(dest[moved[paused][0]].console()), \
        "the paused loop ran on its new node"
    assert_no_bad_memory(a, b, c)
    assert_no_crash(a, b, c)

    # uncordon: a is schedulable again, for itself and the others.
    out = ok(a, "uncordon", a.addr)
    assert "schedulable again" in out
    assert not cordoned(a)
    wait_until(lambda: not cordoned(a, seen_by=b), 3, "b to see a uncordoned")


# -- 5. an interrupted drain ---------------------------------------------------------------

def test_an_interrupted_drain_leaves_every_env_on_exactly_one_node(daemons):
    a, b, c = _three_nodes(daemons)
    pages = [256, 257, 258]
    spawned = _fill(a, pages, memtest_args=("64", "20"), wait=False)
    started = Counter(burn=4, loop=3, memtest=3)

    env = dict(os.environ, JMIG_NODE=a.addr, JMIG_SECRET_FILE=str(a.secret_file))
    proc = subprocess.Popen([sys.executable, "-m", "jmig.ctl.main", "drain", a.addr],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        while True:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if ": moved to " in line:
                proc.kill()
                break
    finally:
        proc.kill()
        proc.wait(10)
    assert any(": moved to " in ln for ln in lines), \
        f"no 'moved' line from the drain: {lines} {proc.stderr.read()}"
    proc.stderr.close()
    proc.stdout.close()

    # The move in flight (if any) ends; nothing else starts.
    wait_until(lambda: not running_jobs(a), 60, "a to have no running jobs")
    time.sleep(0.5)
    assert not running_jobs(a), "a started another move after the drain's client went away"
    code, rows, errors = ps_all(b)
    assert code == 0 and errors == []
    left = [r for r in rows if r["node"] == a.addr]
    assert _programs(rows) == started, rows
    ids = Counter(r["envid"] for r in rows)
    assert all(n == 1 for n in ids.values()), f"an env is on more than one node: {rows}"
    assert left, "the interrupted drain moved every env: nothing was interrupted"
    assert cordoned(a)
    jobs = json.loads(ok(a, "jobs", "--json"))
    assert all(j["reason"] == "drain of a" for j in jobs)
    moved_first = len([j for j in jobs if j["state"] == "succeeded"])
    print(f"the interrupted drain moved {moved_first} envs, {len(left)} left on a")
    assert moved_first + len(left) == 10, jobs

    # Every memtest is sound wherever it is now.
    before = {d.addr: len(d.console()) for d in (a, b, c)}
    nodes = {d.addr: d for d in (a, b, c)}
    by_pages = {n: e for e, n in spawned["memtest"].items()}
    where = {r["envid"]: r["node"] for r in rows}

    def passed_since(n: int) -> bool:
        d = nodes[where[by_pages[n]]]
        return bool(memtest_passes(d.console()[before[d.addr]:]).get(n))
    wait_until(lambda: all(passed_since(n) for n in pages), 60,
               "each memtest to pass again where it is")
    assert_no_bad_memory(a, b, c)

    # Draining again moves the rest.
    code, out, err = a.ctl("drain", a.addr)
    assert code == 0, f"second drain exited {code}: {err}\n{out}"
    assert len(MOVED.findall(out)) == len(left), out
    assert json.loads(ok(a, "ps", "--json")) == []
    code, rows, errors = ps_all(b)
    assert code == 0 and errors == []
    assert {r["node"] for r in rows} <= {b.addr, c.addr}
    assert _programs(rows) == started, rows
    assert all(n == 1 for n in Counter(r["envid"] for r in rows).values()), rows
    assert cordoned(a)
    assert_no_bad_memory(a, b, c)
    assert_no_crash(a, b, c)


def test_drain_leaves_a_pinned_env_unless_forced(daemons):
    a, b = start_nodes(daemons, [("a", []), ("b", lambda s: ["--join", s[0].addr])])
    wait_until(lambda: all_alive([a, b]), 10, "the two nodes to see each other")
    free, pinned = spawn(a, "loop", "1000"), spawn(a, "loop", "1000")
    assert "pinned" in ok(a, "pin", str(pinned))
    code, out, err = a.ctl("drain", a.addr)
    assert code == 1, (code, out, err)
    assert re.search(rf"^env {pinned}: skipped \(pinned\)$", out, re.M), out
    assert {int(e) for e, _, _ in MOVED.findall(out)} == {free}, out
    assert "1 env moved, 0 failed, 1 skipped; 1 env left there" in out, out
    rows = json.loads(ok(a, "ps", "--json"))
    assert [r["envid"] for r in rows] == [pinned] and "pinned" in rows[0]["state"], rows
    code, out, err = a.ctl("drain", a.addr, "--force")
    assert code == 0, (code, out, err)
    assert {int(e) for e, _, _ in MOVED.findall(out)} == {pinned}, out
    code, rows, errors = ps_all(b)
    assert code == 0 and errors == []
    assert sorted((r["node"], r["envid"]) for r in rows) == sorted(
        [(b.addr, free), (b.addr, pinned)]), rows


# -- 7. errors a user meets -------------------------------------------------------------------

def test_drain_of_a_node_that_knows_no_other_member_fails_and_leaves_the_env(daemons):
    a = daemons("alone")
    e = spawn(a, "loop", "50")
    wait_until(lambda: loop_counters(a.console()).get(e), 10, "the loop to count")
    code, out, err = a.ctl("drain", a.addr)
    assert code == 1, (code, out, err)
    assert re.search(rf"^env {e}: FAILED: .*knows no other member.*\(start it with --join\)",
                     out, re.M), out
    assert "0 envs moved, 1 failed" in out and "1 env left there" in out, out
    rows = json.loads(ok(a, "ps", "--json"))
    assert [r["envid"] for r in rows] == [e] and "paused" not in rows[0]["state"]
    n = len(loop_counters(a.console())[e])
    wait_until(lambda: len(loop_counters(a.console())[e]) > n + 2, 5,
               "the env to go on counting after the failed drain")
    # JSON: the failure with its code.
    code, out, err = a.ctl("drain", a.addr, "--json")
    res = json.loads(out)
    assert code == 1 and res["left"] == [e] and res["moved"] == []
    assert res["failed"][0]["envid"] == e and res["failed"][0]["error"]["code"] == "unreachable"


def test_cluster_commands_refuse_bad_arguments(daemons):
    a = daemons("a")
    code, out, err = a.ctl("balance", "maybe")
    assert code == 2 and "maybe" in err, (code, out, err)
    code, out, err = a.ctl("pin", "9999")
    assert code == 1 and "9999" in err, (code, out, err)
    code, out, err = a.ctl("pin", "9999", "--json")
    assert code == 1 and json.loads(out)["error"]["code"] == "no-such-env", (code, out, err)
    code, out, err = a.ctl("unpin", "9999")
    assert code == 1, (code, out, err)


def _node_cmdline(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jmig.node.main", "--host", "127.0.0.1",
                           "--port", "59001", "--data-dir", str(tmp_path / "d"),
                           "--secret-file", str(tmp_path / "secret"), *args],
                          capture_output=True, text=True, timeout=30)


def test_node_refuses_a_bad_join_address_or_peers_file(tmp_path):
    r = _node_cmdline(tmp_path, "--join", "notanaddress")
    assert r.returncode == 2, r
    assert "notanaddress" in r.stderr, r.stderr
    peers = tmp_path / "peers"
    peers.write_text("127.0.0.2:50001\n# fine so far\nnot an address\n")
    r = _node_cmdline(tmp_path, "--peers", str(peers))
    assert r.returncode == 2, r
    assert "line 3" in r.stderr and str(peers) in r.stderr, r.stderr
    r = _node_cmdline(tmp_path, "--peers", str(tmp_path / "missing"))
    assert r.returncode == 2 and "missing" in r.stderr, r

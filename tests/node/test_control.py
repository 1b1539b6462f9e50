"""The process commands over the control protocol, on in-process nodes
(pytest-trio, the `cluster` fixture): fast, and several nodes at once.
jmigctl's main() runs against them in a worker thread."""
import functools
import io
import re

import pytest
import trio

from jmig import programs
from jmig.ctl.client import ControlClient, RemoteError
from jmig.ctl.main import main as jmigctl_main

from jmig.testing import console_of, wait_for

COUNTER = re.compile(r"Test Program, Env ID: (\d+), Counter: (\d+)\n")


def counters(node, envid: int) -> list[int]:
    return [int(n) for e, n in COUNTER.findall(console_of(node)) if int(e) == envid]


async def wait_counter(node, envid: int, at_least: int = 1, timeout: float = 10) -> list[int]:
    await wait_for(lambda: len(counters(node, envid)) >= at_least, timeout)
    return counters(node, envid)


async def ps_of(cluster, node) -> dict[int, dict]:
    return {e["envid"]: e for e in (await cluster.call(node, "ps"))["envs"]}


async def refused(cluster, node, op, args=None) -> RemoteError:
    with pytest.raises(RemoteError) as exc:
        await cluster.call(node, op, args)
    return exc.value


async def ctl(cluster, node, *argv) -> tuple[int, str, str]:
    """jmigctl main(argv) against an in-process node, in a thread."""
    secret = cluster.tmp / "secret"
    if not secret.exists():
        secret.write_bytes(cluster.secret)
        secret.chmod(0o600)
    out, err = io.StringIO(), io.StringIO()
    env = {"JMIG_NODE": cluster.addr(node), "JMIG_SECRET_FILE": str(secret), "HOME": str(cluster.tmp)}
    code = await trio.to_thread.run_sync(functools.partial(
        jmigctl_main, list(argv), environ=env, stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def node(cluster):
    """One node booting the original test program as env 4100 (a line every 50 ms)."""
    n = await cluster.start("n1", boot=[("loop", ("50",), 4100)])
    await wait_counter(n, 4100)
    return n


# -- pause, resume, ps ---------------------------------------------------------------

async def test_pause_stops_the_counter_and_resume_continues_from_the_next_value(cluster, node):
    await wait_counter(node, 4100, 3)
    assert await cluster.call(node, "pause", {"envid": 4100}) == {"envid": 4100}
    stopped = counters(node, 4100)
    await trio.sleep(0.3)                                     # six periods
    assert counters(node, 4100) == stopped
    await cluster.call(node, "resume", {"envid": 4100})
    after = await wait_counter(node, 4100, len(stopped) + 2)
    assert after[len(stopped):len(stopped) + 2] == [stopped[-1] + 1, stopped[-1] + 2]
    assert after == list(range(len(after)))                   # no value skipped or repeated


async def test_ps_shows_status_and_state(cluster, node):
    envs = await ps_of(cluster, node)
    e = envs[4100]
    assert e["status"] in ("Runnable", "Running") and "paused" not in e["state"]
    assert e["name"] == "loop" and e["parent"] == 0 and e["pages"] > 0 and e["runs"] > 0
    await cluster.call(node, "pause", {"envid": 4100})
    e = (await ps_of(cluster, node))[4100]
    assert e["status"] == "Sleeping" and e["state"].split(", ")[0] == "paused"
    await cluster.call(node, "resume", {"envid": 4100})
    e = (await ps_of(cluster, node))[4100]
    assert e["status"] != "Sleeping" or "paused" not in e["state"]


async def test_a_spawned_env_can_be_created_paused(cluster, node):
    res = await cluster.call(node, "spawn", {"program": "loop", "args": ["20"], "paused": True})
    envid = res["envid"]
    e = (await ps_of(cluster, node))[envid]
    assert e["status"] == "Sleeping" and "paused" in e["state"]
    await trio.sleep(0.1)
    assert counters(node, envid) == []
    await cluster.call(node, "resume", {"envid": envid})
    assert (await wait_counter(node, envid, 2))[:2] == [0, 1]


# -- copy and kill -----------------------------------------------------------------

async def test_copy_makes_a_paused_env_whose_counter_continues_from_the_original(cluster, node):
    await wait_counter(node, 4100, 3)
    await cluster.call(node, "pause", {"envid": 4100})
    last = counters(node, 4100)[-1]
    res = await cluster.call(node, "copy", {"envid": 4100})
    new = res["new_envid"]
    assert res["envid"] == 4100 and new != 4100
    envs = await ps_of(cluster, node)
    assert envs[new]["status"] == "Sleeping" and "paused" in envs[new]["state"]
    assert envs[new]["parent"] == 4100 and envs[new]["name"] == "loop"
    assert envs[new]["pages"] == envs[4100]["pages"]
    await trio.sleep(0.1)
    assert counters(node, new) == []                          # created paused
    since = len(console_of(node))
    await cluster.call(node, "resume", {"envid": new})
    await wait_for(lambda: len(COUNTER.findall(console_of(node)[since:])) >= 3, 10)
    got = [(int(e), int(n)) for e, n in COUNTER.findall(console_of(node)[since:])]
    # The copy's counter goes on from the original's, and only the copy
    # runs (the original stays paused).  loop reads its env id, then prints
    # it: the copy's first line may name 4100, read before the pause.
    assert [n for _, n in got] == list(range(last + 1, last + 1 + len(got))), got
    assert got[0][0] in (4100, new) and all(e == new for e, _ in got[1:]), got


async def test_kill_removes_the_env_and_the_kernel_says_so(cluster, node):
    assert await cluster.call(node, "kill", {"envid": 4100}) == {"envid": 4100}
    assert 4100 not in await ps_of(cluster, node)
    text = console_of(node)
    assert "[00000000] destroying 00001004\n" in text
    assert "[00000000] free env 00001004\n" in text
    n = len(counters(node, 4100))
    await trio.sleep(0.15)
    assert len(counters(node, 4100)) == n


async def test_killing_a_copy_leaves_the_original_running(cluster, node):
    new = (await cluster.call(node, "copy", {"envid": 4100}))["new_envid"]
    await cluster.call(node, "kill", {"envid": new})
    assert f"[00000000] free env {new:08x}\n" in console_of(node)
    n = len(counters(node, 4100))
    await wait_counter(node, 4100, n + 1)


# -- spawn ---------------------------------------------------------------------------

async def test_spawn_a_bundled_program(cluster, node):
    res = await cluster.call(node, "spawn", {"program": "hello"})
    envid = res["envid"]
    assert res["program"] == "hello"
    await wait_for(lambda: f"i am environment {envid:08x}" in console_of(node))
    await wait_for(lambda: f"[{envid:08x}] exiting gracefully" in console_of(node))


async def test_spawn_with_arguments(cluster, node):
    envid = (await cluster.call(node, "spawn", {"program": "loop", "args": ["30"]}))["envid"]
    await wait_counter(node, envid, 1)


async def test_spawn_of_an_unknown_program_is_refused_and_names_the_bundled_ones(cluster, node):
    err = await refused(cluster, node, "spawn", {"program": "nosuchprog"})
    assert err.code == "no-such-program"
    assert "nosuchprog" in err.message and "hello" in err.message


async def test_spawn_uploads_elf_bytes(cluster, node):
    elf = programs.load("hello")
    envid = (await cluster.call(node, "spawn", {"program": "myhello", "elf": elf}))["envid"]
    await wait_for(lambda: f"i am environment {envid:08x}" in console_of(node))
    e_line = f"[00000000] new env {envid:08x}"
    assert e_line in console_of(node)


@pytest.mark.parametrize("elf", [b"", b"garbage" * 50, b"\x7fELF" + b"\0" * 60,
                                 programs.load("hello")[:100]],
                         ids=["empty", "garbage", "bare-magic", "truncated"])
async def test_spawn_of_an_unreadable_elf_is_refused_with_bad_elf(cluster, node, elf):
    before = await ps_of(cluster, node)
    err = await refused(cluster, node, "spawn", {"program": "bad", "elf": elf})
    assert err.code == "bad-elf", err
    assert err.message
    assert set(await ps_of(cluster, node)) == set(before)    # nothing was created


async def test_spawn_of_a_path_like_program_name_is_refused(cluster, node):
    err = await refused(cluster, node, "spawn", {"program": "../../etc/passwd"})
    assert err.code == "bad-name"


async def test_spawn_runs_a_program_from_the_nodes_disk(cluster, node):
    node.disk.write_program("diskhello", programs.load("hello"))
    envid = (await cluster.call(node, "spawn", {"program": "diskhello"}))["envid"]
    await wait_for(lambda: f"i am environment {envid:08x}" in console_of(node))
    ls = await cluster.call(node, "ls")
    assert [p["name"] for p in ls["programs"]] == ["diskhello"]


# -- refusals ------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["pause", "resume", "kill", "copy", "vmmap"])
async def test_an_unknown_env_is_refused(cluster, node, op):
    err = await refused(cluster, node, op, {"envid": 99999})
    assert err.code == "no-such-env" and "99999" in err.message


async def test_pausing_a_paused_env_is_refused(cluster, node):
    await cluster.call(node, "pause", {"envid": 4100})
    err = await refused(cluster, node, "pause", {"envid": 4100})
    assert err.code == "bad-state" and "already paused" in err.message


async def test_resuming_a_running_env_is_refused(cluster, node):
    err = await refused(cluster, node, "resume", {"envid": 4100})
    assert err.code == "bad-state" and "not paused" in err.message


async def test_resuming_a_dead_env_is_refused(cluster, node):
    envid = (await cluster.call(node, "spawn", {"program": "hello"}))["envid"]
    await wait_for(lambda: f"[{envid:08x}] free env {envid:08x}" in console_of(node))
    err = await refused(cluster, node, "resume", {"envid": envid})
    assert err.code == "no-such-env"
    err = await refused(cluster, node, "kill", {"envid": 4100 + 0x1000})   # same slot, other generation
    assert err.code == "no-such-env"


# -- the node ------------------------------------------------------------------------

async def test_info(cluster, node):
    info = await cluster.call(node, "info")
    assert info["name"] == "n1" and info["host"] == node.cfg.host
    assert info["ports"] == {"normal": 50001, "pgfault": 50002, "pager": 50003, "control": 50004}
    m = info["memory"]
    assert m["total"] == 64 << 20 and m["used"] + m["free"] == m["total"] and m["used"] > 0
    assert info["envs"] == 1 and info["cpus"] == 1 and info["instructions"] > 0
    assert info["uptime"] >= 0 and info["version"]


async def test_ls(cluster, node):
    ls = await cluster.call(node, "ls")
    assert set(ls["bundled"]) >= {"hello", "loop", "memtest", "forktree"}
    assert ls["programs"] == [] and ls["images"] == []


async def test_vmmap(cluster, node):
    res = await cluster.call(node, "vmmap", {"envid": 4100})
    ranges = res["ranges"]
    assert res["envid"] == 4100 and ranges
    assert ranges[0]["start"] == 0x00800000                   # the program text
    assert any(r["end"] == 0xEEBFE000 for r in ranges)        # the user stack (USTACKTOP)
    for r in ranges:
        assert r["end"] - r["start"] == r["pages"] * 4096
        assert r["perm"] & 0x5 == 0x5 and r["state"] in ("present", "dirty")
    assert sum(r["pages"] for r in ranges) == (await ps_of(cluster, node))[4100]["pages"]


async def test_console_shows_recent_output(cluster, node):
    res = await cluster.call(node, "console", {"lines": 5})
    assert "Test Program, Env ID: 4100" in res["text"]
    full = await cluster.call(node, "console")
    assert "[00000000] new env 00001004" in full["text"]


async def test_console_follow_streams_new_output_until_the_client_leaves(cluster, node):
    got = []
    start = len(counters(node, 4100))
    async with await ControlClient.open(cluster.addr(node), cluster.secret) as c:
        with trio.move_on_after(5) as scope:
            def on_push(kind, data):
                got.append((kind, data))
                if len(COUNTER.findall("".join(d.get("text", "") for _, d in got))) >= start + 3:
                    scope.cancel()
            await c.request("console", {"follow": True, "lines": 0}, on_push)
        assert scope.cancelled_caught, "the follow never delivered three new lines"
    assert all(k == "console" for k, _ in got)
    assert any(d.get("envid") == 4100 for _, d in got)
    await wait_for(lambda: not node.console.followers)        # the node let go of it
    assert 4100 in await ps_of(cluster, node)


async def test_stats(cluster, node):
    res = await cluster.call(node, "stats")
    assert res["info"]["name"] == "n1"
    assert isinstance(res["pager"], dict)


# -- several nodes ---------------------------------------------------------------------

async def test_nodes_on_distinct_addresses_share_the_original_ports(cluster, node):
    b = await cluster.start("n2")
    assert b.cfg.host != node.cfg.host and b.ports == node.ports
    res = await cluster.call(b, "spawn", {"program": "loop", "args": ["50"]})
    await wait_counter(b, res["envid"])
    assert set(await ps_of(cluster, b)) == {res["envid"]}
    assert set(await ps_of(cluster, node)) == {4100}
    await cluster.call(b, "pause", {"envid": res["envid"]})
    n = len(counters(node, 4100))
    await wait_counter(node, 4100, n + 1)                     # the other node keeps going
    info_a, info_b = await cluster.call(node, "info"), await cluster.call(b, "info")
    assert (info_a["name"], info_b["name"]) == ("n1", "n2")


# -- jmigctl main() against in-process nodes --------------------------------------------

async def test_jmigctl_pause_ps_resume(cluster, node):
    assert await ctl(cluster, node, "pause", "0x1004") == (0, "Process 4100 is paused.\n", "")
    code, out, err = await ctl(cluster, node, "ps")
    assert code == 0, err
    row = next(l for l in out.splitlines() if l.startswith("4100"))
    assert row.split()[:5] == ["4100", "00001004", "0", "Sleeping", "loop"] and "paused" in row
    assert await ctl(cluster, node, "resume", "4100") == (0, "Process 4100 is resumed.\n", "")


async def test_jmigctl_copy_and_kill(cluster, node):
    code, out, err = await ctl(cluster, node, "copy", "4100")
    assert code == 0, err
    m = re.fullmatch(r"Copying from Env: 4100\nNew Env Created: (\d+)\n", out)
    assert m, out
    new = int(m.group(1))
    assert await ctl(cluster, node, "kill", str(new)) == (0, f"Process {new} is killed.\n", "")
    code, out, err = await ctl(cluster, node, "ps", "-q")
    assert out.split() == ["4100"]


async def test_jmigctl_refusals_exit_1(cluster, node):
    code, out, err = await ctl(cluster, node, "pause", "99999")
    assert (code, out) == (1, "") and "no env 99999" in err and err.startswith("jmigctl: ")
    await ctl(cluster, node, "pause", "4100")
    code, out, err = await ctl(cluster, node, "pause", "4100")
    assert code == 1 and "already paused" in err


async def test_jmigctl_json_output(cluster, node):
    code, out, err = await ctl(cluster, node, "ps", "--json")
    import json
    envs = json.loads(out)
    assert code == 0 and [e["envid"] for e in envs] == [4100]
    assert {"envid", "parent", "status", "name", "state", "pages", "runs"} <= set(envs[0])
    code, out, err = await ctl(cluster, node, "info", "--json")
    assert json.loads(out)["ports"]["control"] == 50004

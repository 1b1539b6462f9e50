"""Load on one in-process node: a thousand envs at once, and fifty clients
talking to it at the same time."""
import functools
import io

import pytest
import trio

from jmig.ctl.client import ControlClient
from jmig.ctl.main import main as jmigctl_main
from jmig.kernel.env import NENV

from jmig.testing import console_of, wait_for

N_ENVS = 1000
N_CLIENTS = 50


def record_writers(node) -> set[int]:
    """The envs that have written to the node's console (its history is
    bounded, so keep our own record)."""
    seen: set[int] = set()
    write = node.console.write

    def recording_write(text: str, envid: int = 0) -> None:
        if envid:
            seen.add(envid)
        write(text, envid)
    node.console.write = recording_write
    return seen


@pytest.mark.slow
async def test_a_thousand_envs_all_run_and_killing_them_returns_the_memory(cluster):
    assert N_ENVS < NENV
    node = await cluster.start("busy")
    printed = record_writers(node)
    async with await ControlClient.open(cluster.addr(node), cluster.secret) as c:
        free0 = (await c.request("info"))["memory"]["free"]
        envids = []
        for _ in range(N_ENVS):
            res = await c.request("spawn", {"program": "loop", "args": ["1000"]})
            envids.append(res["envid"])
        assert len(set(envids)) == N_ENVS

        ps = (await c.request("ps"))["envs"]
        assert sorted(e["envid"] for e in ps) == sorted(envids)
        assert {e["name"] for e in ps} == {"loop"}
        info = await c.request("info")
        assert info["envs"] == N_ENVS and info["memory"]["free"] < free0

        # Every one of them runs: each prints its first counter line.
        await wait_for(lambda: printed >= set(envids), timeout=120, interval=0.1)
        assert f"Env ID: {envids[-1]}, Counter: 0\n" in console_of(node)

        # jmigctl lists them too.
        secret = cluster.tmp / "secret"
        secret.write_bytes(cluster.secret)
        secret.chmod(0o600)
        out, err = io.StringIO(), io.StringIO()
        code = await trio.to_thread.run_sync(functools.partial(
            jmigctl_main, ["ps", "-q"], environ={"JMIG_NODE": cluster.addr(node),
                                                 "JMIG_SECRET_FILE": str(secret)},
            stdout=out, stderr=err))
        assert code == 0, err.getvalue()
        assert sorted(map(int, out.getvalue().split())) == sorted(envids)

        for envid in envids:
            await c.request("kill", {"envid": envid})
        assert (await c.request("ps"))["envs"] == []
        info = await c.request("info")
        assert info["envs"] == 0
        assert info["memory"]["free"] == free0
    node.kernel.check_invariants()


async def test_fifty_clients_at_once_are_all_answered(cluster):
    node = await cluster.start("shared", boot=[("loop", ("50",), 4100)])
    answered: dict[int, list[str]] = {}

    async def client(i: int) -> None:
        done = answered.setdefault(i, [])
        async with await ControlClient.open(cluster.addr(node), cluster.secret) as c:
            ps = await c.request("ps")
            assert 4100 in [e["envid"] for e in ps["envs"]]
            done.append("ps")
            info = await c.request("info")
            assert info["name"] == "shared"
            done.append("info")
            envid = (await c.request("spawn", {"program": "loop", "args": ["100"],
                                               "paused": i % 2 == 0}))["envid"]
            done.append("spawn")
            if i % 2 == 0:
                await c.request("resume", {"envid": envid})
                done.append("resume")
            else:
                await c.request("pause", {"envid": envid})
                done.append("pause")
            await c.request("vmmap", {"envid": envid})
            await c.request("console", {"lines": 10})
            await c.request("kill", {"envid": envid})
            done.append("kill")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(N_CLIENTS):
                nursery.start_soon(client, i)
    assert len(answered) == N_CLIENTS
    for i, done in answered.items():
        assert done == ["ps", "info", "spawn", "resume" if i % 2 == 0 else "pause", "kill"]
    envs = (await cluster.call(node, "ps"))["envs"]
    assert [e["envid"] for e in envs] == [4100]
    await wait_for(lambda: node.admission.sessions == 0 and node.admission.preauth == 0)
    n = console_of(node).count("Env ID: 4100,")
    await wait_for(lambda: console_of(node).count("Env ID: 4100,") > n)   # still running


async def test_fifty_clients_at_once_with_bad_secrets_among_them(cluster):
    node = await cluster.start("mixed", boot=[("loop", ("50",), 4100)])
    results: list[str] = []

    async def client(i: int) -> None:
        secret = cluster.secret if i % 5 else b"a wrong secret, %d ......" % i
        try:
            async with await ControlClient.open(cluster.addr(node), secret) as c:
                await c.request("ps")
                results.append("ok")
        except Exception as exc:                     # AuthError for the wrong secrets
            results.append(type(exc).__name__)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(N_CLIENTS):
                nursery.start_soon(client, i)
    assert sorted(results) == sorted(["ok"] * 40 + ["AuthError"] * 10)
    await wait_for(lambda: node.refused == 10)

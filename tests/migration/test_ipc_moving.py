"""Messages to an env while it moves (in-process nodes, real TCP, a proxy
that holds the migration's link): the receiver, blocked in ipc_recv, is
held by its migration while its peer keeps trying to send; the sends
answer -E_IPC_NOT_RECV meanwhile (none lands in the copy that is about to
go away), and once the env runs on the other node the next try reaches
it there, exactly once."""
import re

import trio

from jmig.ctl.client import ControlClient

from .helpers import start
from .test_deadlines import _handshake_bytes, _proxy_to

GOT = re.compile(r"^([0-9a-f]+) got (\d+) from ([0-9a-f]+)$", re.M)


def game(*nodes) -> list[tuple[int, int, int]]:
    return sorted((int(n), int(x, 16), int(y, 16)) for d in nodes
                  for x, n, y in GOT.findall(d.rec.text()))


async def call(cluster, node, op, args=None):
    async with await ControlClient.open(cluster.addr(node), cluster.secret) as c:
        return await c.request(op, args)


async def until(pred, timeout=20.0):
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


async def test_sends_to_an_env_held_by_its_migration_wait_and_then_reach_it_there(cluster):
    a = await start(cluster, "a")
    b = await start(cluster, "b", join=(cluster.addr(a),))
    await until(lambda: a.membership.alive() and b.membership.alive())
    parent = (await call(cluster, a, "spawn", {"program": "pingpong", "args": ["400"]}))["envid"]
    await until(lambda: len(game(a)) >= 2)        # the parent got 1: the child waits in ipc_recv
    # The parent naps 400 ms before it sends 2.  Pause it in that nap, in
    # the same step as the check above (nothing else runs in between), so
    # that the child is still waiting for 2 when its migration holds it,
    # however long the steps below take on a loaded machine.
    a.kernel.pause(parent)
    child = next(e["envid"] for e in (await call(cluster, a, "ps"))["envs"]
                 if e["parent"] == parent)
    await until(lambda: a.kernel.envs[child & 0x3FF].ipc_recving)  # waiting for 2
    proxy = await _proxy_to(cluster.nursery, b)
    proxy.hold_after(c2s=_handshake_bytes("normal", "a") + 20)
    runs = {}

    async def migrate():
        runs["result"] = await call(cluster, a, "migrate", {"envid": child, "to": proxy.addr,
                                                            "resume": True})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(migrate)
        await until(lambda: proxy.links and proxy.links[0].held.is_set())
        # Held: the child is frozen on a, still waiting for 2; the parent,
        # resumed, ends its nap and keeps trying (ipc_send's loop:
        # -E_IPC_NOT_RECV, sys_yield, again).
        assert len(game(a, b)) == 2 and a.kernel.envs[child & 0x3FF].frozen == "migrating"
        await call(cluster, a, "resume", {"envid": parent})     # the rest of its nap, then it tries
        first = a.kernel.envs[parent & 0x3FF].runs
        await until(lambda: a.kernel.envs[parent & 0x3FF].runs > first + 1)
        before = a.kernel.envs[parent & 0x3FF].runs
        await trio.sleep(1.0)
        tries = a.kernel.envs[parent & 0x3FF].runs - before
        assert tries > 20, f"the parent ran {tries} times while the child was held"
        assert len(game(a, b)) == 2, game(a, b)       # nothing was delivered meanwhile
        proxy.resume()
    assert runs["result"]["new_envid"] == child
    await until(lambda: len(game(a, b)) == 11, timeout=30)
    got = game(a, b)
    assert [n for n, _, _ in got] == list(range(11)), got
    for n, receiver, sender in got:
        assert (receiver, sender) == ((child, parent) if n % 2 == 0 else (parent, child)), got
    assert (2, child, parent) in game(b)            # the first value after the move, on b
    assert "panic" not in a.rec.text() + b.rec.text()


async def test_a_move_leaves_a_pointer_that_the_sends_after_it_follow(cluster):
    """The origin of a move keeps where the env went: its envs' sends go
    there at once, without asking every node where the env is."""
    a = await start(cluster, "a")
    b = await start(cluster, "b", join=(cluster.addr(a),))
    await until(lambda: a.membership.alive() and b.membership.alive())
    parent = (await call(cluster, a, "spawn", {"program": "pingpong", "args": ["200"]}))["envid"]
    await until(lambda: len(game(a)) >= 2)
    child = next(e["envid"] for e in (await call(cluster, a, "ps"))["envs"]
                 if e["parent"] == parent)
    r = await call(cluster, a, "migrate", {"envid": child, "to": cluster.addr(b), "resume": True})
    assert r["new_envid"] == child
    assert a.remote.where[child] == cluster.addr(b)
    await until(lambda: len(game(a, b)) == 11, timeout=30)
    assert [n for n, _, _ in game(a, b)] == list(range(11))
    assert a.remote.stats["locate_broadcasts"] == 0
    # The child's exit on b tells every member (env_gone): the pointer goes.
    await until(lambda: child not in a.remote.where, timeout=10)
    assert "panic" not in a.rec.text() + b.rec.text()

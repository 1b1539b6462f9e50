"""The pagemap control op (node/pagemap.py): its validation, and the page
states it reports on real nodes while a pgfault migration brings the pages
of a memtest in."""
import pytest
import trio

from jmig.ctl.client import RemoteError
from jmig import programs
from jmig.kernel.kernel import Kernel
from jmig.kernel.snapshot import PAGE_DIRTY, PAGE_PRESENT, PAGE_REMOTE
from jmig.node.pagemap import MAX_RUNS, STATES

MT_BASE = 0x10000000


async def call(cluster, node, op, args=None):
    return await cluster.call(node, op, args)


def expand(pm: dict) -> dict[int, str]:
    """vpn -> state name, from the runs."""
    out = {}
    for vpn, count, state in pm["runs"]:
        for v in range(vpn, vpn + count):
            out[v] = pm["states"][state]
    return out


async def wait_for(pred, timeout=60.0, what=""):
    with trio.fail_after(timeout):
        while True:
            r = await pred()
            if r:
                return r
            await trio.sleep(0.05)


# -- the kernel's part -------------------------------------------------------------------

def test_page_states_present_dirty_and_logged_changes_while_precopy_tracks():
    k = Kernel(memory=4 << 20)
    e = k.env_create(programs.load("memtest"), ["memtest", "8"], name="memtest")
    k.run(5_000_000)
    vpns, states = k.page_states(e.env_id)
    by = dict(zip(vpns.tolist(), states.tolist()))
    mt = [MT_BASE // 4096 + i for i in range(8)]
    assert all(by[v] == PAGE_DIRTY for v in mt)          # written: D bit
    assert PAGE_PRESENT in by.values()                   # code pages are only read
    assert PAGE_REMOTE not in by.values()
    k.track_changes(e.env_id)                            # a pre-copy round begins: D cleared
    vpns, states = k.page_states(e.env_id)
    assert PAGE_DIRTY not in states.tolist()
    k.run(2_000_000)                                     # memtest rewrites its pages
    changed = set(e.aspace.changes)
    vpns, states = k.page_states(e.env_id)
    dirty = {v for v, s in zip(vpns.tolist(), states.tolist()) if s == PAGE_DIRTY}
    assert dirty and dirty == {v for v in changed if v in set(vpns.tolist())}


# -- the op on nodes --------------------------------------------------------------------------

async def test_pagemap_refuses_bad_env_ids_and_unknown_envs(cluster):
    a = await cluster.start("a")
    for bad in (None, 0, -1, "4096", True, 1 << 31):
        with pytest.raises(RemoteError) as exc:
            await call(cluster, a, "pagemap", {"envid": bad})
        assert exc.value.code == "bad-request" and "envid" in exc.value.message
    with pytest.raises(RemoteError) as exc:
        await call(cluster, a, "pagemap", {"envid": 4242})
    assert exc.value.code == "no-such-env"


async def test_pagemap_of_a_local_env_covers_every_page_in_runs(cluster):
    a = await cluster.start("a")
    envid = (await call(cluster, a, "spawn", {"program": "memtest", "args": ["64", "64"]}))["envid"]
    await trio.sleep(0.5)
    pm = await call(cluster, a, "pagemap", {"envid": envid})
    assert pm["states"] == list(STATES) and not pm["truncated"]
    pages = expand(pm)
    assert len(pages) == pm["pages"] == len(a.kernel.env_pages(envid))
    assert sum(pm["counts"].values()) == pm["pages"]
    assert set(pages.values()) <= {"present", "dirty"}
    assert pages[MT_BASE >> 12] == "dirty"
    assert len(pm["runs"]) <= MAX_RUNS
    # runs are maximal: two neighbours never have the same state
    for (v1, c1, s1), (v2, _, s2) in zip(pm["runs"], pm["runs"][1:]):
        assert v1 + c1 < v2 or s1 != s2


async def test_pagemap_during_pgfault_shows_remote_then_faulted_and_pushed_pages(cluster):
    a = await cluster.start("a")
    b = await cluster.start("b")
    envid = (await call(cluster, a, "spawn", {"program": "memtest",
                                              "args": ["1024", "256"], "paused": True}))["envid"]
    await call(cluster, a, "resume", {"envid": envid})

    async def mapped():          # memtest has mapped all its pages
        pm = await call(cluster, a, "pagemap", {"envid": envid})
        return pm["pages"] > 1024
    await wait_for(mapped, what="memtest's pages")
    await call(cluster, a, "pause", {"envid": envid})
    # No push, not resumed: every page stays remote on b until the env runs.
    r = await call(cluster, a, "migrate", {"envid": envid, "to": cluster.addr(b),
                                           "method": "pgfault", "push": False})
    new = r["new_envid"]
    pm = await call(cluster, b, "pagemap", {"envid": new})
    assert pm["counts"]["remote"] == pm["pages"] > 1024
    await call(cluster, b, "resume", {"envid": new})

    async def some_faulted():
        pm = await call(cluster, b, "pagemap", {"envid": new})
        return pm if pm["counts"]["faulted"] >= 16 else None
    pm = await wait_for(some_faulted, what="faulted pages")
    assert pm["counts"]["remote"] + pm["counts"]["inflight"] > 0     # not all of them yet
    assert pm["counts"]["pushed"] == 0
    # Back to a with push: the rest arrive pushed (or by fault), none stay remote.
    r = await call(cluster, b, "migrate", {"envid": new, "to": cluster.addr(a),
                                           "method": "pgfault", "push": True, "resume": True})
    back = r["new_envid"]

    async def all_in():
        pm = await call(cluster, a, "pagemap", {"envid": back})
        return pm if pm["counts"]["remote"] == pm["counts"]["inflight"] == 0 else None
    pm = await wait_for(all_in, what="every page on a")
    assert pm["counts"]["pushed"] > 0
    assert pm["counts"]["pushed"] + pm["counts"]["faulted"] == pm["pages"]

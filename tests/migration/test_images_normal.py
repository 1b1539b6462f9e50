"""Issue 5: images and normal migration, what a user sees.

memtest over 4,096 pages (16 MiB) is saved, loaded and migrated A -> B -> C
-> A; after every step it is resumed and keeps verifying every word of every
page.  loop's counter continues from exactly the saved value after save/load
and after migration.
"""
import pytest

from .helpers import (call, counters, env_ids, last_pass, memory, no_mismatch, passes,
                      registers, same_memory, start, wait_pass, wait_until)


@pytest.mark.slow
async def test_memtest_4096_pages_keeps_verifying_through_save_load_and_migration_chain_a_b_c_a(
        cluster):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    c = await start(cluster, "c")
    res = await call(cluster, a, "spawn", {"program": "memtest", "args": ["4096", "256"]})
    e1 = res["envid"]
    await wait_pass(a, e1)                       # pass 1: every page filled and verified

    # save / load: the loaded copy is the saved process, byte for byte.
    await call(cluster, a, "pause", {"envid": e1})
    saved_pass = last_pass(a, e1)
    saved = memory(a, e1)
    assert len(saved) >= 4096
    r = await call(cluster, a, "save", {"envid": e1, "name": "mt16m"})
    assert r["pages"] == len(saved)
    assert r["bytes"] > 16 << 20
    r = await call(cluster, a, "load", {"name": "mt16m"})
    e2 = r["envid"]
    assert e2 != e1 and r["pages"] == len(saved)
    same_memory(memory(a, e2), saved)
    assert registers(a, e2) == registers(a, e1)
    await call(cluster, a, "kill", {"envid": e1})
    mark = a.rec.mark()
    await call(cluster, a, "resume", {"envid": e2})
    last = await wait_pass(a, e2, saved_pass, since=mark)
    assert passes(a.rec.text(e2, mark))[0] == saved_pass + 1   # continues, nothing skipped

    # A -> B -> C -> A, each hop paused, moved, compared, resumed, verified.
    env, here = e2, a
    for there in (b, c, a):
        await call(cluster, here, "pause", {"envid": env})
        before = memory(here, env)
        regs = registers(here, env)
        last = last_pass(here, env)
        mark, gone = there.rec.mark(), here.rec.mark()
        r = await call(cluster, here, "migrate", {"envid": env, "to": cluster.addr(there),
                                                  "method": "normal"})
        assert r["pages"] == len(before)
        assert env not in env_ids(here), "the source still holds the migrated env"
        # The source's kernel freed it, and says so as JOS does.
        assert here.rec.text(0, gone) == f"[00000000] free env {env:08x}\n"
        new = r["new_envid"]
        same_memory(memory(there, new), before)
        assert registers(there, new) == regs
        await call(cluster, there, "resume", {"envid": new})
        await wait_pass(there, new, last, since=mark)
        assert passes(there.rec.text(new, mark))[0] == last + 1
        env, here = new, there
    no_mismatch(a, b, c)
    assert [env_ids(n) for n in (a, b, c)] == [[env], [], []]   # exactly one copy, on A


def continues(got, first: int, envid: int, before: int) -> None:
    """loop's lines after a move: its counter goes on from `first`, every
    line naming envid -- but the first may name `before`, the id the
    program read just before it was paused (loop reads its id, then
    prints: a pause in between leaves the old id in its registers)."""
    assert [c for _, c in got] == list(range(first, first + len(got))), got
    assert got[0][0] in (envid, before), got
    assert all(e == envid for e, _ in got[1:]), got


async def test_loop_counter_continues_from_saved_value_after_save_load_and_migration(cluster):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    res = await call(cluster, a, "spawn", {"program": "loop", "args": ["20"]})
    e1 = res["envid"]
    await wait_until(lambda: len(counters(a.rec.text(e1))) >= 3, what="loop output")
    await call(cluster, a, "pause", {"envid": e1})
    n = counters(a.rec.text(e1))[-1][1]

    # save / load / resume: the new env prints its own id and counter n+1.
    r = await call(cluster, a, "save", {"envid": e1, "name": "my_image"})
    assert r["image"] == "my_image"
    e2 = (await call(cluster, a, "load", {"name": "my_image"}))["envid"]
    mark = a.rec.mark()
    await call(cluster, a, "resume", {"envid": e2})
    await wait_until(lambda: len(counters(a.rec.text(e2, mark))) >= 3, what="loaded loop output")
    got = counters(a.rec.text(e2, mark))
    continues(got, n + 1, e2, e1)
    await call(cluster, a, "pause", {"envid": e2})
    m = counters(a.rec.text(e2, mark))[-1][1]

    # normal migration: continues from m+1 on B.
    mark_b = b.rec.mark()
    r = await call(cluster, a, "migrate", {"envid": e2, "to": cluster.addr(b), "method": "normal",
                                           "resume": True})
    e3 = r["new_envid"]
    await wait_until(lambda: len(counters(b.rec.text(e3, mark_b))) >= 2, what="output on B")
    await call(cluster, b, "pause", {"envid": e3})
    got = counters(b.rec.text(e3, mark_b))
    continues(got, m + 1, e3, e2)
    k = got[-1][1]

    # and by demand paging back to A: continues from k+1.
    mark = a.rec.mark()
    r = await call(cluster, b, "migrate", {"envid": e3, "to": cluster.addr(a), "method": "pgfault",
                                           "resume": True})
    e4 = r["new_envid"]
    await wait_until(lambda: len(counters(a.rec.text(e4, mark))) >= 2, what="output back on A")
    got = counters(a.rec.text(e4, mark))
    continues(got, k + 1, e4, e3)

    # The original, paused all along, is untouched by the save: it goes on from n+1.
    mark = a.rec.mark()
    await call(cluster, a, "resume", {"envid": e1})
    await wait_until(lambda: counters(a.rec.text(e1, mark)), what="the original's output")
    assert counters(a.rec.text(e1, mark))[0] == (e1, n + 1)


async def test_migrate_keep_leaves_an_ordinary_paused_copy_on_the_source(cluster):
    """--keep (what the shell's migrate_send_normal uses): the source copy
    stays, paused, and can be resumed, saved, killed like any env."""
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    env = (await call(cluster, a, "spawn", {"program": "memtest", "args": ["128", "32"]}))["envid"]
    await wait_pass(a, env)
    await call(cluster, a, "pause", {"envid": env})
    last = last_pass(a, env)
    before = memory(a, env)
    r = await call(cluster, a, "migrate", {"envid": env, "to": cluster.addr(b), "keep": True,
                                           "resume": True})
    assert r["kept"] is True
    assert (await call(cluster, a, "ps"))["envs"][0]["state"] == "paused"
    same_memory(memory(a, env), before)
    await call(cluster, a, "save", {"envid": env, "name": "kept"})
    mark = a.rec.mark()
    await call(cluster, a, "resume", {"envid": env})            # two copies, as asked
    await wait_pass(a, env, last, since=mark)
    await wait_pass(b, r["new_envid"], last)
    await call(cluster, a, "kill", {"envid": env})
    assert env_ids(a) == []
    no_mismatch(a, b)

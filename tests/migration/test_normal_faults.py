"""Faults during a normal migration.  Whoever dies, and wherever the link
breaks, the process is never lost (short of the node holding its only copy
dying) and never runs twice (migration/session.py states the guarantee):

- the destination killed at each step: the source never heard Committed,
  asks the destination (gone), decides ABORT, and has the env back, paused
  and intact (the same image before and after); it migrates it again to a
  fresh node where it runs correctly;
- the source killed at each step: the destination holds no partial env and
  no leaked frames; once it had the commit, it holds the complete env,
  not running, until the source (started again: another incarnation) says
  go, or until `jmigctl recover --force` there;
- the connection cut by a proxy, at each step: the same.

Real daemons die by JMIG_FAILPOINTS (exit 137 at the named point, as if
SIGKILLed) or by SIGKILL; the cuts use jmig/testing/proxy.py in-process.
"""
import pytest
import trio

from jmig.ctl.client import RemoteError
from jmig.proto.frames import encode_frame
from jmig.testing import PORT, next_host

from .helpers import (call, ctl_json, ctl_ok, dcall, dfree, dpasses, dps, env_ids, free,
                      image_file, last_pass, memory, no_mismatch, ps_entry, registers,
                      same_image, same_memory, start, wait_dpass, wait_pass, wait_sync,
                      wait_until)
from jmig.testing import Proxy

MEMTEST = ["memtest", "256", "64"]       # ~1 MiB, a pass in well under a second


def _spawn_memtest(d) -> int:
    envid = ctl_json(d, "spawn", *MEMTEST)["new_envid"]
    wait_dpass(d)
    return envid


def _state(d, envid) -> str | None:
    for e in dps(d):
        if e["envid"] == envid:
            return e["state"]
    return None


def _runs_on_fresh_node(daemons, src, envid, name="c"):
    """Migrate env from src to a new node, resumed, and see memtest verify there."""
    c = daemons(name)
    last = max(dpasses(src))
    r = ctl_json(src, "migrate", str(envid), "--to", c.addr, "--resume")
    assert r["resumed"] and r["pages"] > 256
    wait_dpass(c, last)
    assert _state(src, envid) is None
    assert [e["envid"] for e in dps(c)] == [r["new_envid"]]
    return c


@pytest.mark.parametrize("step", ["before_prepared", "after_prepared", "after_commit"])
def test_destination_killed_at_step_leaves_env_paused_and_intact_on_source(daemons, step):
    a = daemons("a")
    b = daemons("b", env={"JMIG_FAILPOINTS": f"normal.dst.{step}"})
    envid = _spawn_memtest(a)
    ctl_ok(a, "pause", str(envid))
    ctl_ok(a, "save", str(envid), "before")

    code, out, err = a.ctl("migrate", str(envid), "--to", b.addr)
    assert code == 1, (out, err)
    assert b.proc.wait(10) == 137                        # died at the failpoint
    # Without Committed, the source decides ABORT: the env is back, paused,
    # and nothing holds it (the destination runs nothing without Go).
    assert _state(a, envid) == "paused"
    assert f"env {envid} is still here, paused" in err
    job = ctl_json(a, "jobs")[0]
    assert job["kind"] == "migrate" and job["state"] == "failed"
    ctl_ok(a, "save", str(envid), "after")
    same_image(image_file(a, "before"), image_file(a, "after"))
    _runs_on_fresh_node(daemons, a, envid)


async def test_destination_sigkilled_mid_stream_leaves_env_paused_and_intact(daemons, nursery):
    a = daemons("a")
    b = daemons("b")
    proxy = Proxy(next_host(), PORT, b.host, b.port)      # to hold the stream mid-way
    await nursery.start(proxy.serve)
    envid = (await dcall(a, "spawn", {"program": MEMTEST[0], "args": MEMTEST[1:]}))["envid"]
    await trio.to_thread.run_sync(wait_dpass, a)
    await dcall(a, "pause", {"envid": envid})
    await dcall(a, "save", {"envid": envid, "name": "before"})

    proxy.hold_after(c2s=400_000)                          # of a ~1.1 MB stream
    failed = []

    async def migrate():
        try:
            await dcall(a, "migrate", {"envid": envid, "to": proxy.addr})
        except RemoteError as exc:
            failed.append(exc)

    async with trio.open_nursery() as n:
        n.start_soon(migrate)
        await wait_until(lambda: proxy.links and proxy.links[0].held.is_set(), what="mid-stream")
        b.kill()                                            # SIGKILL, 400 KB into the pages
        proxy.resume()
    assert failed and failed[0].code in ("link-lost", "timeout"), failed
    assert "still here, paused" in failed[0].message
    assert b.proc.returncode == -9
    await trio.to_thread.run_sync(_check_intact_and_move_on, daemons, a, envid)


def _check_intact_and_move_on(daemons, a, envid):
    assert _state(a, envid) == "paused"
    ctl_ok(a, "save", str(envid), "after")
    same_image(image_file(a, "before"), image_file(a, "after"))
    _runs_on_fresh_node(daemons, a, envid)


@pytest.mark.parametrize("step", ["after_begin", "after_data", "after_prepared", "after_commit",
                                  "after_decision"])
def test_source_killed_at_step_leaves_no_partial_env_on_destination(daemons, step):
    a = daemons("a", env={"JMIG_FAILPOINTS": f"normal.src.{step}"})
    b = daemons("b")
    envid = _spawn_memtest(a)
    ctl_ok(a, "pause", str(envid))
    ctl_ok(a, "save", str(envid), "before")
    last = max(dpasses(a))
    free_b = dfree(b)
    assert dps(b) == []

    code, out, err = a.ctl("migrate", str(envid), "--to", b.addr)
    assert code != 0
    assert a.proc.wait(10) == 137

    def settled():
        ps = dps(b)
        return (ps == [] and dfree(b) == free_b) or any("go-ahead" in e["state"] for e in ps)
    wait_sync(settled, what="the destination to drop the env, or hold it")
    ps = dps(b)
    if step in ("after_begin", "after_data", "after_prepared"):
        assert ps == [] and dfree(b) == free_b               # no leaked frame
        return
    # It had the commit: it holds the whole env, not running, waiting for
    # the source's word; the source is gone, so recover says so.
    assert [e["envid"] for e in ps] == [envid]
    assert "arriving" in ps[0]["state"] and "waiting for its go-ahead" in ps[0]["state"]
    code, out, err = b.ctl("resume", str(envid))
    assert code == 1 and "cannot run here" in err
    code, out, err = b.ctl("recover", str(envid))
    assert code == 1 and "[in-doubt]" in err and "--force" in err
    # The source comes back (another incarnation: every env it held is
    # gone): it reports the job it could not settle, and the destination,
    # asking again, learns that the env is its own now.
    a.env.pop("JMIG_FAILPOINTS")
    a.start()
    jobs = ctl_json(a, "jobs")
    assert [j["state"] for j in jobs] == ["interrupted"] and jobs[0]["envid"] == envid
    wait_sync(lambda: [e["state"] for e in dps(b)] == ["paused"], timeout=30,
              what="the destination to take the env over")
    ctl_ok(b, "save", str(envid), "got")
    same_image(image_file(a, "before"), image_file(b, "got"))
    ctl_ok(b, "resume", str(envid))
    wait_dpass(b, last)
    ctl_ok(b, "kill", str(envid))
    assert dfree(b) == free_b


def test_a_destination_whose_source_is_gone_for_good_takes_over_on_recover_force(daemons):
    a = daemons("a", env={"JMIG_FAILPOINTS": "normal.src.after_decision"})
    b = daemons("b")
    envid = _spawn_memtest(a)
    last = max(dpasses(a))
    code, out, err = a.ctl("migrate", str(envid), "--to", b.addr)
    assert a.proc.wait(10) == 137
    wait_sync(lambda: any("go-ahead" in e["state"] for e in dps(b)), what="held")
    out = ctl_ok(b, "recover", str(envid), "--force")
    assert "cannot be reached" in out and "taken over" in out
    assert _state(b, envid) == "paused"
    ctl_ok(b, "resume", str(envid))
    wait_dpass(b, last)


# -- the link cut by a proxy --------------------------------------------------------------

COMMIT = len(encode_frame({"t": "commit"}))
GO = len(encode_frame({"t": "go"}))


def _committed_len(envid):
    return len(encode_frame({"t": "committed", "envid": envid}))


def _started_len(envid):
    return len(encode_frame({"t": "started", "envid": envid, "resumed": False, "after_s": 0.0}))


# where: (direction, limit from the byte counts of a whole migration)
CUTS = {
    "during-handshake": lambda t, e: {"c2s": 40},
    "mid-pages": lambda t, e: {"c2s": t.c2s // 2},
    "after-end-before-prepared": lambda t, e: {"c2s": t.c2s - COMMIT - GO},
    "inside-commit": lambda t, e: {"c2s": t.c2s - GO - 1},
    "inside-prepared-reply": lambda t, e: {"s2c": t.s2c - _started_len(e) - _committed_len(e) - 1},
    "inside-committed-reply": lambda t, e: {"s2c": t.s2c - _started_len(e) - 1},
    "inside-go": lambda t, e: {"c2s": t.c2s - 1},
}
MOVES = ("during-handshake", "inside-committed-reply", "inside-go")


@pytest.mark.parametrize("where", list(CUTS))
async def test_connection_cut_by_proxy_loses_nothing_and_runs_nothing_twice(cluster, nursery,
                                                                            where):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    proxy = Proxy(next_host(), PORT, b.cfg.host, b.cfg.port)
    await nursery.start(proxy.serve)
    envid = (await call(cluster, a, "spawn", {"program": MEMTEST[0], "args": MEMTEST[1:]}))["envid"]
    await wait_pass(a, envid)
    await call(cluster, a, "pause", {"envid": envid})
    before, regs, last = memory(a, envid), registers(a, envid), last_pass(a, envid)

    # A whole migration through the proxy (keeping the source copy) gives the
    # byte counts of every step; then the same migration again, cut.
    ref = await call(cluster, a, "migrate", {"envid": envid, "to": proxy.addr, "keep": True})
    await call(cluster, b, "kill", {"envid": ref["new_envid"]})
    assert ps_entry(a, envid)["state"] == "paused"            # --keep: an ordinary paused env
    whole = proxy.links[-1]
    free_b = free(b)
    limits = CUTS[where](whole, ref["new_envid"])
    proxy.cut_after(**limits)
    try:
        res = await call(cluster, a, "migrate", {"envid": envid, "to": proxy.addr})
    except RemoteError as exc:
        res = exc
    cut = proxy.links[proxy.links.index(whole) + 1]      # later links: status queries
    assert cut.cut_by_proxy and cut.c2s <= whole.c2s and cut.s2c <= whole.s2c
    a.kernel.check_invariants()
    b.kernel.check_invariants()

    if where in MOVES:
        # during-handshake: a connection closed before the node said a word is
        # tried again (as a busy node sheds load that way), and the next one
        # is not cut.  inside-committed-reply: the destination committed; the
        # source asked it (status query), learned so and decided GO.
        # inside-go: the decision was GO, the word lost; the destination
        # asks the source.  Either way the env moved, exactly once.
        assert not isinstance(res, RemoteError), res
        assert env_ids(a) == []
        await wait_until(lambda: ps_entry(b, res["new_envid"]) is not None
                         and ps_entry(b, res["new_envid"])["state"] == "paused",
                         what="the destination to take the env over")
        here, env = b, res["new_envid"]
        same_memory(memory(b, env), before)
    else:
        assert isinstance(res, RemoteError), res
        assert res.code in ("link-lost", "timeout", "unreachable", "refused"), res
        assert f"env {envid} is still here, paused" in res.message
        await wait_until(lambda: env_ids(b) == [] and free(b) == free_b,
                         what="the destination to drop the partial env")
        assert ps_entry(a, envid)["state"] == "paused"
        same_memory(memory(a, envid), before)
        assert registers(a, envid) == regs
        # And it migrates again, directly, and runs there.
        res = await call(cluster, a, "migrate", {"envid": envid, "to": cluster.addr(b)})
        assert env_ids(a) == []
        here, env = b, res["new_envid"]
    mark = here.rec.mark()
    await call(cluster, here, "resume", {"envid": env})
    await wait_pass(here, env, last, since=mark)
    no_mismatch(a, b)

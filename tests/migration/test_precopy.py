"""Issue 8: pre-copy migration.

memtest keeps rewriting its pages while they are copied; afterwards it
verifies every page on the destination, at several dirty rates, and when
the last dirty pages are left to demand paging (then: pgfault).  A migration
that cannot converge stops after max rounds and still completes correctly.
Cancelling (the client goes away, the destination dies) leaves the env
running on the source, untouched, and it can be migrated again.
"""
import os
import subprocess
import sys

import pytest
import trio

from jmig.ctl.client import ControlClient, RemoteError
from jmig.testing import PORT, next_host

from .helpers import (call, ctl_json, dcall, dfree, dpasses, dps, env_ids, free, last_pass,
                      no_mismatch, passes, ps_entry, start, wait_dpass, wait_pass, wait_sync, wait_until)
from jmig.testing import Proxy


async def _running_memtest(cluster, node, npages: int, dirty: int) -> tuple[int, int]:
    env = (await call(cluster, node, "spawn",
                      {"program": "memtest", "args": [str(npages), str(dirty), "0"]}))["envid"]
    return env, await wait_pass(node, env)


async def _slow_link_to(nursery, node, rate=4_000_000) -> Proxy:
    """A proxy in front of node's migration port that forwards ~4 MB/s, so
    that copying memtest 1024's 4 MiB takes longer than one of its passes:
    pages get rewritten while they are being copied, whatever the moment the
    migration starts."""
    proxy = Proxy(next_host(), PORT, node.cfg.host, node.cfg.port)
    proxy.rate = rate
    await nursery.start(proxy.serve)
    return proxy


async def _verifies_on(node, env, after, mark) -> None:
    """memtest goes on past `after` on node, and then completes a whole pass there."""
    first = await wait_pass(node, env, after, since=mark)
    await wait_pass(node, env, first, since=mark)


@pytest.mark.parametrize("dirty", [16, 256, 1024])
async def test_precopy_while_memtest_rewrites_pages_verifies_every_page_after(cluster, nursery,
                                                                              dirty):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    link = await _slow_link_to(nursery, b)
    free_a = free(a)
    env, _ = await _running_memtest(cluster, a, 1024, dirty)
    npages = len(a.kernel.env_pages(env))
    mark = b.rec.mark()
    r = await call(cluster, a, "migrate", {"envid": env, "to": link.addr, "method": "precopy",
                                           "max_rounds": 3, "resume": True})
    last = last_pass(a, env)
    assert r["method"] == "precopy" and r["pages"] == npages and r["postcopy_pages"] == 0
    assert 1 <= r["rounds"] <= 3
    # Pages were rewritten while being copied, and sent again.
    assert sum(s["dirty"] for s in r["round_stats"]) > 0
    assert r["pages_sent"] > npages
    assert env_ids(a) == [] and free(a) == free_a
    await _verifies_on(b, r["new_envid"], last, mark)
    # The pass that was under way when it stopped goes on where it left off.
    assert passes(b.rec.text(r["new_envid"], mark))[0] == last + 1
    no_mismatch(a, b)


async def test_precopy_then_pgfault_fetches_the_last_dirty_pages_on_demand(cluster, nursery):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    link = await _slow_link_to(nursery, b)
    free_a = free(a)
    env, _ = await _running_memtest(cluster, a, 1024, 256)
    mark = b.rec.mark()
    # One round: copying all of it over the slow link spans a rewrite pass,
    # so pages are dirty at the stop whatever the moment it started.
    r = await call(cluster, a, "migrate", {"envid": env, "to": link.addr, "method": "precopy",
                                           "then": "pgfault", "max_rounds": 1,
                                           "downtime_limit_ms": 0, "resume": True})
    last = last_pass(a, env)
    assert r["then"] == "pgfault" and r["postcopy_pages"] > 0, r
    await _verifies_on(b, r["new_envid"], last, mark)
    await wait_until(lambda: env_ids(a) == [], what="the origin to release")
    assert free(a) == free_a
    src, dst = a.migrations.origin.totals, b.migrations.pager.totals
    sent = src["pages_served"] + src["pages_push_sent"]
    assert src["pages_push_sent"] <= r["postcopy_pages"] <= sent
    assert dst["pages_fetched"] + dst["pages_pushed"] == r["postcopy_pages"]
    assert dst["duplicates"] == sent - r["postcopy_pages"]
    no_mismatch(a, b)


async def test_precopy_that_cannot_converge_stops_after_max_rounds_and_completes(cluster):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    env, _ = await _running_memtest(cluster, a, 1024, 1024)
    mark = b.rec.mark()
    r = await call(cluster, a, "migrate", {"envid": env, "to": cluster.addr(b), "method": "precopy",
                                           "max_rounds": 2, "downtime_limit_ms": 0,
                                           "resume": True})
    last = last_pass(a, env)
    assert r["rounds"] == 2 and len(r["round_stats"]) == 2
    assert r["final_pages"] > 0 and r["postcopy_pages"] == 0
    # The dirty rate it reports is its last round's: pages dirtied per second.
    for s in r["round_stats"]:
        assert s["dirty_rate_pps"] == pytest.approx(s["dirty"] / s["seconds"])
    assert r["dirty_rate_pps"] == r["round_stats"][-1]["dirty_rate_pps"] > 0
    await _verifies_on(b, r["new_envid"], last, mark)
    no_mismatch(a, b)


async def test_the_stop_phase_of_a_paused_process_sends_no_page(cluster):
    """The stop phase is proportional to the pages changed in the last round:
    a paused memtest changes none, so after one round the Final carries no
    page, and the destination still holds every page, verified."""
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    env, _ = await _running_memtest(cluster, a, 1024, 64)
    await call(cluster, a, "pause", {"envid": env})
    npages = len(a.kernel.env_pages(env))
    last = last_pass(a, env)
    mark = b.rec.mark()
    r = await call(cluster, a, "migrate", {"envid": env, "to": cluster.addr(b),
                                           "method": "precopy", "max_rounds": 5})
    assert r["rounds"] == 1 and r["final_pages"] == 0 and r["pages"] == npages
    assert r["pages_sent"] == npages
    await call(cluster, b, "resume", {"envid": r["new_envid"]})
    await _verifies_on(b, r["new_envid"], last, mark)
    no_mismatch(a, b)


class _GoAway(Exception):
    pass


NEVER_CONVERGES = {"method": "precopy", "max_rounds": 1000, "downtime_limit_ms": 0}


@pytest.mark.parametrize("how", ["connection-closed", "jmigctl-killed"])
async def test_client_going_away_leaves_the_job_running_and_cancel_leaves_env_running_on_source(
        cluster, nursery, tmp_path, how):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    link = await _slow_link_to(nursery, b, rate=1_000_000)      # round 1 alone takes ~4 s
    free_b = free(b)
    env, _ = await _running_memtest(cluster, a, 1024, 1024)
    if how == "connection-closed":
        def on_push(kind, data):
            if kind == "progress":
                raise _GoAway()                  # the client leaves at its first progress
        with pytest.raises(_GoAway):
            async with await ControlClient.open(cluster.addr(a), cluster.secret) as c:
                await c.request("migrate", {"envid": env, "to": link.addr,
                                            **NEVER_CONVERGES}, on_push)
    else:
        secret = tmp_path / "secret"
        secret.write_bytes(cluster.secret)
        secret.chmod(0o600)
        proc = subprocess.Popen(
            [sys.executable, "-m", "jmig.ctl.main", "--node", cluster.addr(a), "--secret-file",
             str(secret), "migrate", str(env), "--to", link.addr, "--method", "precopy",
             "--max-rounds", "1000", "--downtime-limit", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
        # Its first progress: a round under way, pages arriving on B.
        await wait_until(lambda: a.migrations.busy.get(env) and b.kernel.live_envs() and
                         len(b.kernel.env_pages(b.kernel.live_envs()[0].env_id)) > 64,
                         what="the rounds to start")
        proc.kill()
        proc.wait()
    # The job is the node's, not the client's: it goes on.
    jobs = (await call(cluster, a, "jobs"))["jobs"]
    assert [(j["kind"], j["state"]) for j in jobs] == [("migrate", "running")]
    job = a.migrations.jobs.running[jobs[0]["id"]]
    sent = job.progress.get("bytes", 0)
    await wait_until(lambda: job.progress.get("bytes", 0) > sent + 100_000,
                     what="more pages sent after the client left")
    # cancel stops it: the env runs on, here, untouched; B drops what it had.
    res = await call(cluster, a, "cancel", {"job": jobs[0]["id"]})
    assert res["state"] == "cancelled" and "is back on a" in res["error"]["message"]
    await wait_until(lambda: env not in a.migrations.busy and env_ids(b) == []
                     and free(b) == free_b, what="the migration to be abandoned")
    assert ps_entry(a, env)["state"] == ""                # running: not paused, not frozen
    mark = a.rec.mark()
    last = last_pass(a, env)
    await _verifies_on(a, env, last, mark)
    # And it can be migrated again.
    mark = b.rec.mark()
    r = await call(cluster, a, "migrate", {"envid": env, "to": cluster.addr(b), "method": "precopy",
                                           "max_rounds": 3, "resume": True})
    await wait_pass(b, r["new_envid"], last_pass(a, env), since=mark)
    assert env_ids(a) == []
    no_mismatch(a, b)


async def test_destination_killed_during_rounds_leaves_env_running_on_source(daemons):
    a = daemons("a")
    b = daemons("b")
    env = (await dcall(a, "spawn", {"program": "memtest", "args": ["1024", "1024", "0"]}))["envid"]
    await trio.to_thread.run_sync(wait_dpass, a)
    progress = []

    def on_push(kind, data):
        if kind == "progress" and not progress:
            progress.append(data)
            b.kill()                                       # SIGKILL during round 1
    with pytest.raises(RemoteError) as exc:
        await dcall(a, "migrate", {"envid": env, "to": b.addr, **NEVER_CONVERGES}, on_push)
    assert exc.value.code == "link-lost" and f"env {env} is still here, running" in exc.value.message
    assert b.proc.returncode == -9
    await trio.to_thread.run_sync(_runs_on_then_moves, daemons, a, env)


def _runs_on_then_moves(daemons, a, env):
    assert [(e["envid"], e["state"]) for e in dps(a)] == [(env, "")]
    last = max(dpasses(a))
    p = wait_dpass(a, last)
    wait_dpass(a, p)                                       # a whole pass on A since
    c = daemons("c")
    last = max(dpasses(a))
    r = ctl_json(a, "migrate", str(env), "--to", c.addr, "--method", "precopy", "--max-rounds",
                 "3", "--resume")
    assert r["method"] == "precopy"
    wait_dpass(c, last)
    assert dps(a) == []


def test_source_killed_after_a_round_leaves_no_partial_env_on_destination(daemons):
    a = daemons("a", env={"JMIG_FAILPOINTS": "precopy.src.after_round"})
    b = daemons("b")
    env = ctl_json(a, "spawn", "memtest", "256", "64", "0")["new_envid"]
    wait_dpass(a)
    free_b = dfree(b)
    code, out, err = a.ctl("migrate", str(env), "--to", b.addr, "--method", "precopy")
    assert code != 0
    assert a.proc.wait(10) == 137
    wait_sync(lambda: dps(b) == [] and dfree(b) == free_b, what="B to drop the partial env")


async def test_precopy_keep_leaves_a_paused_copy_and_is_refused_with_then_pgfault(cluster):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    env, _ = await _running_memtest(cluster, a, 128, 32)
    with pytest.raises(RemoteError) as exc:
        await call(cluster, a, "migrate", {"envid": env, "to": cluster.addr(b), "method": "precopy",
                                           "then": "pgfault", "keep": True})
    assert exc.value.code == "bad-request" and "--keep" in exc.value.message
    assert ps_entry(a, env)["state"] == "" and env_ids(b) == []     # nothing happened
    r = await call(cluster, a, "migrate", {"envid": env, "to": cluster.addr(b), "method": "precopy",
                                           "keep": True, "resume": True})
    assert r["kept"] is True
    assert ps_entry(a, env)["state"] == "paused"                     # kept, not destroyed
    last = last_pass(a, env)
    await wait_pass(b, r["new_envid"], last)
    mark = a.rec.mark()
    await call(cluster, a, "resume", {"envid": env})
    await wait_pass(a, env, last, since=mark)
    no_mismatch(a, b)

"""Migration as a service an operator can trust (issue 12): deadlines,
jobs that outlive their client, cancel, the hand-over that never lets an
env run twice, and orderly shutdown.  Real sockets and real daemons
throughout; a proxy (proxy.py) blackholes, delays or holds links; the
memory oracle (memtest) checks every page after each story.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import trio

from jmig.ctl.client import RemoteError
from jmig.proto.frames import encode_frame
from jmig.testing import PORT, next_host

from jmig.proto.handshake import ClientHandshake

from .helpers import (call, ctl_json, dcall, dpasses, dps, env_ids, free, last_pass, memory,
                      no_mismatch, ps_entry, same_memory, start, wait_dpass, wait_pass,
                      wait_sync, wait_until)
from jmig.testing import Proxy

MEMTEST = ["memtest", "256", "64"]
METHODS = ["normal", "pgfault", "precopy"]
pytestmark = pytest.mark.slow


async def _memtest(cluster, node, args=MEMTEST[1:]) -> tuple[int, int]:
    env = (await call(cluster, node, "spawn", {"program": "memtest", "args": list(args)}))["envid"]
    return env, await wait_pass(node, env)


async def _proxy_to(nursery, node, port_offset=0) -> Proxy:
    proxy = Proxy(next_host(), PORT, node.cfg.host, node.cfg.port + port_offset)
    await nursery.start(proxy.serve)
    return proxy


def _handshake_bytes(kind: str, name: str) -> int:
    """What a client sends in its handshake (hello and auth)."""
    hello = ClientHandshake(b"x" * 32, kind, name).hello()
    return len(encode_frame(hello)) + len(encode_frame({"t": "auth", "mac": bytes(32)}))


def _target(proxy: Proxy, method: str) -> str:
    """The HOST:P that puts the proxy on the method's migration port."""
    return f"{proxy.listen_host}:{PORT - (1 if method == 'pgfault' else 0)}"


@pytest.mark.parametrize("method", METHODS)
async def test_a_blackholed_link_aborts_the_job_at_its_deadline_and_the_env_is_back(
        cluster, nursery, method):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    # The proxy stands for b's port P (and for P+1 at the same offset).
    proxy = await _proxy_to(nursery, b, 1 if method == "pgfault" else 0)
    env, last = await _memtest(cluster, a)
    if method != "precopy":
        await call(cluster, a, "pause", {"envid": env})
    before = memory(a, env) if method != "precopy" else None
    free_b = free(b)
    # Past the handshake, then nothing more (from inside the Begin on).
    kind = "pgfault" if method == "pgfault" else "normal"
    proxy.hold_after(c2s=_handshake_bytes(kind, "a") + 20)
    with trio.fail_after(60):
        with pytest.raises(RemoteError) as exc:
            await call(cluster, a, "migrate", {"envid": env, "to": _target(proxy, method),
                                               "method": method, "timeout": 1.0})
    assert exc.value.code == "timeout", exc.value
    state = "paused" if method != "precopy" else "running"
    assert f"env {env} is still here, {state}" in exc.value.message
    assert ps_entry(a, env)["state"] == ("paused" if method != "precopy" else "")
    if before is not None:
        same_memory(memory(a, env), before)
    job = (await call(cluster, a, "jobs"))["jobs"][0]
    assert job["state"] == "failed" and job["error"]["code"] == "timeout"
    # The destination drops its half of it (its own deadline), frames and all.
    proxy.resume()
    await wait_until(lambda: env_ids(b) == [] and free(b) == free_b, timeout=30,
                     what="the destination to drop the partial env")
    if method != "precopy":
        await call(cluster, a, "resume", {"envid": env})
    mark = a.rec.mark()
    await wait_pass(a, env, last, since=mark)
    no_mismatch(a, b)


@pytest.mark.parametrize("method", METHODS)
async def test_a_sigstopped_destination_makes_the_job_abort_and_the_env_come_back(
        daemons, nursery, method):
    a = daemons("a")
    b = daemons("b")
    proxy = Proxy(next_host(), PORT + (1 if method == "pgfault" else 0), b.host,
                  b.port + (1 if method == "pgfault" else 0))
    await nursery.start(proxy.serve)
    proxy.rate = 4_000_000                     # 8 MiB take two seconds: time to stop b
    env = (await dcall(a, "spawn", {"program": "memtest", "args": ["2048", "64"]}))["envid"]
    await trio.to_thread.run_sync(lambda: wait_dpass(a, timeout=240))
    if method != "precopy":
        await dcall(a, "pause", {"envid": env})
    if method == "pgfault":
        # Its stream is a few page table entries, gone in a moment: stop b
        # first (it is stopped before a byte of the migration arrives).
        b.proc.send_signal(signal.SIGSTOP)
    job = await dcall(a, "migrate", {"envid": env, "to": f"{proxy.listen_host}:{PORT}",
                                     "method": method, "timeout": 1.0, "detach": True})
    if method != "pgfault":
        await wait_until(lambda: proxy.links and proxy.links[0].c2s > 100_000,
                         what="bytes to flow")
        b.proc.send_signal(signal.SIGSTOP)
    try:
        with trio.fail_after(60):
            while (await dcall(a, "jobs"))["jobs"][0]["state"] == "running":
                await trio.sleep(0.1)
        done = (await dcall(a, "jobs"))["jobs"][0]
        assert done["id"] == job["job"] and done["state"] == "failed", done
        assert done["error"]["code"] in ("timeout", "link-lost", "unreachable"), done
        state = [e["state"] for e in (await dcall(a, "ps"))["envs"] if e["envid"] == env]
        assert state == (["paused"] if method != "precopy" else [""])
    finally:
        b.proc.send_signal(signal.SIGCONT)
    await trio.to_thread.run_sync(lambda: wait_sync(lambda: dps(b) == [], timeout=30,
                                                    what="the destination to drop it"))
    if method != "precopy":
        await dcall(a, "resume", {"envid": env})
    last = max(dpasses(a))
    await trio.to_thread.run_sync(lambda: wait_dpass(a, last, timeout=240))


async def test_a_commit_held_back_then_resume_then_the_link_restored_runs_the_env_once(
        cluster, nursery):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    proxy = await _proxy_to(nursery, b)
    env, last = await _memtest(cluster, a)
    await call(cluster, a, "pause", {"envid": env})
    # A whole migration through the proxy (keeping the source copy) gives the
    # byte count up to the Commit; then the same again, held just before it.
    ref = await call(cluster, a, "migrate", {"envid": env, "to": proxy.addr, "keep": True})
    await call(cluster, b, "kill", {"envid": ref["new_envid"]})
    whole = proxy.links[-1]
    commit, go = len(encode_frame({"t": "commit"})), len(encode_frame({"t": "go"}))
    proxy.hold_after(c2s=whole.c2s - commit - go)
    with trio.fail_after(60):
        with pytest.raises(RemoteError) as exc:
            await call(cluster, a, "migrate", {"envid": env, "to": proxy.addr})
    # No Committed: the source asked the destination (prepared, no commit),
    # decided ABORT and has the env back.  Nothing to recover: run it.
    assert f"env {env} is still here, paused" in exc.value.message
    with pytest.raises(RemoteError) as rec:
        await call(cluster, a, "recover", {"envid": env, "force": True})
    assert rec.value.code == "bad-state" and "nothing to recover" in rec.value.message
    mark = a.rec.mark()
    await call(cluster, a, "resume", {"envid": env})
    # The link comes back; the Commit arrives late, and Abort after it.
    proxy.resume()
    await trio.sleep(3)
    await wait_until(lambda: env_ids(b) == [], timeout=30, what="b to hold nothing")
    assert env_ids(a) == [env]
    await wait_pass(a, env, last, since=mark)
    no_mismatch(a, b)


@pytest.mark.parametrize("method", METHODS)
async def test_jmigctl_killed_mid_migration_leaves_the_job_to_complete(cluster, nursery, tmp_path,
                                                                       method):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    proxy = await _proxy_to(nursery, b, 1 if method == "pgfault" else 0)
    env, last = await _memtest(cluster, a)
    secret = tmp_path / "secret"
    secret.write_bytes(cluster.secret)
    secret.chmod(0o600)
    # The link holds right after the handshake while jmigctl is killed.
    kind = "pgfault" if method == "pgfault" else "normal"
    proxy.hold_after(c2s=_handshake_bytes(kind, "a") + 20)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jmig.ctl.main", "--node", cluster.addr(a), "--secret-file",
         str(secret), "migrate", str(env), "--to", _target(proxy, method), "--method", method,
         "--resume"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    await wait_until(lambda: proxy.links and proxy.links[0].held.is_set(), what="the hold")
    job = next(iter(a.migrations.jobs.running.values()))
    proc.kill()
    proc.wait()
    await trio.sleep(0.5)
    assert str(job.state) == "running"
    proxy.resume()
    with trio.fail_after(120):
        await job.done.wait()
    assert str(job.state) == "succeeded", job.error
    new = job.result["new_envid"]
    mark = b.rec.mark()
    await wait_pass(b, new, last, since=mark)
    await wait_until(lambda: env_ids(a) == [], timeout=60, what="a to let go")
    no_mismatch(a, b)


@pytest.mark.parametrize("rnd", [1, 2, 3])
async def test_cancel_in_any_precopy_round_leaves_the_env_running_untouched(cluster, nursery, rnd):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    proxy = await _proxy_to(nursery, b)
    proxy.rate = 2_000_000
    env, last = await _memtest(cluster, a, ["1024", "1024", "0"])
    free_b = free(b)
    res = await call(cluster, a, "migrate", {"envid": env, "to": proxy.addr, "method": "precopy",
                                             "max_rounds": 1000, "downtime_limit_ms": 0,
                                             "detach": True})
    job = a.migrations.jobs.running[res["job"]]
    await wait_until(lambda: job.progress.get("round", 0) >= rnd, timeout=60,
                     what=f"round {rnd}")
    out = await call(cluster, a, "cancel", {"job": job.id})
    assert out["state"] == "cancelled"
    assert ps_entry(a, env)["state"] == ""                  # running, as before
    await wait_until(lambda: env_ids(b) == [] and free(b) == free_b, timeout=30,
                     what="b to drop its copy")
    with pytest.raises(RemoteError) as exc:
        await call(cluster, a, "cancel", {"job": job.id})
    assert exc.value.code == "bad-state" and "cancelled already" in exc.value.message
    mark = a.rec.mark()
    await wait_pass(a, env, last_pass(a, env), since=mark)
    no_mismatch(a, b)


async def test_a_finished_job_cannot_be_cancelled(cluster):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    env, _ = await _memtest(cluster, a)
    res = await call(cluster, a, "migrate", {"envid": env, "to": cluster.addr(b)})
    with pytest.raises(RemoteError) as exc:
        await call(cluster, a, "cancel", {"job": res["job"]})
    assert exc.value.code == "bad-state" and "succeeded already" in exc.value.message
    with pytest.raises(RemoteError) as exc:
        await call(cluster, a, "cancel", {"job": "abcdef"})
    assert exc.value.code == "no-such-job"


def test_sigterm_of_a_pgfault_origin_pushes_the_rest_first_and_loses_nothing(daemons):
    a = daemons("a")
    b = daemons("b")
    env = ctl_json(a, "spawn", "memtest", "4096", "256")["new_envid"]     # 16 MiB
    first = wait_dpass(a, timeout=240)
    r = ctl_json(a, "migrate", str(env), "--to", b.addr, "--method", "pgfault", "--no-push",
                 "--resume")
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(180) == 0
    log = a.log()
    assert "pushing the rest of a served migration before shutting down" in log
    assert "served migration released" in log
    new = r["new_envid"]
    assert [e["remote_pages"] for e in ctl_json(b, "ps") if e["envid"] == new] == [0]
    got = wait_dpass(b, first, timeout=240)
    wait_dpass(b, got, timeout=240)                       # and another full pass after


def test_a_second_signal_exits_at_once_naming_what_it_abandons(daemons):
    a = daemons("a")
    b = daemons("b")
    env = ctl_json(a, "spawn", "memtest", "1024", "64")["new_envid"]
    wait_dpass(a, timeout=240)
    ctl_json(a, "migrate", str(env), "--to", b.addr, "--method", "pgfault", "--no-push")
    b.proc.send_signal(signal.SIGSTOP)                    # it will never take the pages
    try:
        a.proc.send_signal(signal.SIGTERM)
        wait_sync(lambda: "pushing the rest" in a.log(), what="the orderly part to start")
        assert a.proc.poll() is None
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(30) == 0
        err = a.log()
        assert "exiting at once; this abandons" in err and f"pages of env {env}" in err
    finally:
        b.proc.send_signal(signal.SIGCONT)

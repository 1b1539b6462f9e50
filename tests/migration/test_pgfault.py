"""Issue 6: demand paging (pgfault) migration.

- push off: every page of a 4,096-page memtest arrives by fault and memtest
  verifies them all; push on: each page is sent exactly once and the origin
  releases the env and its frames;
- a chain normal -> pgfault -> pgfault -> normal over three nodes, moving on
  while pages are still remote on the node being left (that node pulls the
  remaining pages in first: the documented choice);
- faults: the link to the origin's page server cut (by jmig/testing/proxy.py)
  while the env faults; the origin killed and restarted; the destination
  killed and the env recovered on the origin; recover refused while the
  destination has the env;
- security: the page server refuses an authenticated client that is not the
  migration's destination or lacks its token.

How the proxy gets between destination and page server: the destination
connects to the address the origin advertises in the migration (by default
the origin's --host).  The in-process origin's `advertised_host` is replaced
with the proxy's address; the proxy listens there on the page-server port
(P+2) and forwards to the origin's real page server.  Nothing else goes
through the proxy.
"""
import re
import select
import socket

import attrs
import pytest
import trio

from jmig.ctl.client import RemoteError
from jmig.node.migration.origin import Outgoing
from jmig.node.migration.pager import FINISHED_KEPT
from jmig.proto.handshake import AuthError
from jmig.proto.wire import connect
from jmig.testing import next_host

from .helpers import (call, ctl_json, ctl_ok, dfree, dpasses, dps, env_ids, free, image_file,
                      last_pass, no_mismatch, ps_entry, same_image, start, wait_dpass,
                      wait_pass, wait_sync, wait_until)
from jmig.testing import Proxy

MT_BASE = 0x10000000


async def stats(cluster, node) -> dict:
    return (await call(cluster, node, "stats"))["pager"]


async def load_image(cluster, node, data: bytes, name: str = "mt") -> int:
    image_file(node, name).write_bytes(data)
    return (await call(cluster, node, "load", {"name": name}))["envid"]


def memtest_vpns(node, envid, npages):
    return {p.va for p in node.kernel.env_pages(envid)} & \
        {MT_BASE + i * 4096 for i in range(npages)}


@pytest.mark.slow
async def test_pgfault_without_push_brings_every_page_by_fault_and_memtest_verifies_all_4096(
        cluster, memtest4096_image):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    envid = await load_image(cluster, a, memtest4096_image)
    npages = len(a.kernel.env_pages(envid))
    assert npages > 4096
    r = await call(cluster, a, "migrate", {"envid": envid, "to": cluster.addr(b),
                                           "method": "pgfault", "push": False, "resume": True})
    new = r["new_envid"]
    assert r["pages"] == npages and r["bytes"] < 64 * npages     # page table entries only
    assert ps_entry(a, envid)["state"] == "paused, serving pages"
    first = await wait_pass(b, new, after=1)                     # pass 2, mostly on B
    await wait_pass(b, new, after=first)                         # a whole pass on B
    st = await stats(cluster, b)
    assert st["pages_pushed"] == 0
    assert st["pages_fetched"] >= 4096 + 4                       # memtest's pages and its table
    assert st["remote_faults"] == st["pages_fetched"]            # each one by its own fault
    assert st["duplicates"] == 0
    assert len(memtest_vpns(b, new, 4096)) == 4096
    assert not [va for va in b.kernel.remote_pages(new) if va >= MT_BASE]
    origin = await stats(cluster, a)
    assert origin["pages_push_sent"] == 0 and origin["pages_served"] == st["pages_fetched"]
    no_mismatch(a, b)


@pytest.mark.slow
async def test_pgfault_with_push_installs_each_page_once_and_origin_releases_the_env(
        cluster, memtest4096_image):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    free_before = free(a)
    envid = await load_image(cluster, a, memtest4096_image)
    npages = len(a.kernel.env_pages(envid))
    r = await call(cluster, a, "migrate", {"envid": envid, "to": cluster.addr(b),
                                           "method": "pgfault", "push": True, "resume": True})
    new = r["new_envid"]
    await wait_until(lambda: env_ids(a) == [], timeout=120, what="the origin to release")
    assert free(a) == free_before                                # every frame back
    a.kernel.check_invariants()
    origin = await stats(cluster, a)
    dest = await stats(cluster, b)
    assert origin["releases"] == 1 and origin["outgoing_active"] == 0
    # Pushed at most once each; a fault is answered on its own channel even
    # when the page's pushed copy is still in flight, and the destination
    # installs whichever arrives first, once.
    assert origin["pages_push_sent"] <= npages
    sent = origin["pages_served"] + origin["pages_push_sent"]
    assert dest["pages_fetched"] + dest["pages_pushed"] == npages
    assert dest["duplicates"] == sent - npages
    assert dest["pages_pushed"] > 0 and dest["incoming_active"] == 0
    assert b.kernel.remote_pages(new) == []
    await wait_pass(b, new, after=1)
    no_mismatch(a, b)
    # A long-lived destination remembers its last FINISHED_KEPT finished
    # migrations only (the newest ones), not every one since it started.
    pager = b.migrations.pager
    (done,) = pager.incoming.values()
    for i in range(2 * FINISHED_KEPT):
        pager.incoming[f"old{i}"] = attrs.evolve(done, mid=f"old{i}")
    pager.prune_finished()
    assert list(pager.incoming) == [f"old{i}" for i in range(FINISHED_KEPT, 2 * FINISHED_KEPT)]


async def test_chain_normal_pgfault_pgfault_normal_moving_on_while_pages_are_remote(cluster):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    c = await start(cluster, "c")
    free_a, free_c = free(a), free(c)
    env = (await call(cluster, a, "spawn", {"program": "memtest", "args": ["1024", "256"]}))["envid"]
    last = await wait_pass(a, env)

    async def hop(src, dst, method, **kw):
        nonlocal env, last
        last = max(last, last_pass(src, env))
        mark = dst.rec.mark()
        r = await call(cluster, src, "migrate", {"envid": env, "to": cluster.addr(dst),
                                                 "method": method, "resume": True, **kw})
        env = r["new_envid"]
        return mark

    # normal A -> B
    mark = await hop(a, b, "normal")
    last = await wait_pass(b, env, last, since=mark)
    # pgfault B -> C (no push: pages stay on B until touched)
    mark = await hop(b, c, "pgfault", push=False)
    await wait_until(lambda: c.migrations.pager.totals["pages_fetched"] > 100, what="faults on C")
    assert c.kernel.remote_pages(env), "every page already arrived: too late to test"
    # pgfault C -> A while pages are still remote on C: C pulls them in first,
    # which lets B go.
    mark = await hop(c, a, "pgfault", push=False)
    assert env_ids(b) == [], "B still holds the env after every page left it"
    assert b.migrations.origin.totals["releases"] == 1
    last = await wait_pass(a, env, last, since=mark)          # verifying pages fetched from C
    assert a.kernel.remote_pages(env)                         # (memtest never reads some)
    # normal A -> B while pages are still remote on A: A pulls them in from C first.
    mark = await hop(a, b, "normal")
    assert env_ids(c) == [] and env_ids(a) == []
    assert c.migrations.origin.totals["releases"] == 1
    first = await wait_pass(b, env, last, since=mark)
    await wait_pass(b, env, first, since=mark)                   # a whole pass on B
    assert [env_ids(n) for n in (a, b, c)] == [[], [env], []]
    assert (free(a), free(c)) == (free_a, free_c)
    for n in (a, b, c):
        n.kernel.check_invariants()
    no_mismatch(a, b, c)


async def test_moving_on_an_env_whose_pages_are_all_remote_asks_for_them_in_runs(cluster):
    """pull_all (before a remote env moves on) asks once per run of up to
    65 consecutive pages, not once per page, and every page arrives."""
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    c = await start(cluster, "c")
    env = (await call(cluster, a, "spawn", {"program": "memtest", "args": ["1024", "256"]}))["envid"]
    last = await wait_pass(a, env)
    await call(cluster, a, "pause", {"envid": env})
    npages = len(a.kernel.env_pages(env))
    r = await call(cluster, a, "migrate", {"envid": env, "to": cluster.addr(b),
                                           "method": "pgfault", "push": False})
    env = r["new_envid"]
    assert len(b.kernel.remote_pages(env)) == npages          # paused: nothing fetched yet
    mark = c.rec.mark()
    r = await call(cluster, b, "migrate", {"envid": env, "to": cluster.addr(c),
                                           "method": "normal", "resume": True})
    origin = a.migrations.origin.totals
    assert origin["pages_served"] == npages and origin["releases"] == 1
    assert origin["page_requests"] <= npages // 65 + 8, origin   # memtest's pages: a few runs
    await wait_pass(c, r["new_envid"], last, since=mark)
    assert env_ids(a) == [] and env_ids(b) == []
    no_mismatch(a, b, c)


async def test_link_cut_while_faulting_env_waits_for_pages_and_finishes_when_link_returns(
        cluster, nursery):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    proxy = Proxy(next_host(), a.ports["pager"], a.cfg.host, a.ports["pager"])
    await nursery.start(proxy.serve)
    a.advertised_host = lambda fs: proxy.listen_host          # B reaches A's pages via the proxy
    env = (await call(cluster, a, "spawn", {"program": "memtest", "args": ["1024", "256"]}))["envid"]
    last = await wait_pass(a, env)
    r = await call(cluster, a, "migrate", {"envid": env, "to": cluster.addr(b),
                                           "method": "pgfault", "push": False, "resume": True})
    new = r["new_envid"]
    await wait_until(lambda: b.migrations.pager.totals["pages_fetched"] > 50, what="faults on B")

    proxy.pause()                                             # the link goes silent...
    await wait_until(lambda: "waiting for pages" in ps_entry(b, new)["state"],
                     what="the env to wait for a page")
    ps = (await call(cluster, b, "ps"))["envs"]
    assert "waiting for pages" in ps[0]["state"]
    proxy.down()                                              # ...then breaks
    await wait_until(lambda: "unreachable" in b.migrations.pager.annotate(new),
                     what="the origin to be seen unreachable")
    ps = (await call(cluster, b, "ps"))["envs"]
    assert "waiting for pages" in ps[0]["state"] and "origin a unreachable, retrying" in \
        ps[0]["state"], ps
    fetched = b.migrations.pager.totals["pages_fetched"]
    await trio.sleep(0.5)
    assert b.migrations.pager.totals["pages_fetched"] == fetched         # nothing arrives meanwhile
    assert b.kernel.remote_pages(new)

    proxy.up()                                                # the link comes back
    first = await wait_pass(b, new, last)
    await wait_pass(b, new, first)                            # a whole pass after it returned
    st = await stats(cluster, b)
    assert st["reconnects"] >= 1 and st["duplicates"] == 0
    assert len(memtest_vpns(b, new, 1024)) == 1024
    assert not [va for va in b.kernel.remote_pages(new) if va >= MT_BASE]
    assert len(proxy.links) >= 2                              # a new connection after the cut
    no_mismatch(a, b)


MEMTEST = ["memtest", "256", "64"]


def test_origin_killed_and_restarted_destroys_env_with_message_naming_lost_pages(daemons):
    a = daemons("a")
    b = daemons("b")
    envid = ctl_json(a, "spawn", *MEMTEST)["new_envid"]
    wait_dpass(a)
    free_b = dfree(b)
    r = ctl_json(a, "migrate", str(envid), "--to", b.addr, "--method", "pgfault",
                 "--no-push")
    new = r["new_envid"]
    a.kill()                                                  # the origin dies with the pages
    ctl_ok(b, "resume", str(new))
    wait_sync(lambda: "waiting for pages" in dps(b)[0]["state"] and
              "origin a unreachable, retrying" in dps(b)[0]["state"], what="the env to wait")
    assert "lost the migration" not in b.console()
    daemons("a-again", host=a.host)                           # back, but it knows nothing
    wait_sync(lambda: "lost the migration" in b.console(), what="the loss to be noticed")
    line = next(l for l in b.console().splitlines() if "lost the migration" in l)
    assert line.startswith(f"[{new:08x}] origin a lost the migration; ")
    assert "pages are gone (" in line and "destroying the env" in line
    m = re.search(r"; (\d+) pages are gone \(([0-9a-f]{8})", line)
    assert m and int(m.group(1)) > 0, line
    wait_sync(lambda: dps(b) == [], what="the env to be destroyed")
    wait_sync(lambda: dfree(b) == free_b, what="its frames to be freed")
    assert ctl_json(b, "stats")["pager"]["migrations_lost"] == 1


def test_destination_killed_then_recover_on_origin_brings_the_process_back_intact(daemons):
    a = daemons("a")
    b = daemons("b")
    envid = ctl_json(a, "spawn", *MEMTEST)["new_envid"]
    wait_dpass(a)
    ctl_ok(a, "pause", str(envid))
    ctl_ok(a, "save", str(envid), "before")
    last = max(dpasses(a))
    ctl_json(a, "migrate", str(envid), "--to", b.addr, "--method", "pgfault", "--no-push",
             "--resume")
    wait_dpass(b, last)                                        # it ran (and faulted) on B
    state = dps(a)[0]["state"]
    assert "serving pages" in state
    b.kill()
    code, out, err = a.ctl("recover", str(envid))
    assert code == 1 and "cannot be reached" in err and "--force" in err
    assert "serving pages" in dps(a)[0]["state"]
    out = ctl_ok(a, "recover", str(envid), "--force")
    assert out.strip() == f"Env {envid}: the destination b: unreachable; recovered here, paused"
    assert dps(a)[0]["state"] == "paused"
    ctl_ok(a, "save", str(envid), "after")
    same_image(image_file(a, "before"), image_file(a, "after"))
    ctl_ok(a, "resume", str(envid))
    p = wait_dpass(a, last)
    wait_dpass(a, p)
    assert [e["envid"] for e in dps(a)] == [envid]


async def test_recover_is_refused_while_the_destination_is_alive_and_has_the_env(cluster):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    env = (await call(cluster, a, "spawn", {"program": "memtest", "args": MEMTEST[1:]}))["envid"]
    last = await wait_pass(a, env)
    r = await call(cluster, a, "migrate", {"envid": env, "to": cluster.addr(b),
                                           "method": "pgfault", "push": False})
    for force in (False, True):
        with pytest.raises(RemoteError) as exc:
            await call(cluster, a, "recover", {"envid": env, "force": force})
        assert exc.value.code == "refused"
        assert f"still has env {env}" in exc.value.message and "cannot be recovered" in \
            exc.value.message
        assert ps_entry(a, env)["state"] == "paused, serving pages"
    # The migration is unharmed.
    mark = b.rec.mark()
    await call(cluster, b, "resume", {"envid": r["new_envid"]})
    await wait_pass(b, r["new_envid"], last, since=mark)


async def test_page_server_refuses_clients_that_are_not_the_destination_or_lack_the_token(
        cluster):
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    env = (await call(cluster, a, "spawn", {"program": "memtest", "args": MEMTEST[1:]}))["envid"]
    last = await wait_pass(a, env)
    r = await call(cluster, a, "migrate", {"envid": env, "to": cluster.addr(b),
                                           "method": "pgfault", "push": False})
    out = a.migrations.origin.by_env[env]
    host, port = a.cfg.host, a.ports["pager"]

    async def attach(name, msg, secret=cluster.secret):
        fs = await connect(host, port, secret, "pager", name)
        try:
            await fs.send({"t": "attach", "need": b"", "channel": "faults", **msg})
            with trio.fail_after(10):
                return await fs.receive()
        finally:
            await fs.aclose()

    # Authenticated (it knows the cluster secret) but another node, with the right token.
    reply = await attach("c", {"mid": out.mid, "token": out.token})
    assert reply == {"t": "error", "code": "refused", "message": "not this migration's destination"}
    # Claiming to be the destination, with a wrong token, or without one (a
    # malformed attach).
    reply = await attach(b.name, {"mid": out.mid, "token": b"x" * 16})
    assert reply["t"] == "error" and reply["code"] == "refused", reply
    for msg in ({"mid": out.mid}, {"mid": out.mid, "token": "not bytes"}):
        reply = await attach(b.name, msg)
        assert reply["t"] == "error" and reply["code"] == "protocol", (msg, reply)
        assert "token" in reply["message"]
    # Another migration id, and no secret at all.
    reply = await attach(b.name, {"mid": "0" * 16, "token": out.token})
    assert reply["code"] == "unknown-migration"
    with pytest.raises(AuthError):
        await attach(b.name, {"mid": out.mid, "token": out.token}, secret=b"wrong" * 8)
    totals = a.migrations.origin.totals
    assert totals["pages_served"] == 0 and totals["pages_push_sent"] == 0
    # The real destination still gets its pages.
    mark = b.rec.mark()
    await call(cluster, b, "resume", {"envid": r["new_envid"]})
    await wait_pass(b, r["new_envid"], last, since=mark)
    assert a.migrations.origin.totals["pages_served"] > 0


async def test_destination_that_cannot_reach_the_page_server_refuses_before_the_process_stops(
        cluster):
    """The destination's pager attaches to the origin's page server before
    the source stops the process (Begin, then Ready): when it cannot, the
    migration is refused and the process ran on throughout, never paused."""
    a = await start(cluster, "a")
    b = await start(cluster, "b")
    free_b = free(b)
    env = (await call(cluster, a, "spawn", {"program": "memtest", "args": ["64", "8"]}))["envid"]
    last = await wait_pass(a, env)
    nowhere = next_host()                           # a loopback address nothing listens on
    with trio.fail_after(30):
        with pytest.raises(RemoteError) as exc:
            await call(cluster, a, "migrate", {"envid": env, "to": cluster.addr(b),
                                               "method": "pgfault", "page_server": nowhere})
    assert exc.value.code == "unreachable", exc.value
    assert f"cannot attach to the page server of {a.name} at {nowhere}:" in exc.value.message
    assert "still here, running" in exc.value.message
    # It ran all along (memtest kept passing during the 5 s attempt), runs on.
    during = last_pass(a, env)
    assert during > last + 1, (last, during)
    assert ps_entry(a, env)["state"] == ""          # not paused, not held by a migration
    await wait_pass(a, env, during)
    # Nothing of it stays on B or in either side's pager tables.
    assert env_ids(b) == [] and free(b) == free_b
    assert (await stats(cluster, b))["incoming_active"] == 0
    assert a.migrations.origin.outgoing == {} and a.migrations.origin.by_env == {}
    no_mismatch(a, b)


def test_the_origin_sees_a_fault_request_waiting_on_its_socket_before_reading_it():
    """The push gives way to a fault (origin.py's _push) only while a
    request sits unread on the faults connection: Outgoing.fault_waiting
    tells exactly that, and nothing once the faults channel is gone."""
    out = Outgoing(mid="m", envid=4096, dest="b", dest_addr=("127.0.0.1", 1), token=b"t" * 16,
                   push=True, prefetch=0, runs=[(0x800, 4, 7)])
    assert not out.fault_waiting()                 # no faults channel attached
    origin, dest = socket.socketpair()
    with origin, dest:
        out.faults_poll = select.poll()
        out.faults_poll.register(origin.fileno(), select.POLLIN)
        assert not out.fault_waiting()
        dest.send(b"\x00\x00\x00\x10get 0x800")
        assert out.fault_waiting()
        origin.recv(100)
        assert not out.fault_waiting()
        out.faults_poll = None
        dest.send(b"more")
        assert not out.fault_waiting()

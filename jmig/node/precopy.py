"""Pre-copy live migration: copy memory while the process runs, then stop
it only for the last dirty pages (QEMU's default, CRIU's pre-dump).

Round 1 sends every page while the env keeps running; each later round
sends the pages changed since the previous one: D bit set (the kernel
clears D after each round and the core's TLB sets it again on the next
write), or a different frame or permission behind the same address
(copy-on-write, page_map), or a page that is new.  When the pages left
could be sent within the downtime limit at the bandwidth measured so far,
or after max rounds, the env is paused and the rest is sent with its
registers and final page map; the destination commits (migrate.py's
two-phase commit) and the source destroys its copy.  With `then:
pgfault` the final dirty pages are not sent at all: they become remote
pages that the destination fetches on demand (pager.py), the hybrid that
QEMU and CRIU offer.

On the destination's port P, after {t: begin, method: "precopy", header}:

    source -> dest   {t: pages, b: <PAGE/ZERO records>, round}   (replacing earlier copies)
    source -> dest   {t: final, header, map: <(u32 vpn, u16 perm)...>, remote: <u32 vpn...>,
                      pager, token, push, prefetch}
    dest -> source   {t: prepared, envid};  then commit / committed as in migrate.py

Cancelling (the client goes away, or the destination dies) before the
commit leaves the env running on the source, untouched.
"""
from __future__ import annotations

import os
import struct
import time

import trio

import jmig
from ..kernel import events as ev
from ..proto import pstream
from ..proto.frames import ProtocolError
from ..proto.handshake import AuthError
from ..proto.pstream import StreamError, decode_pages, encode_pages
from ..proto.wire import ConnectionClosed, FramedStream, send_error
from .failpoints import failpoint
from .migrate import REPLY_TIMEOUT, MigrationError, parse_target

BATCH_PAGES = 64
PAGE_RECORD = 4111


def _pack_map(items) -> bytes:
    return b"".join(struct.pack(">IH", vpn, perm) for vpn, perm in items)


def _unpack_map(b) -> list[tuple[int, int]]:
    if not isinstance(b, bytes) or len(b) % 6:
        raise ProtocolError("bad page map")
    return [struct.unpack_from(">IH", b, i) for i in range(0, len(b), 6)]


def _arg_int(args: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = args.get(key, default)
    if v is None:
        v = default
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise MigrationError("bad-request", f"{key} must be an integer in {lo}..{hi}")
    return v


async def send_precopy(node, envid: int, target: str, args: dict, progress=None) -> dict:
    max_rounds = _arg_int(args, "max_rounds", 8, 1, 1000)
    limit_ms = _arg_int(args, "downtime_limit_ms", 50, 0, 3_600_000)
    prefetch = _arg_int(args, "prefetch", 0, 0, 64)
    then = args.get("then", "stop") or "stop"
    if then not in ("stop", "pgfault"):
        raise MigrationError("bad-request", "then must be stop or pgfault")
    push = args.get("push", True)
    resume = bool(args.get("resume", False))
    keep = args.get("keep", False)
    if not isinstance(keep, bool):
        raise MigrationError("bad-request", "keep must be true or false")
    if keep and then == "pgfault":
        raise MigrationError("bad-request", "--keep makes no sense with --then pgfault: the "
                             "origin keeps the pages until they have all moved")
    k = node.kernel
    host, port = parse_target(target)
    e = k.get_env(envid)
    if e.frozen or envid in node.busy:
        raise ev.KernelError(ev.BAD_STATE, f"env {envid} is {e.frozen or node.busy[envid]}")
    if k.remote_pages(envid):
        await node.pager.pull_all(envid)
    node.busy[envid] = "migrating (pre-copy)"
    t0 = time.perf_counter()
    mid = os.urandom(8).hex()
    token = os.urandom(16)
    fs = None
    paused_here = False
    commit_sent = committed = False
    rounds: list[dict] = []
    try:
        try:
            fs = await node.connect(host, port, "normal")
        except (OSError, trio.TooSlowError) as exc:
            raise MigrationError("unreachable", f"cannot reach {target}: {exc}") from None
        header = pstream.header_fields(k.header(envid), node=node.name,
                                       jmig_version=jmig.__version__, pages=0, method="precopy")
        await fs.send({"t": "begin", "method": "precopy", "mid": mid, "src": node.name,
                       "resume": resume, "header": header})
        t_setup = time.perf_counter()
        snap = k.page_snapshot(envid)
        k.collect_dirty(envid)
        to_send = sorted(snap)
        sent_bytes = 0
        send_time = 0.0
        total_sent = 0
        rnd = 0
        while True:
            rnd += 1
            r0 = time.perf_counter()
            n = await _send_pages(fs, k, envid, to_send, snap, rnd, progress, total_sent)
            total_sent += n
            dt = time.perf_counter() - r0
            sent_bytes += n * PAGE_RECORD
            send_time += dt
            failpoint("precopy.src.after_round")
            # What changed while we were sending?
            changed = _changed(k, envid, snap)
            bandwidth = sent_bytes / send_time if send_time > 0 else float("inf")
            estimate_ms = len(changed) * PAGE_RECORD / bandwidth * 1000 if bandwidth else 0
            rounds.append({"round": rnd, "pages": n, "seconds": dt, "dirty": len(changed),
                           "dirty_rate_pps": len(changed) / dt if dt > 0 else 0.0})
            node.log.info("pre-copy round", envid=envid, round=rnd, pages=n, dirty=len(changed),
                          estimate_ms=round(estimate_ms, 2))
            if estimate_ms <= limit_ms or rnd >= max_rounds:
                break
            to_send = sorted(changed)
        # Stop the process for the rest.
        t_pause = time.perf_counter()
        if not k.get_env(envid).paused:
            k.pause(envid)
            paused_here = True
        e.frozen = "migrating"
        # The pages found changed after the last round, and anything since.
        final = sorted(changed | _changed(k, envid, snap))
        remote: list[int] = []
        if then == "pgfault":
            remote = final
        else:
            total_sent += await _send_pages(fs, k, envid, final, snap, rnd + 1, progress,
                                            total_sent)
        page_map = [(vpn, perm) for vpn, (pfn, perm) in sorted(snap.items())]
        header = pstream.header_fields(k.header(envid), node=node.name,
                                       jmig_version=jmig.__version__, pages=len(page_map),
                                       method="precopy")
        final_msg = {"t": "final", "header": header, "map": _pack_map(page_map),
                     "remote": struct.pack(f">{len(remote)}I", *remote)}
        if remote:
            final_msg.update({"pager": [node.advertised_host(fs), node.ports["pager"]],
                              "origin_port": node.cfg.port, "token": token, "push": bool(push),
                              "prefetch": prefetch})
        await fs.send(final_msg)
        with trio.fail_after(REPLY_TIMEOUT):
            reply = await fs.receive()
        node.migrator._check_reply(reply, "prepared")
        failpoint("precopy.src.after_prepared")
        if remote:
            _serve_remote(node, mid, envid, fs.peer, (host, port), token, bool(push),
                          prefetch, remote, snap)
        commit_sent = True
        await fs.send({"t": "commit"})
        with trio.fail_after(REPLY_TIMEOUT):
            reply = await fs.receive()
        node.migrator._check_reply(reply, "committed")
        committed = True
        new_envid = reply["envid"]
    except (ConnectionClosed, ProtocolError, trio.TooSlowError, AuthError, MigrationError,
            trio.Cancelled) as exc:
        if commit_sent and not isinstance(exc, trio.Cancelled):
            committed, new_envid = await node.migrator._resolve(envid, mid, host, port, "normal")
            if committed is None:
                node.busy.pop(envid, None)
                raise MigrationError("in-doubt", f"lost contact with {target} after the commit; "
                                     f"env {envid} is held until `jmigctl recover {envid}`") \
                    from None
        if not committed:
            node.pager.forget(mid)
            if isinstance(exc, trio.Cancelled):
                raise
            if isinstance(exc, MigrationError):
                raise
            raise MigrationError("failed", f"pre-copy to {target} failed: "
                                 f"{exc or type(exc).__name__}; env {envid} keeps running here") \
                from None
    finally:
        node.busy.pop(envid, None)
        if fs is not None:
            with trio.CancelScope(shield=True):
                await fs.aclose()
        if not committed:
            alive = k.envs[envid & 0x3FF].env_id == envid and k.envs[envid & 0x3FF].status
            if alive and envid not in node.migrator.in_doubt:
                e.frozen = ""
                if paused_here:
                    k.resume(envid)
                    node.poke()
    t_done = time.perf_counter()
    if remote:
        e.frozen = "serving pages"
    elif keep:
        e.frozen = ""                      # the source copy stays, paused (as for normal)
        node.log.info("migration kept source copy", envid=envid)
    else:
        k.env_destroy(e, 0, f"migrated to {target}")
        node.dispatch_events()
    stats = {"envid": envid, "new_envid": new_envid, "method": "precopy", "to": target, "mid": mid,
             "then": then, "pages": len(page_map), "bytes": total_sent * PAGE_RECORD,
             "pages_sent": total_sent, "wire_bytes": fs.bytes_sent + fs.bytes_received,
             "rounds": len(rounds), "round_stats": rounds, "total_s": t_done - t0,
             "setup_s": t_setup - t0, "downtime_s": t_done - t_pause,
             "final_pages": len(final), "postcopy_pages": len(remote),
             "dirty_rate_pps": rounds[-1]["dirty_rate_pps"] if rounds else 0.0,
             "mib_per_s": total_sent * PAGE_RECORD / (1 << 20) / (t_done - t0), "resumed": resume,
             "kept": keep}
    node.log.info("pre-copy migration finished", envid=envid, new_envid=new_envid,
                  rounds=len(rounds), downtime_ms=round(stats["downtime_s"] * 1000, 2),
                  total_ms=round(stats["total_s"] * 1000, 2))
    return stats


async def _send_pages(fs, k, envid, vpns, snap, rnd, progress, done_before) -> int:
    """Send the current contents of vpns (recording frame and perm in snap)."""
    n = 0
    for i in range(0, len(vpns), BATCH_PAGES):
        batch = []
        for vpn in vpns[i:i + BATCH_PAGES]:
            info = k.page_info(envid, vpn)
            if info is None:
                continue                       # unmapped meanwhile
            pfn, perm = info
            snap[vpn] = info
            batch.append((vpn << 12, perm, k.phys.frame(pfn)))
        if batch:
            await fs.send({"t": "pages", "b": encode_pages(batch), "round": rnd})
            n += len(batch)
            if progress is not None:
                await progress(done_before + n, done_before + len(vpns),
                               (done_before + n) * PAGE_RECORD)
    return n


def _changed(k, envid: int, snap: dict) -> set[int]:
    """Pages to (re)send: dirty, remapped, new; pages gone are dropped from snap."""
    dirty = k.collect_dirty(envid)
    now = k.page_snapshot(envid)
    for vpn in [v for v in snap if v not in now]:
        del snap[vpn]
    return {vpn for vpn, info in now.items() if vpn in dirty or snap.get(vpn) != info}


def _serve_remote(node, mid, envid, dest, dest_addr, token, push, prefetch, remote, snap):
    """Make this node's page server serve the pages left remote (the hybrid)."""
    from .pager import Outgoing, runs_of
    node.pager.track(Outgoing(
        mid=mid, envid=envid, dest=dest, dest_addr=dest_addr, token=token, push=push,
        prefetch=prefetch, runs=runs_of((v, snap[v][1]) for v in sorted(remote)),
        started=time.perf_counter(), committed=True))


async def receive_precopy(node, fs: FramedStream, begin: dict) -> None:
    """The destination's side of a pre-copy migration."""
    k = node.kernel
    mid = begin.get("mid")
    if not isinstance(mid, str):
        raise ProtocolError("pre-copy begin without a migration id")
    try:
        h = pstream.env_header(begin.get("header") or {})
    except StreamError as exc:
        await fs.send({"t": "error", "code": "bad-stream", "message": str(exc)})
        return
    env = None
    try:
        env = k.create_from(h, keep_id=True)
        node.log.info("pre-copy incoming", src=begin.get("src"), mid=mid, envid=env.env_id)
        while True:
            msg = await fs.receive()
            t = msg.get("t")
            if t == "pages" and isinstance(msg.get("b"), bytes):
                need = len(msg["b"]) // PAGE_RECORD + 1
                if need > k.phys.nfree:
                    raise ev.KernelError(ev.NO_MEMORY, "out of memory receiving pages")
                for p in decode_pages(msg["b"]):
                    k.restore_page(env, p.va, p.perm, p.data, replace=True)
            elif t == "final":
                break
            else:
                raise ProtocolError(f"unexpected {t!r} in a pre-copy migration")
        final = msg
        fh = pstream.env_header(final.get("header") or {})
        page_map = dict(_unpack_map(final.get("map", b"")))
        rb = final.get("remote", b"")
        if not isinstance(rb, bytes) or len(rb) % 4:
            raise ProtocolError("bad remote list")
        remote = set(struct.unpack(f">{len(rb) // 4}I", rb))
        for vpn in [v for v, pte in env.aspace.pte.items() if v not in page_map]:
            k.drop_page(env, vpn << 12)
        for vpn, perm in page_map.items():
            pstream.check_page(vpn << 12, perm)
            if vpn in remote:
                k.restore_page(env, vpn << 12, perm, None, replace=True)
            elif env.aspace.page_lookup(vpn << 12) is None:
                raise StreamError(f"page {vpn << 12:#010x} is in the final map but never arrived")
            elif (env.aspace.pte[vpn] & 0xFFF & ~0x60) != (perm | 1):
                raise StreamError(f"page {vpn << 12:#010x} has other permissions than announced")
        k.set_registers(env, fh)
        await fs.send({"t": "prepared", "envid": env.env_id})
        msg = await fs.receive()
        if msg.get("t") != "commit":
            raise ProtocolError(f"expected commit, got {msg.get('t')!r}")
        k.commit_incoming(env)
        node.migrator.committed[mid] = env.env_id
        if remote:
            node.pager._on_commit({"mid": mid, "src": begin.get("src"), **final}, env)
        if begin.get("resume"):
            k.resume(env.env_id)
        node.dispatch_events()
        node.poke()
        node.announce_arrival({"method": "precopy", "envid": env.env_id, "src": begin.get("src"),
                               "pages": len(page_map), "resumed": bool(begin.get("resume"))})
        node.log.info("pre-copy committed", envid=env.env_id, mid=mid, remote=len(remote))
        env = None
        await fs.send({"t": "committed", "envid": node.migrator.committed[mid],
                       "resumed": bool(begin.get("resume"))})
    except (StreamError, ev.KernelError) as exc:
        code = exc.code if isinstance(exc, ev.KernelError) else "bad-stream"
        node.log.warning("pre-copy refused", mid=mid, reason=str(exc))
        await send_error(fs, code, str(exc))
    finally:
        if env is not None:
            k.abort_incoming(env)
            node.dispatch_events()

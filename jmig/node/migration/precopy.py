"""Pre-copy live migration: copy memory while the process runs, then stop
it only for the last dirty pages (QEMU's default, CRIU's pre-dump).

Round 1 sends every page while the env keeps running; each later round
sends the pages that changed during the one before.  The kernel keeps the
log (AddressSpace.track_changes): a page written (its D bit is cleared
after each round, so the core's next write sets it again and logs it),
mapped, unmapped or remapped (copy-on-write, page_map).  When the pages
dirtied during a round could be sent within the downtime limit at the
bandwidth measured so far, or after max rounds, the env is paused and only
those are sent: their pages, the registers, and a Final naming them, the
pages to drop and the total, so the stop phase costs O(pages changed),
not O(process).  With `then: pgfault` the final pages are not sent at
all: they become remote pages that the destination fetches on demand
from this node (origin.py), the hybrid that QEMU and CRIU offer.

On the destination's P:

    source -> dest   Begin{header}
                     ( Pages{b, round}* RoundEnd{round}  <- RoundApplied{round} )+
                     Final{header, map, remote, drops, pages, pager?, ...}

A round ends with RoundEnd, which the destination answers once it has
installed every page before it: the source stops the process only when
the destination has caught up (the stop phase does not wait behind a
backlog), and the bandwidth it measures is end to end.

then session.py's steps.  Until the decision the env runs here (if it was
running); an abort leaves it exactly so.
"""
from __future__ import annotations

import os
import time

from ...kernel import events as ev
from ...proto import migration as m
from ...proto import pstream
from ...proto.pstream import StreamError, decode_pages, encode_pages
from ..failpoints import failpoint
from .base import Hold, MigrationError, SourceCopy
from .origin import Outgoing, runs_of

BATCH_PAGES = 64
PAGE_RECORD = 4111


class PrecopySend(SourceCopy):
    name = "precopy"
    port_kind = "normal"

    def __init__(self, node, envid: int, *, keep: bool = False, max_rounds: int = 8,
                 downtime_limit_ms: int = 50, then: str = "stop", push: bool = True,
                 prefetch: int = 0, destination_addr=None, page_server: str | None = None):
        if keep and then == "pgfault":
            raise MigrationError("bad-request", "--keep makes no sense with --then pgfault: the "
                                 "origin keeps the pages until they have all moved")
        self.node = node
        self.envid = envid
        self.keep = keep
        self.page_server = page_server          # --then pgfault: where the pager connects
        self.max_rounds = max_rounds
        self.limit_ms = downtime_limit_ms
        self.then = then
        self.push = push
        self.prefetch = prefetch
        self.destination_addr = destination_addr
        self.token = os.urandom(16)
        self.paused_here = False
        self.snap: dict[int, tuple[int, int]] = {}   # vpn -> (pfn, perm) as sent
        self.gone: set[int] = set()      # sent, since unmapped: the destination drops them
        self.rounds: list[dict] = []
        self.sent = 0
        self.final: list[int] = []
        self.remote: list[int] = []
        self.pages = 0                   # the process's pages at the stop
        self.dest_name = ""

    async def hold(self, out) -> None:
        node, k = self.node, self.node.kernel
        k.get_env(self.envid)
        node.migrations.check_free(self.envid)
        if k.remote_count(self.envid):
            await node.migrations.pager.pull_all(self.envid)
        node.migrations.busy[self.envid] = "migrating (pre-copy)"

    async def transfer(self, out, link) -> None:
        node, k = self.node, self.node.kernel
        self.dest_name = link.peer
        header = pstream.header_fields(k.header(self.envid), node=node.name,
                                       jmig_version=node.version, pages=0, method="precopy")
        await link.send(m.Begin(mid=out.mid, method="precopy", src=node.name,
                                src_addr=node.address_for(link), incarnation=node.incarnation,
                                resume=out.resume, header=header))
        # The kernel logs every page that changes from here on (written,
        # mapped, unmapped, remapped): each round sends what changed during
        # the one before, and the stop phase only what changed in the last.
        k.track_changes(self.envid)
        to_send = sorted(k.page_snapshot(self.envid))
        sent_bytes, send_time, rnd = 0, 0.0, 0
        while True:
            rnd += 1
            r0 = time.perf_counter()
            n = await self._send_pages(out, link, to_send, rnd)
            await link.send(m.RoundEnd(round=rnd))
            await link.receive(m.ROUND_APPLIED)
            dt = time.perf_counter() - r0
            sent_bytes += n * PAGE_RECORD
            send_time += dt
            failpoint("precopy.src.after_round")
            changed = k.take_changes(self.envid)
            bandwidth = sent_bytes / send_time if send_time > 0 else float("inf")
            estimate_ms = len(changed) * PAGE_RECORD / bandwidth * 1000 if bandwidth else 0
            self.rounds.append({"round": rnd, "pages": n, "seconds": dt, "dirty": len(changed),
                                "dirty_rate_pps": len(changed) / dt if dt > 0 else 0.0})
            out.log.info("pre-copy round", round=rnd, pages=n, dirty=len(changed),
                         estimate_ms=round(estimate_ms, 2))
            # Stop when the pages dirtied during this round could be sent
            # within the downtime limit at the bandwidth measured so far, or
            # at max rounds.
            if estimate_ms <= self.limit_ms or rnd >= self.max_rounds:
                break
            to_send = sorted(changed)
        # Stop the process for the rest: O(pages changed in the last round).
        # A fork in progress finishes first (running); a syscall waiting for
        # another node gets its answer, paused.
        await self.node.remote.finish_fork(self.envid)
        e = k.get_env(self.envid)
        if not e.paused:
            k.pause(self.envid)
            self.paused_here = True
        out.paused_now()
        await self.node.remote.quiesce(self.envid)
        e = k.get_env(self.envid)
        e.frozen = Hold.MIGRATING
        changed |= k.take_changes(self.envid)
        k.stop_tracking(self.envid)
        final = []
        for vpn in sorted(changed):
            info = k.page_info(self.envid, vpn)
            if info is not None:
                final.append(vpn)
                self.snap[vpn] = info
                self.gone.discard(vpn)
            elif self.snap.pop(vpn, None) is not None:
                self.gone.add(vpn)
        drops = sorted(self.gone)
        self.final = final
        if self.then == "pgfault":
            self.remote = final
        else:
            await self._send_pages(out, link, final, rnd + 1)
        self.pages = len(self.snap)
        header = pstream.header_fields(k.header(self.envid), node=node.name,
                                       jmig_version=node.version, pages=self.pages,
                                       method="precopy")
        extra = {}
        if self.remote:
            # The destination's pager may attach from now on; pages are
            # served only after the hand-over.
            self.node.migrations.origin.expect(Outgoing(
                mid=out.mid, envid=self.envid, dest=self.dest_name,
                dest_addr=self.destination_addr, token=self.token, push=self.push,
                prefetch=self.prefetch,
                runs=runs_of((v, self.snap[v][1]) for v in self.remote)))
            host = self.page_server or node.advertised_host(link.fs)
            extra = {"pager": (host, node.ports["pager"]),
                     "token": self.token, "push": self.push, "prefetch": self.prefetch}
        await link.send(m.Final(header=header,
                                map=m.pack_map((v, self.snap[v][1]) for v in final),
                                remote=m.pack_vpns(self.remote), drops=m.pack_vpns(drops),
                                pages=self.pages, **extra))

    async def _send_pages(self, out, link, vpns, rnd) -> int:
        """Send the current contents of vpns (recording frame and perm in
        snap, what the destination holds); pages unmapped meanwhile are
        skipped (the change log has them)."""
        k = self.node.kernel
        n = 0
        for i in range(0, len(vpns), BATCH_PAGES):
            batch = []
            for vpn in vpns[i:i + BATCH_PAGES]:
                info = k.page_info(self.envid, vpn)
                if info is None:
                    if self.snap.pop(vpn, None) is not None:
                        self.gone.add(vpn)
                    continue
                pfn, perm = info
                self.snap[vpn] = info
                self.gone.discard(vpn)
                batch.append((vpn << 12, perm, k.phys.frame(pfn)))
            if batch:
                await link.send_raw({"t": "pages", "b": encode_pages(batch), "round": rnd})
                n += len(batch)
                self.sent += len(batch)
                out.progress(done=n, total=len(vpns), bytes=self.sent * PAGE_RECORD, round=rnd)
        return n

    def hand_over(self, out) -> None:
        node = self.node
        node.migrations.busy.pop(self.envid, None)
        if self.remote:
            node.migrations.origin.serve(out.mid)
        else:
            self.keep_or_give_up()
        node.dispatch_events()

    def released(self, out) -> None:
        """The destination was told to run it: push the pages left here
        (then pgfault), or free our copy."""
        if self.remote:
            self.node.migrations.origin.push(out.mid)
        else:
            super().released(out)

    def roll_back(self, out) -> None:
        self.node.migrations.origin.forget(out.mid)
        if self.give_back() is not None:
            self.node.kernel.stop_tracking(self.envid)

    def stats(self, out) -> dict:
        """The figures of a migration that succeeded (so after a round at least)."""
        return {"then": self.then, "pages": self.pages, "bytes": self.sent * PAGE_RECORD,
                "pages_sent": self.sent, "rounds": len(self.rounds), "round_stats": self.rounds,
                "final_pages": len(self.final), "postcopy_pages": len(self.remote),
                "dirty_rate_pps": self.rounds[-1]["dirty_rate_pps"], "kept": self.keep}


class PrecopyReceive:
    name = "precopy"

    def __init__(self, node):
        self.node = node
        self.final: m.Final | None = None

    async def receive(self, inb, link):
        k = self.node.kernel
        if inb.begin.header is None:
            raise MigrationError("bad-request", "a pre-copy migration must carry a header")
        env = k.create_from(pstream.env_header(inb.begin.header), keep_id=True)
        try:
            while True:
                msg = await link.receive(m.FROM_SOURCE_PRECOPY)
                if isinstance(msg, m.Final):
                    break
                if isinstance(msg, m.RoundEnd):
                    await link.send(m.RoundApplied(round=msg.round))
                    continue
                if len(msg.b) // PAGE_RECORD + 1 > k.phys.nfree:
                    raise ev.KernelError(ev.NO_MEMORY, "out of memory receiving pages")
                for p in decode_pages(msg.b):
                    k.restore_page(env, p.va, p.perm, p.data, replace=True)
            self.final = msg
            self._apply_final(env, msg)
            if msg.remote:
                pager = self.node.migrations.pager
                pager.prepare(inb.begin.mid, inb.begin.src, msg.pager, msg.token,
                              msg.prefetch or 0)
                await pager.attached(inb.begin.mid)
        except BaseException:
            k.abort_incoming(env)
            raise
        return env

    def _apply_final(self, env, final: m.Final) -> None:
        """The stop phase here: O(pages in the Final), not O(process)."""
        k = self.node.kernel
        page_map = final.page_map()
        remote = set(final.remote_vpns())
        if remote and (final.pager is None or final.token is None):
            raise MigrationError("bad-request", "remote pages without a page server")
        if not remote <= {vpn for vpn, _ in page_map}:
            raise StreamError("the final message names remote pages outside its page map")
        pte = env.aspace.pte
        for vpn in final.drop_vpns():
            if vpn not in pte:
                raise StreamError(f"page {vpn << 12:#010x} is to be dropped but never arrived")
            k.drop_page(env, vpn << 12)
        for vpn, perm in page_map:
            pstream.check_page(vpn << 12, perm)
            if vpn in remote:
                k.restore_page(env, vpn << 12, perm, None, replace=True)
            elif env.aspace.page_lookup(vpn << 12) is None:
                raise StreamError(f"page {vpn << 12:#010x} is in the final map but never arrived")
            elif (pte[vpn] & 0xFFF & ~0x60) != (perm | 1):
                raise StreamError(f"page {vpn << 12:#010x} has other permissions than announced")
        if len(pte) != final.pages:
            raise StreamError(f"the process has {final.pages} pages but {len(pte)} arrived")
        k.set_registers(env, pstream.env_header(final.header))

    def committed(self, inb, env) -> None:
        if self.final is not None and self.final.remote:
            self.node.migrations.pager.commit(inb.begin.mid, env.env_id)

    def started(self, inb, env) -> None:
        if self.final is not None and self.final.remote:
            self.node.migrations.pager.go(inb.begin.mid)

    def aborted(self, inb) -> None:
        if self.final is not None and self.final.remote:
            self.node.migrations.pager.cancel(inb.begin.mid)

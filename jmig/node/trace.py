"""The original project's per-step lines, for people watching a migration
(`jmig-node --trace`, `jmigctl migrate|save|load --trace`, the shell's
`trace on`):

    Migration: From 127.0.0.2:50001, To 127.0.0.3:50001, Env ID: 4107
    Send Page: 0x00800000, Sequence: 1          (one line per 1 KiB chunk)
    Recv Page: 0x00800000, Sequence: 1
    Send Page Table Entry: 0x00800000           (demand paging)
    Recv Page Table Entry: 0x00800000
    Handle User Page Fault, Env: 4107, Addr: 0x00802000
    Recv Request For Page: 0x00802000

Each side of a migration shows its first TRACE_ITEMS pages (entries,
faults, requests) in full, then one line for the rest ("... and 16380
more pages").  The migration's data path is not traced page by page:
the hooks (session.py's progress and receive, the pager's faults, the
page server's requests) look at what a batch moved after it moved, and
cost one check of a flag when no one traces.  The same facts reach the
log as debug events (stream.py).
"""
from __future__ import annotations

from ..kernel.memlayout import UTOP

TRACE_ITEMS = 32          # pages, entries, faults or requests shown per migration and side
SEQUENCES = (1, 2, 3, 4)  # the original sent a page as four 1 KiB chunks


def address(node) -> str:
    """HOST:P of a node, as the original named machines (by address)."""
    return f"{node.cfg.host}:{node.cfg.port or node.ports.get('normal', 0)}"


def page_lines(verb: str, va: int) -> list[str]:
    return [f"{verb} Page: {va:#010x}, Sequence: {s}" for s in SEQUENCES]


class Tracer:
    """A node's trace: lines to its console (--trace) and to whoever
    subscribed (a shell waiting for an arrival with trace on)."""

    def __init__(self, console=None):
        self.console = console             # the node's ConsoleHub, when --trace
        self.subscribers: set = set()      # callables(line)

    @property
    def active(self) -> bool:
        return self.console is not None or bool(self.subscribers)

    def line(self, text: str) -> None:
        if self.console is not None:
            self.console.write(text + "\n", 0)
        for fn in list(self.subscribers):
            fn(text)

    def migration(self, extra=None) -> "MigrationTrace | None":
        """A trace for one side of one migration: to this node's trace and
        to extra (a job's watcher), or None when nobody would see it."""
        if not self.active and extra is None:
            return None
        sinks = [self.line] if self.active else []
        if extra is not None:
            sinks.append(extra)
        return MigrationTrace(sinks)


class MigrationTrace:
    def __init__(self, sinks, limit: int = TRACE_ITEMS):
        self.sinks = sinks
        self.limit = limit
        self.shown = 0
        self.hidden = 0
        self.done = 0                      # pages of the writer already traced
        self.round = 0
        self.began = False

    def emit(self, text: str) -> None:
        for fn in self.sinks:
            fn(text)

    def item(self, lines: list[str]) -> None:
        if self.shown < self.limit:
            self.shown += 1
            for text in lines:
                self.emit(text)
        else:
            self.hidden += 1

    def summary(self, what: str = "pages") -> None:
        if self.hidden:
            self.emit(f"... and {self.hidden} more {what}")
            self.hidden = 0

    # -- the source (session.Outbound.progress) --------------------------------------
    def outbound(self, out, kw: dict) -> None:
        if not self.began:
            self.began = True
            self.emit(f"Migration: From {address(out.node)}, To {out.target}, "
                      f"Env ID: {out.envid}")
        done = kw.get("done")
        if done is None:
            return
        rnd = kw.get("round")
        if rnd:                               # pre-copy: a line per round
            if rnd != self.round:
                self.round = rnd
                self.emit(f"Pre-copy Round: {rnd}, Pages: {kw.get('total', 0)}")
            return
        w = getattr(out.method, "writer", None)
        if w is None:
            return
        if w.remote:
            if self.done == 0:
                for first, count, _ in w.runs:
                    for vpn in range(first, first + count):
                        self.item([f"Send Page Table Entry: {vpn << 12:#010x}"])
                self.summary("page table entries")
        else:
            for va in w.vas[self.done:done].tolist():
                self.item(page_lines("Send", va))
            if done >= w.npages:
                self.summary()
        self.done = done

    # -- the destination (session.Inbound) ---------------------------------------------
    def received(self, inb, env) -> None:
        """The whole env arrived (before Prepared): its pages, in order."""
        pte = env.aspace.pte
        top = UTOP >> 12
        remote = inb.begin.method == "pgfault"
        for vpn in sorted(pte):
            if vpn >= top or not pte[vpn] & 1:
                continue
            if remote:
                self.item([f"Recv Page Table Entry: {vpn << 12:#010x}"])
            else:
                self.item(page_lines("Recv", vpn << 12))
        self.summary("page table entries" if remote else "pages")

    def arrived(self, inb, node, envid: int) -> None:
        if not inb.announce:
            return                     # a load: from an image, not from a machine
        host, port = inb.begin.src_addr
        self.emit(f"Migration: From {host}:{port}, To {address(node)}, Env ID: {envid}")

    # -- demand paging (pager, page server) ----------------------------------------------
    def fault(self, envid: int, va: int) -> None:
        self.item([f"Handle User Page Fault, Env: {envid}, Addr: {va:#010x}"])

    def request(self, va: int) -> None:
        self.item([f"Recv Request For Page: {va:#010x}"])

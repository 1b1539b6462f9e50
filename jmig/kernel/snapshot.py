"""Snapshot and restore of one env: the page lists, registers and
metadata that images and migrations serialize, and the "incoming" env a
restore builds (never runnable until committed, freed without a trace on
abort).  A mixin of Kernel (kernel.py)."""
from __future__ import annotations

import attrs
import numpy as np

from . import events as ev
from .env import ENV_FREE, ENV_NOT_RUNNABLE, ENV_RUNNABLE, ENV_RUNNING, ENVGENSHIFT, ENVX, Env
from .memlayout import (
    FL_IF, FL_RESERVED1, PGSIZE, PTE_D, PTE_P, PTE_REMOTE, PTE_SYSCALL, PTE_U, UTOP,
)
from .pmap import remote_pte

# page_states: what a page is, as the web view's page map shows it
PAGE_PRESENT, PAGE_REMOTE, PAGE_DIRTY = 0, 1, 2


@attrs.frozen
class EnvHeader:
    """Everything about an env except its pages (the snapshot's header)."""
    envid: int
    parent_id: int
    name: str
    status: int                    # JOS status to restore (RUNNABLE / NOT_RUNNABLE)
    runs: int
    regs: tuple                    # eax ecx edx ebx esp ebp esi edi
    eip: int
    eflags: int
    trapno: int
    err: int
    pgfault_upcall: int
    ipc_recving: int
    ipc_dstva: int
    ipc_value: int
    ipc_from: int
    ipc_perm: int
    sleep_ms: int | None           # remaining sys_sleep_msec time, if sleeping


@attrs.frozen(eq=False)
class RemoteTable:
    """Remote PTEs prepared ahead of a restore (Kernel.remote_table)."""
    runs: tuple                    # ((first vpn, count, perm), ...), in address order
    pte: dict                      # vpn -> remote PTE, every page of runs


def _check_run(first: int, count: int, perm: int) -> None:
    """A run of remote pages must lie in user space, with user permissions."""
    if first < 0 or count < 1 or (first + count) * PGSIZE > UTOP or perm & ~PTE_SYSCALL \
            or perm & (PTE_U | PTE_P) != PTE_U | PTE_P:
        raise ev.KernelError(ev.BAD_SNAPSHOT, f"bad page run {first << 12:#x}+{count} perm {perm:#x}")


@attrs.frozen
class PageInfo:
    """One page of an env: va, user permissions (within PTE_SYSCALL), and
    whether its contents are here (local) or on another node (remote)."""
    va: int
    perm: int
    remote: bool
    dirty: bool = False
    accessed: bool = False


class SnapshotMixin:
    def env_pages(self, envid: int) -> list[PageInfo]:
        """The env's mapped pages below UTOP, in address order."""
        e = self._env(envid)
        out = []
        for vpn in sorted(e.aspace.pte):
            pte = e.aspace.pte[vpn]
            if not pte & PTE_P or vpn << 12 >= UTOP:
                continue
            out.append(PageInfo(vpn << 12, pte & PTE_SYSCALL, bool(pte & PTE_REMOTE),
                                bool(pte & 0x40), bool(pte & 0x20)))
        return out

    def page_frames(self, envid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vas, perms, pfns) of the env's mapped pages below UTOP, all
        local, in address order, as int64 arrays (the stream writer reads
        the frames directly, a batch at a time)."""
        vpns, vals = _present(self._env(envid).aspace.pte)
        remote = np.flatnonzero(vals & PTE_REMOTE)
        if len(remote):
            raise ev.KernelError(ev.BAD_STATE, f"page {int(vpns[remote[0]]) << 12:08x} of env "
                                 f"{envid} is on another node")
        return vpns << 12, vals & PTE_SYSCALL, vals >> 12 & 0xFFFFF

    def page_runs(self, envid: int) -> tuple[tuple[int, int, int], ...]:
        """((first vpn, count, perm), ...): the env's pages below UTOP as runs
        of consecutive pages with equal permissions, in address order (a few
        array operations over the page table, not a loop per page).  Kept
        until the mapping changes: asked again before then, it costs nothing
        (a migration asks once while the process runs, and again once it
        has stopped)."""
        a = self._env(envid).aspace
        if a.runs_memo is not None and a.runs_memo[0] == a.mapgen:
            return a.runs_memo[1]
        vpns, vals = _present(a.pte)
        if not len(vpns):
            runs = ()
        else:
            perms = vals & PTE_SYSCALL
            # A run starts where the vpn is not the last one's + 1 or the perm changes.
            start = np.ones(len(vpns), bool)
            start[1:] = (np.diff(vpns) != 1) | (perms[1:] != perms[:-1])
            firsts = np.flatnonzero(start)
            counts = np.diff(np.append(firsts, len(vpns)))
            runs = tuple(zip(vpns[firsts].tolist(), counts.tolist(), perms[firsts].tolist()))
        a.runs_memo = (a.mapgen, runs)
        return runs

    def page_states(self, envid: int) -> tuple[np.ndarray, np.ndarray]:
        """(vpns, states) of the env's pages below UTOP, in address order, as
        arrays: PAGE_REMOTE if the page is on another node, PAGE_DIRTY if it
        changed since the last pre-copy round (while its changes are being
        logged) or else has its D bit set, PAGE_PRESENT otherwise.  A few
        array operations over the page table; reads nothing else."""
        a = self._env(envid).aspace
        # (lists first: numpy builds an array from a list twice as fast as
        # from a dict view)
        vpns = np.array(list(a.pte.keys()), np.int64)
        vals = np.array(list(a.pte.values()), np.int64)
        keep = (vpns < (UTOP >> 12)) & (vals & PTE_P != 0)
        order = np.argsort(vpns[keep], kind="stable")
        vpns, vals = vpns[keep][order], vals[keep][order]
        states = np.full(len(vpns), PAGE_PRESENT, np.uint8)
        if a.changes is not None:
            if a.changes:
                states[np.isin(vpns, np.fromiter(a.changes, np.int64, len(a.changes)))] = \
                    PAGE_DIRTY
        else:
            states[vals & PTE_D != 0] = PAGE_DIRTY
        states[vals & PTE_REMOTE != 0] = PAGE_REMOTE
        return vpns, states

    def restore_remote_run(self, e: Env, va: int, count: int, perm: int) -> None:
        """Mark count consecutive pages of an incoming env remote at once."""
        if va % PGSIZE:
            raise ev.KernelError(ev.BAD_SNAPSHOT, f"bad page run {va:#x}+{count} perm {perm:#x}")
        _check_run(va >> 12, count, perm)
        a = e.aspace
        first = va >> 12
        end = first + count
        # Look through the smaller side (an incoming env's table starts empty).
        if any(first <= v < end for v in a.pte) if len(a.pte) < count \
                else not a.pte.keys().isdisjoint(range(first, end)):
            raise ev.KernelError(ev.BAD_SNAPSHOT, f"page run at {va:08x} overlaps mapped pages")
        if not a.set_remote_run(first, count, perm):
            raise ev.KernelError(ev.NO_MEMORY, "out of memory for a page table")

    @staticmethod
    def remote_table(runs) -> RemoteTable:
        """The remote PTEs of runs ((first vpn, count, perm), ...), built
        ahead of a restore (demand paging: from the runs announced while
        the process still runs at the source).  Raises KernelError
        BAD_SNAPSHOT for a bad run, or runs out of order or overlapping."""
        runs = tuple((int(f), int(c), int(p)) for f, c, p in runs)
        table: dict[int, int] = {}
        end = 0
        for first, count, perm in runs:
            _check_run(first, count, perm)
            if first < end:
                raise ev.KernelError(ev.BAD_SNAPSHOT, f"page run at {first << 12:08x} is out "
                                     "of order or overlaps the one before")
            end = first + count
            table.update(dict.fromkeys(range(first, end), remote_pte(perm)))
        return RemoteTable(runs, table)

    def restore_remote_table(self, e: Env, t: RemoteTable) -> None:
        """restore_remote_run for every run of t at once (an incoming env):
        a copy of the prebuilt table when the env has no pages yet."""
        a = e.aspace
        # Two key views: the smaller side is the one looked through.
        if not a.pte.keys().isdisjoint(t.pte.keys()):
            twice = next(v for v in t.pte if v in a.pte)
            raise ev.KernelError(ev.BAD_SNAPSHOT, f"page run at {twice << 12:08x} overlaps "
                                 "mapped pages")
        if not a.set_remote_table(t.pte, t.runs):
            raise ev.KernelError(ev.NO_MEMORY, "out of memory for a page table")

    def page_data(self, envid: int, va: int) -> memoryview:
        """A view of a local page's 4 KiB (valid until the page changes)."""
        e = self._env(envid)
        pte = e.aspace.pte.get(va >> 12)
        if pte is None or not pte & PTE_P or pte & PTE_REMOTE:
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} has no local page at {va:08x}")
        return self.phys.frame(pte >> 12 & 0xFFFFF)

    def header(self, envid: int) -> EnvHeader:
        e = self._env(envid)
        c = e.cpu
        sleep = None
        if e.wake_at is not None:
            sleep = max(0, int(e.wake_at - self.now()))
        return EnvHeader(
            envid=e.env_id, parent_id=e.parent_id, name=e.name, status=self.jos_status(e)
            if self.jos_status(e) != ENV_RUNNING else ENV_RUNNABLE,
            runs=e.runs, regs=tuple(c.r), eip=c.eip, eflags=c.eflags, trapno=e.trapno,
            err=e.err, pgfault_upcall=e.pgfault_upcall, ipc_recving=e.ipc_recving,
            ipc_dstva=e.ipc_dstva, ipc_value=e.ipc_value, ipc_from=e.ipc_from,
            ipc_perm=e.ipc_perm, sleep_ms=sleep)

    def page_snapshot(self, envid: int) -> dict[int, tuple[int, int]]:
        """{vpn: (pfn, perm)} of the env's local pages below UTOP (pre-copy
        compares these between rounds: a replaced frame is a changed page
        even when its D bit is clear)."""
        e = self._env(envid)
        out = {}
        for vpn, pte in e.aspace.pte.items():
            if pte & PTE_P and not pte & PTE_REMOTE and vpn < (UTOP >> 12):
                out[vpn] = (pte >> 12 & 0xFFFFF, pte & PTE_SYSCALL)
        return out

    def page_info(self, envid: int, vpn: int) -> tuple[int, int] | None:
        """(pfn, perm) of one local page, or None."""
        pte = self._env(envid).aspace.pte.get(vpn)
        if pte is None or not pte & PTE_P or pte & PTE_REMOTE:
            return None
        return (pte >> 12 & 0xFFFFF, pte & PTE_SYSCALL)

    def track_changes(self, envid: int) -> None:
        """Start logging which of the env's pages change (pre-copy): from
        now on, take_changes returns every vpn mapped, unmapped, remapped
        or written since the previous take.  O(pages) once."""
        self._env(envid).aspace.track_changes()

    def take_changes(self, envid: int) -> set[int]:
        """The vpns below UTOP changed since track_changes or the last
        take; O(changes)."""
        top = UTOP >> 12
        return {v for v in self._env(envid).aspace.take_changes() if v < top}

    def stop_tracking(self, envid: int) -> None:
        e = self.envs[envid & 0x3FF]
        if e.env_id == envid and e.status:
            e.aspace.changes = None

    def set_registers(self, e: Env, h: EnvHeader) -> None:
        """Overwrite an incoming env's registers and metadata from a header."""
        c = e.cpu
        c.r = [v & 0xFFFFFFFF for v in h.regs]
        c.eip = h.eip & 0xFFFFFFFF
        c.eflags = (h.eflags & 0x244CD5) | FL_IF | FL_RESERVED1
        e.trapno, e.err = h.trapno, h.err
        e.name = h.name
        e.pgfault_upcall = h.pgfault_upcall
        e.ipc_recving = 1 if h.ipc_recving else 0
        e.ipc_dstva, e.ipc_value = h.ipc_dstva, h.ipc_value
        e.ipc_from, e.ipc_perm = h.ipc_from, h.ipc_perm
        e.runs = h.runs
        e.wake_at = self.now() + h.sleep_ms if h.sleep_ms is not None else None
        e.saved_status = h.status

    def drop_page(self, e: Env, va: int) -> None:
        """Unmap a page of an incoming env (pre-copy: unmapped at the source)."""
        e.aspace.page_remove(va)

    def create_from(self, h: EnvHeader, keep_id: bool = True, parent_id: int | None = None) -> Env:
        """Start restoring an env from a header: a new env, paused and held
        ("incoming") until commit_incoming, with no pages yet.  Keeps the
        original envid when its slot is free here and keep_id is set."""
        if h.status not in (ENV_RUNNABLE, ENV_NOT_RUNNABLE):
            raise ev.KernelError(ev.BAD_SNAPSHOT, f"bad status {h.status} in snapshot")
        want = None
        if keep_id and h.envid > 0 and self.envs[ENVX(h.envid)].status == ENV_FREE \
                and h.envid >> ENVGENSHIFT:
            want = h.envid
        e = self.env_alloc(h.parent_id if parent_id is None else parent_id, want)
        self.set_registers(e, h)
        e.status = ENV_NOT_RUNNABLE
        e.paused = True
        e.frozen = "incoming"
        return e

    def restore_page(self, e: Env, va: int, perm: int, data=None, replace: bool = False) -> None:
        """Map one page into an incoming env: with data (4 KiB), or remote
        when data is None.  With replace, a page already there is replaced
        (pre-copy's later rounds); otherwise that is an error.  Raises
        KernelError NO_MEMORY / BAD_SNAPSHOT."""
        if va % PGSIZE or va >= UTOP or perm & ~PTE_SYSCALL or perm & (PTE_U | PTE_P) != PTE_U | PTE_P:
            raise ev.KernelError(ev.BAD_SNAPSHOT, f"bad page {va:#x} perm {perm:#x}")
        if data is not None and len(data) != PGSIZE:
            raise ev.KernelError(ev.BAD_SNAPSHOT, f"page {va:08x}: contents are not one page")
        a = e.aspace
        old = a.pte.get(va >> 12)
        if old is not None and old & PTE_P:
            if not replace:
                raise ev.KernelError(ev.BAD_SNAPSHOT, f"page {va:08x} appears twice")
            pfn = old >> 12 & 0xFFFFF
            if data is not None and not old & PTE_REMOTE and self.phys.ref[pfn] == 1:
                # Overwrite our private frame in place.
                a.set_perm(va >> 12, (old & 0xFFFFF000) | perm | PTE_P)
                self._fill_frame(pfn, data)
                self.phys.drop_code(pfn)
                return
            a.page_remove(va)
        if data is None:
            if not a.set_remote(va, perm):
                raise ev.KernelError(ev.NO_MEMORY, "out of memory for a page table")
            return
        pfn = self.phys.page_alloc(zero=False)
        if pfn is None:
            raise ev.KernelError(ev.NO_MEMORY, "out of memory restoring pages")
        if not a.page_insert(pfn, va, perm):
            self.phys.page_free(pfn)
            raise ev.KernelError(ev.NO_MEMORY, "out of memory for a page table")
        self._fill_frame(pfn, data)

    def restore_batch(self, e: Env, vas, perms) -> list[memoryview]:
        """Map a batch of pages into an incoming env, each at its va with its
        perm (already checked: aligned, below UTOP, within PTE_SYSCALL,
        unique), on fresh frames; returns views of those frames in the
        pages' order, for the caller to fill with the pages' data: one view
        per run of consecutive frames (on a fresh node, one per batch).
        Raises KernelError NO_MEMORY (the env is then aborted by the
        caller) or BAD_SNAPSHOT."""
        a = e.aspace
        n = len(vas)
        vpns = [va >> 12 for va in vas]
        if not a.pte.keys().isdisjoint(vpns):
            twice = next(v for v in vpns if v in a.pte)
            raise ev.KernelError(ev.BAD_SNAPSHOT, f"page {twice << 12:08x} appears twice")
        free = self.phys.free
        if len(free) < n:
            raise ev.KernelError(ev.NO_MEMORY, "out of memory restoring pages")
        # The next n frames pop() would give, in ascending order: consecutive
        # frames, so the batch's data lands in few contiguous runs.
        pfns = free[-n:]
        del free[-n:]
        if n > 1 and pfns[0] > pfns[1]:
            pfns.reverse()                  # (frames freed high to low)
        if not a.insert_fresh_run(pfns, vpns, list(perms)):
            free.extend(pfns)
            raise ev.KernelError(ev.NO_MEMORY, "out of memory for a page table")
        mem = memoryview(self.phys.mem)
        out = []
        start = prev = pfns[0]
        for pfn in pfns[1:]:
            if pfn != prev + 1:
                out.append(mem[start << 12:(prev + 1) << 12])
                start = pfn
            prev = pfn
        out.append(mem[start << 12:(prev + 1) << 12])
        return out

    def _fill_frame(self, pfn: int, data) -> None:
        base = pfn << 12
        self.phys.mem[base:base + PGSIZE] = data

    def commit_incoming(self, e: Env, resume: bool = False) -> Env:
        e.frozen = ""
        self.events.append(ev.EnvCreated(e.env_id, e.parent_id, e.name))
        if resume:
            self.resume(e.env_id)
        return e

    def abort_incoming(self, e: Env) -> None:
        """Throw away a partly restored env: no trace, no leaked frames."""
        if e.status != ENV_FREE and e.frozen == "incoming":
            self.env_free(e, 0)

    def copy(self, envid: int) -> Env:
        """A new env with its own copy of every page and the same registers,
        created paused; its parent is the original."""
        src = self._env(envid)
        pages = self.env_pages(envid)
        if any(p.remote for p in pages):
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} still has pages on another node")
        need = len(pages) + len(src.aspace.ptpages) + 1
        if need > self.phys.nfree:
            raise ev.KernelError(ev.NO_MEMORY, f"copy needs {need} pages; {self.phys.nfree} are free")
        h = self.header(envid)
        e = self.create_from(h, keep_id=False, parent_id=src.env_id)
        try:
            for p in pages:
                self.restore_page(e, p.va, p.perm, self.page_data(envid, p.va))
        except ev.KernelError:
            self.abort_incoming(e)
            raise
        return self.commit_incoming(e)


def _present(pte: dict) -> tuple[np.ndarray, np.ndarray]:
    """(vpns, PTEs) of a page table's present entries below UTOP, in
    address order, as arrays."""
    n = len(pte)
    vpns = np.fromiter(pte.keys(), np.int64, n)
    vals = np.fromiter(pte.values(), np.int64, n)
    keep = (vpns < (UTOP >> 12)) & (vals & PTE_P != 0)
    vpns, vals = vpns[keep], vals[keep]
    order = np.argsort(vpns, kind="stable")
    return vpns[order], vals[order]

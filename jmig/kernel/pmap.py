"""Physical memory, per-env page tables, and the software MMU the core uses.

Physical memory is one bytearray of `nframes` 4 KiB frames.  Frame 0 is
reserved (a PTE of 0 means "not mapped", as in JOS).  Frames carry JOS
reference counts (pp_ref) and sit on a LIFO free list whose head is the
highest frame, as JOS's page_init leaves it.

A page table is an `AddressSpace`: a dict from virtual page number to a
32-bit PTE value `(pfn << 12) | flags`, plus one real frame for the page
directory and one per page-table page (allocated by pgdir_walk, freed with
the env), so that free-memory figures and uvpd/uvpt reads are what JOS's
two-level tables would give.

    virtual address:  | PDX (10) | PTX (10) | offset (12) |
                      +----------+----------+-------------+
    vpn = va >> 12 is the key; PDX = vpn >> 10 names the page-table page.

The AddressSpace is also the MMU: the core reads and writes guest memory
through rd8/rd16/rd32/wr8/wr16/wr32, which consult a TLB (`rt` readable
pages, `wt` writable pages whose D bit is already set) and fall back to a
page-table walk that checks P, U and W, sets A (and D on a write), and
raises PageFault with JOS's FEC bits.  A page whose PTE has PTE_REMOTE is
present for the process but lives on another node: touching it raises
RemotePage, which blocks the env until the node installs the page.

Decoded code is cached per physical frame (`PhysMem.code`).  A frame that
holds decoded code is never in any write TLB, so every write to it takes
the slow path, which drops the frame's decoded code when the write
overlaps a decoded instruction.
"""
from __future__ import annotations

import functools
import itertools
import mmap
import weakref
from array import array
from struct import pack_into, unpack_from

import numpy as np

from .memlayout import (
    FEC_PR, FEC_U, FEC_WR, NPDENTRIES, NPTENTRIES, PDX, PGSIZE, PTE_A, PTE_D, PTE_P,
    PTE_REMOTE, PTE_U, PTE_W, ULIM, UPAGES, UTOP, UVPT,
)

ZERO_PAGE = bytes(PGSIZE)
PTE_PERM_MASK = 0xFFF          # flags part of a 32-bit PTE


class KernelPanic(Exception):
    """A broken kernel invariant: a bug in jmig, never a user error."""


class CpuFault(Exception):
    """An exception the core raises out of an instruction (precise: the
    instruction has had no effect)."""
    trapno = -1

    def __init__(self, err: int = 0, va: int = 0):
        self.err = err
        self.va = va


class PageFault(CpuFault):
    trapno = 14


class RemotePage(CpuFault):
    """The access touched a page whose contents live on another node."""
    trapno = -2


@functools.cache
def _frame_numbers(nframes: int) -> tuple[int, ...]:
    """(1, ..., nframes - 1), made once per size: making 16,383 ints was
    most of a new kernel's boot time; copying them is not."""
    return tuple(range(1, nframes))


class PhysMem:
    """Physical frames with reference counts and a free list."""

    def __init__(self, nframes: int, prefault: bool = False):
        if nframes < 2:
            raise ValueError("physical memory needs at least 2 frames")
        self.nframes = nframes
        # Anonymous memory: zero-filled and committed only when touched, so a
        # 64 MiB machine costs nothing until its frames are used; or, with
        # prefault, committed at once (MAP_POPULATE where the OS has it).
        populate = getattr(mmap, "MAP_POPULATE", 0) if prefault else 0
        self.mem = mmap.mmap(-1, nframes * PGSIZE,
                             flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
        self.m8 = memoryview(self.mem)
        self.m32 = self.m8.cast("I")
        self.m16 = self.m8.cast("H")
        # Frame pfn is frames[pfn]: 512 words, for whole-batch copies and checks.
        self.frames = np.frombuffer(self.mem, np.uint64).reshape(nframes, PGSIZE // 8)
        self.ref = [0] * nframes
        self.ref[0] = 1                       # frame 0 is reserved
        # LIFO: pop() takes the highest frame first, page_free pushes back.
        self.free = list(_frame_numbers(nframes))
        # Decoded code: pfn -> {page offset: compiled instruction or block}
        self.code: dict[int, dict] = {}
        # pfn -> bytearray(PGSIZE) with 1 where a decoded instruction lies
        self.codebits: dict[int, bytearray] = {}
        # pfn -> who holds it in a write TLB: one key (AddressSpace.sid << 20
        # | vpn), or a set of keys when several do.  Ints, not (space, va)
        # tuples: one container per written page was most of what Python's
        # cyclic collector walked in a full collection on a busy node.
        self.writers: dict[int, int | set] = {}
        self.spaces = weakref.WeakValueDictionary()    # sid -> AddressSpace
        # pfn -> set of (AddressSpace, region) installed, or (entry pfn, key)
        # of a region kept in code[entry pfn] for reuse, compiled from code
        # in the frame
        self.region_frames: dict[int, set] = {}
        # Where the block translator compiles regions: None, in the calling
        # thread; else a concurrent.futures executor (Kernel: background_compile).
        self.compiler = None

    # -- allocation ---------------------------------------------------------
    @property
    def nfree(self) -> int:
        return len(self.free)

    def page_alloc(self, zero: bool = True) -> int | None:
        """A free frame with ref 0, zeroed if asked; None when memory is exhausted."""
        if not self.free:
            return None
        pfn = self.free.pop()
        if zero:
            base = pfn << 12
            self.mem[base:base + PGSIZE] = ZERO_PAGE
        return pfn

    def page_free(self, pfn: int) -> None:
        if self.ref[pfn] != 0 or pfn == 0:
            raise KernelPanic(f"page_free of frame {pfn} with ref {self.ref[pfn]}")
        self.drop_code(pfn)
        self.free.append(pfn)

    def incref(self, pfn: int) -> None:
        self.ref[pfn] += 1

    def decref(self, pfn: int) -> None:
        r = self.ref[pfn] - 1
        if r < 0:
            raise KernelPanic(f"decref of free frame {pfn}")
        self.ref[pfn] = r
        if r == 0:
            self.page_free(pfn)

    # -- contents -----------------------------------------------------------
    def frame(self, pfn: int) -> memoryview:
        """A view of one frame's 4 KiB (valid until the frame is freed)."""
        base = pfn << 12
        return self.m8[base:base + PGSIZE]

    # -- decoded code -------------------------------------------------------
    def code_dict(self, pfn: int) -> dict:
        """The frame's decoded-code dict, making the frame a code frame."""
        d = self.code.get(pfn)
        if d is None:
            d = self.code[pfn] = {}
            self.codebits[pfn] = bytearray(PGSIZE)
            w = self.writers.pop(pfn, None)
            for key in () if w is None else (w,) if type(w) is int else w:
                asp = self.spaces.get(key >> 20)
                page = (key & 0xFFFFF) << 12
                if asp is not None and asp.wt.get(page) == (pfn << 12) - page:
                    del asp.wt[page]
        return d

    def mark_code(self, pfn: int, off: int, n: int) -> None:
        """Record that [off, off+n) of the code frame pfn holds decoded code."""
        end = min(off + n, PGSIZE)
        self.codebits[pfn][off:end] = b"\x01" * (end - off)

    def drop_code(self, pfn: int) -> None:
        """Forget the frame's decoded code (every env sharing it sees this)."""
        d = self.code.pop(pfn, None)
        if d is not None:
            d.clear()
            del self.codebits[pfn]
        for holder, what in self.region_frames.pop(pfn, ()):
            if isinstance(holder, AddressSpace):
                holder.drop_region(what)
            else:
                kept = self.code.get(holder)
                if kept is not None:
                    kept.pop(what, None)

    def note_template(self, entry_pfn: int, key: int, pfns) -> None:
        """code[entry_pfn][key] holds a region compiled from code in frames
        pfns: forget it when the code in one of them changes."""
        for p in pfns:
            s = self.region_frames.get(p)
            if s is None:
                self.region_frames[p] = {(entry_pfn, key)}
            else:
                s.add((entry_pfn, key))


def remote_pte(perm: int) -> int:
    """The PTE of a present page whose contents are on another node."""
    return PTE_REMOTE | (perm & PTE_PERM_MASK) | PTE_P


class _Tlb(dict):
    """A TLB dictionary (page va -> frame base - page va) that fills itself
    on a miss for an aligned key, as the MMU's walk does (setting A, and D
    for writes); anything it cannot answer -- a misaligned key, a fault, a
    JOS window, a write to a frame holding code -- stays a KeyError, for the
    translator's restart through the interpreter."""
    __slots__ = ("asp", "write")

    def __init__(self, asp, write: bool):
        super().__init__()
        self.asp = asp
        self.write = write

    def __missing__(self, key):
        if key & 0xFFF:
            raise KeyError(key)
        asp = self.asp
        if key >= UTOP:
            if not self.write and UVPT <= key < ULIM:
                pfn = asp._uvpt_frame(key)
                if pfn is not None:
                    d = (pfn << 12) - key
                    self[key] = d
                    return d
            raise KeyError(key)
        try:
            asp.translate(key, self.write)
        except CpuFault:
            raise KeyError(key) from None       # the interpreter reports it
        d = dict.get(self, key)
        if d is None:
            raise KeyError(key)                 # not filled: a frame holding code
        return d


_SPACE_IDS = itertools.count(1)


class AddressSpace:
    """One env's page tables and TLB: JOS's pgdir plus the software MMU.

    `window` is a callable (va, n) -> bytes for the kernel's read-only
    windows UENVS and UPAGES; the kernel supplies it.  UVPT is the
    address space's own: its page directory and page-table frames hold
    the PDE and PTE values user code reads there (kept equal to `pte` and
    `ptpages` on every change), so reading uvpd[] and uvpt[] is an
    ordinary read of those frames through the TLB.

    The TLB: `rt` (readable pages) and `wt` (writable pages whose D bit is
    already set and whose frame holds no decoded code) map a page's
    address (va & 0xfffff000) to `frame base - page address`, so that the
    physical address of va is `va + delta`.  The translator looks words up
    with the key `va & 0xfffff003`, which only an aligned address finds.
    """

    def __init__(self, phys: PhysMem, window=None, window_word=None):
        self.phys = phys
        self.sid = next(_SPACE_IDS)            # names it in phys.writers
        phys.spaces[self.sid] = self
        self.window_word = window_word         # (va) -> int | None: fast UENVS words
        self.mem = phys.mem
        self.m32 = phys.m32
        self.m16 = phys.m16
        self.pte: dict[int, int] = {}          # vpn -> PTE (may carry PTE_REMOTE)
        # When not None: the vpns whose PTE changed other than by gaining A
        # (mapped, unmapped, remapped, made dirty) since pre-copy last took
        # them (track_changes / take_changes).
        self.changes: set[int] | None = None
        # Counts every change of the mapping (a page mapped, unmapped or
        # remapped, its permissions changed; not A or D being set), so that
        # what was computed from the page table can be kept while it holds
        # (snapshot.page_runs keeps (mapgen, runs) in runs_memo).
        self.mapgen = 0
        self.runs_memo: tuple | None = None
        # cpu.py: (regions it replaces, future) of a region compiling elsewhere
        self.compiling = None
        self.nremote = 0                       # PTEs with PTE_REMOTE
        self.ptpages: dict[int, int] = {}      # pdx -> pfn of its page-table page
        self.window = window
        self.rt: dict[int, int] = _Tlb(self, False)   # page va -> frame base - page va, readable
        self.wt: dict[int, int] = _Tlb(self, True)    # the same, writable and dirty
        self.icache: dict[int, dict] = {}      # vpn -> the frame's decoded-code dict
        # The block translator's (x86/cpu.run_blocks): regions by entry,
        # and which pages and frames each was compiled from.
        self.regions: dict[int, object] = {}   # head eip -> region function
        self.blocks: dict[int, object] = {}    # block start -> the region compiling it
        self.region_vpns: dict[int, list] = {}  # vpn -> regions with code in that page
        self.restarts: dict[int, int] = {}     # eip -> TLB-miss restarts in regions
        self.moves: dict[tuple, int] = {}      # (region, region) -> moves from one to the other
        self.nota: set[int] = set()            # vpns of region code whose PTE lacks A
        self.last_entry = 0                    # head the last region was entered at
        pfn = phys.page_alloc()
        if pfn is None:
            raise MemoryError("no frame for a page directory")   # caller maps to -E_NO_MEM
        phys.incref(pfn)
        self.pgdir_pfn = pfn
        # The kernel's half of the page directory, as uvpd[] shows it.
        m32 = self.m32
        for pdx in range(PDX(UTOP), NPDENTRIES):
            m32[(pfn << 10) | pdx] = self.pde_value(pdx)

    # -- JOS page-table operations -------------------------------------------
    def pgdir_walk(self, va: int, create: bool) -> bool:
        """Make sure the page-table page for va exists (allocating it if
        `create`).  Returns False if it does not exist and could not be made."""
        pdx = va >> 22
        if pdx in self.ptpages:
            return True
        if not create:
            return False
        pfn = self.phys.page_alloc()
        if pfn is None:
            return False
        self.phys.incref(pfn)
        self.ptpages[pdx] = pfn
        self.m32[(self.pgdir_pfn << 10) | pdx] = (pfn << 12) | PTE_U | PTE_W | PTE_P
        return True

    def _set_pte(self, vpn: int, pte: int) -> None:
        """pte[vpn] = pte, and the word uvpt[vpn] shows (its table exists)."""
        diff = pte ^ self.pte.get(vpn, 0)
        if diff & ~PTE_A:
            if self.changes is not None:
                self.changes.add(vpn)
            if diff & ~PTE_D:
                self.mapgen += 1
                if diff & PTE_REMOTE:
                    self.nremote += 1 if pte & PTE_REMOTE else -1
        self._store_pte(vpn, pte)

    def _store_pte(self, vpn: int, pte: int) -> None:
        self.pte[vpn] = pte
        self.m32[(self.ptpages[vpn >> 10] << 10) | (vpn & 0x3FF)] = \
            pte & PTE_PERM_MASK if pte & PTE_REMOTE else pte

    def page_lookup(self, va: int) -> int | None:
        """The PTE mapping va (possibly remote), or None."""
        pte = self.pte.get(va >> 12)
        if pte is None or not pte & PTE_P:
            return None
        return pte

    def page_insert(self, pfn: int, va: int, perm: int) -> bool:
        """Map frame pfn at va with perm|PTE_P, replacing any mapping there.
        Returns False (and changes nothing) if a page table could not be
        allocated.  Re-inserting the same frame at the same va just changes
        its permissions."""
        if not self.pgdir_walk(va, True):
            return False
        vpn = va >> 12
        self.phys.incref(pfn)
        old = self.pte.get(vpn)
        if old is not None:
            self._drop(vpn, old)
        self._set_pte(vpn, (pfn << 12) | (perm & PTE_PERM_MASK) | PTE_P)
        self.invlpg(vpn)
        return True

    def insert_fresh_run(self, pfns: list[int], vpns: list[int], perms: list[int]) -> bool:
        """page_insert for many pages known to be unmapped in an env that has
        not run (no TLB entries), at once: the restore fast path.  Frame
        pfns[i] at vpns[i] with perms[i].
        False (nothing mapped; page tables made meanwhile stay) if a page
        table could not be allocated."""
        ptpages = self.ptpages
        for pdx in {v >> 10 for v in vpns}:
            if pdx not in ptpages and not self.pgdir_walk(pdx << 22, True):
                return False
        ref = self.phys.ref
        for pfn in pfns:
            ref[pfn] += 1
        vals = [(pfn << 12) | (perm & PTE_PERM_MASK) | PTE_P for pfn, perm in zip(pfns, perms)]
        self.pte.update(zip(vpns, vals))
        self.mapgen += 1
        if self.changes is not None:
            self.changes.update(vpns)
        m32 = self.m32
        for vpn, val in zip(vpns, vals):                # the UVPT mirror
            m32[(ptpages[vpn >> 10] << 10) | (vpn & 0x3FF)] = val
        return True

    def page_remove(self, va: int) -> None:
        """Unmap whatever is at va (silently nothing if unmapped)."""
        vpn = va >> 12
        old = self.pte.pop(vpn, None)
        if old is not None:
            self.mapgen += 1
            if self.changes is not None:
                self.changes.add(vpn)
            if old & PTE_REMOTE:
                self.nremote -= 1
            self.m32[(self.ptpages[vpn >> 10] << 10) | (vpn & 0x3FF)] = 0
            self._drop(vpn, old)
            self.invlpg(vpn)

    def set_remote(self, va: int, perm: int) -> bool:
        """Mark va present-but-remote with perm.  False if out of memory."""
        if not self.pgdir_walk(va, True):
            return False
        self.page_remove(va)
        self._set_pte(va >> 12, remote_pte(perm))
        return True

    def set_remote_run(self, vpn: int, count: int, perm: int) -> bool:
        """Mark count unmapped pages from vpn remote with perm (restores).
        False if out of memory for a page table (nothing marked)."""
        pte = remote_pte(perm)
        return self.set_remote_table(dict.fromkeys(range(vpn, vpn + count), pte),
                                     ((vpn, count, perm),))

    def set_remote_table(self, table: dict[int, int], runs) -> bool:
        """Add table, the remote PTEs (remote_pte) of runs [(first vpn,
        count, perm)], none of them mapped here, in one step: a dict
        update, one uvpt[] slice per page table and run.  False if out of
        memory for a page table (nothing marked)."""
        for first, count, _ in runs:
            for pdx in range(first >> 10, ((first + count - 1) >> 10) + 1):
                if not self.pgdir_walk(pdx << 22, True):
                    return False
        if self.changes is not None:
            self.changes.update(table)
        self.pte.update(table)            # a copy of table's hash table when pte is empty
        self.nremote += len(table)
        self.mapgen += 1
        for vpn, count, perm in runs:
            shown = array("I", [perm & PTE_PERM_MASK])      # what uvpt[] shows for each
            v, end = vpn, vpn + count
            while v < end:                                   # one slice per page table
                stop = min(end, (v | 0x3FF) + 1)
                base = self.ptpages[v >> 10] << 10
                self.m32[base | (v & 0x3FF):base + (stop - (v & ~0x3FF))] = shown * (stop - v)
                v = stop
        return True

    def _drop(self, vpn: int, pte: int) -> None:
        if not pte & PTE_REMOTE:
            self.phys.decref(pte >> 12 & 0xFFFFF)

    def set_perm(self, vpn: int, pte: int) -> None:
        """Replace a PTE value in place (same frame), flushing the TLB entry."""
        self._set_pte(vpn, pte)
        self.invlpg(vpn)

    def invlpg(self, vpn: int) -> None:
        page = vpn << 12
        self.rt.pop(page, None)
        self.wt.pop(page, None)
        self.icache.pop(vpn, None)
        fns = self.region_vpns.pop(vpn, None)
        if fns:
            for fn in fns:
                self.drop_region(fn)

    def flush_tlb(self) -> None:
        self.rt.clear()
        self.wt.clear()
        self.icache.clear()
        for fns in list(self.region_vpns.values()):
            for fn in fns:
                self.drop_region(fn)
        self.region_vpns.clear()
        self.regions.clear()
        self.blocks.clear()
        self.moves.clear()
        self.nota.clear()

    # -- translated regions ----------------------------------------------------
    def install_region(self, fn, vpns, pfns) -> None:
        """Make the region fn (attribute `heads`) run at its heads; it is
        dropped when one of its pages is remapped or a frame's code changes."""
        fn.vpns = tuple(vpns)
        fn.pfns = tuple(pfns)
        self.regions.update(dict.fromkeys(fn.heads, fn))
        self.blocks.update(dict.fromkeys(fn.plan.bbs, fn))
        for v in vpns:
            self.region_vpns.setdefault(v, []).append(fn)
        frames = self.phys.region_frames
        for p in pfns:
            s = frames.get(p)
            if s is None:
                frames[p] = {(self, fn)}
            else:
                s.add((self, fn))

    def drop_region(self, fn) -> None:
        regions = self.regions
        for h in fn.heads:
            if regions.get(h) is fn:
                del regions[h]
        blocks = self.blocks
        for b in fn.plan.bbs:
            if blocks.get(b) is fn:
                del blocks[b]
        frames = self.phys.region_frames
        for p in fn.pfns:
            s = frames.get(p)
            if s is not None:
                s.discard((self, fn))

    def free_all(self) -> None:
        """Unmap every page and free the page tables and directory (env_free)."""
        for vpn, pte in self.pte.items():
            self._drop(vpn, pte)
        self.pte.clear()
        self.mapgen += 1
        self.nremote = 0
        for pfn in self.ptpages.values():
            self.phys.decref(pfn)
        self.ptpages.clear()
        if self.pgdir_pfn:
            self.phys.decref(self.pgdir_pfn)
            self.pgdir_pfn = 0
        self.flush_tlb()

    # -- what user code sees through UVPT -----------------------------------
    def pde_value(self, pdx: int) -> int:
        """uvpd[pdx] as JOS's page directory would hold it."""
        if pdx == PDX(UVPT):
            return (self.pgdir_pfn << 12) | PTE_U | PTE_P
        if pdx in self.ptpages:
            return (self.ptpages[pdx] << 12) | PTE_U | PTE_W | PTE_P
        if pdx >= PDX(UTOP):
            # The kernel's regions: UENVS, UPAGES (user-readable), the rest not.
            return (PTE_U | PTE_P) if pdx < PDX(ULIM) else (PTE_W | PTE_P)
        return 0

    def pte_value(self, vpn: int) -> int | None:
        """uvpt[vpn], or None when its page table is absent (a read faults)."""
        pdx = vpn >> 10
        if pdx == PDX(UVPT):
            return self.pde_value(vpn & 0x3FF)
        if pdx in self.ptpages:
            pte = self.pte.get(vpn, 0)
            if pte & PTE_REMOTE:
                return pte & PTE_PERM_MASK
            return pte
        if pdx >= PDX(UTOP):
            return (PTE_U | PTE_P) if pdx < PDX(ULIM) else (PTE_W | PTE_P)
        return None

    def _uvpt_frame(self, va: int) -> int | None:
        """The frame that holds the UVPT page at va, if one does (the page
        directory, or a page table); None for the kernel's synthetic ones."""
        pdx = (va - UVPT) >> 12
        if pdx == PDX(UVPT):
            return self.pgdir_pfn
        if pdx < PDX(UTOP):
            return self.ptpages.get(pdx)
        return None

    def check_mirror(self) -> None:
        """Panic unless the page directory and page-table frames hold what
        pde_value/pte_value say (for tests)."""
        m32 = self.m32
        for pdx in range(NPDENTRIES):
            if m32[(self.pgdir_pfn << 10) | pdx] != self.pde_value(pdx):
                raise KernelPanic(f"uvpd[{pdx:#x}] differs from the page tables")
        for pdx, pfn in self.ptpages.items():
            for k in range(NPTENTRIES):
                if m32[(pfn << 10) | k] != self.pte_value((pdx << 10) | k):
                    raise KernelPanic(f"uvpt[{(pdx << 10) | k:#x}] differs from the page tables")

    def _uvpt_read(self, va: int, n: int) -> bytes:
        out = bytearray()
        word = va & ~3
        end = va + n
        while word < end:
            v = self.pte_value((word - UVPT) >> 2)
            if v is None:
                raise PageFault(FEC_U, max(word, va))
            out += v.to_bytes(4, "little")
            word += 4
        skip = va & 3
        return bytes(out[skip:skip + n])

    # -- the MMU: translation -------------------------------------------------
    def translate(self, va: int, write: bool) -> int:
        """Frame base (pfn << 12) for a user access to va's page, or raise.

        Sets A, and D for a write; fills the TLB.  Never returns for the
        read-only windows above UTOP (callers use `_read_window`)."""
        vpn = va >> 12
        pte = self.pte.get(vpn)
        if pte is None or not pte & PTE_P:
            if va >= UTOP:
                # The kernel maps everything up there; user access is a
                # protection fault (reads of the windows never get here).
                raise PageFault(FEC_PR | FEC_U | (FEC_WR if write else 0), va)
            raise PageFault(FEC_U | (FEC_WR if write else 0), va)
        if pte & PTE_REMOTE:
            raise RemotePage(0, va)
        if not pte & PTE_U or (write and not pte & PTE_W):
            raise PageFault(FEC_PR | FEC_U | (FEC_WR if write else 0), va)
        base = pte & 0xFFFFF000
        page = vpn << 12
        if write:
            if pte & (PTE_A | PTE_D) != PTE_A | PTE_D:
                self._set_pte(vpn, pte | PTE_A | PTE_D)
            pfn = base >> 12
            if pfn not in self.phys.code:
                self.wt[page] = base - page
                key = self.sid << 20 | vpn
                writers = self.phys.writers
                w = writers.get(pfn)
                if w is None:
                    writers[pfn] = key
                elif type(w) is int:
                    if w != key:
                        writers[pfn] = {w, key}
                else:
                    w.add(key)
        elif not pte & PTE_A:
            self._set_pte(vpn, pte | PTE_A)
        self.rt[page] = base - page
        return base

    def clear_dirty(self, vpn: int) -> bool:
        """Clear D on vpn's PTE (pre-copy); True if it was set.  Not a
        change: the next write sets D again, and that is one."""
        pte = self.pte.get(vpn)
        if pte is None or not pte & PTE_D:
            return False
        self._store_pte(vpn, pte & ~PTE_D)
        self.wt.pop(vpn << 12, None)
        return True

    def track_changes(self) -> None:
        """Start logging changed pages (pre-copy): every D bit is cleared,
        so that the first write to any page from now on is seen."""
        for vpn, pte in self.pte.items():
            if pte & PTE_D:
                self.clear_dirty(vpn)
        self.changes = set()

    def take_changes(self) -> set[int]:
        """The vpns changed since tracking began or the last take, with
        their D bits cleared again; O(changes)."""
        changed, self.changes = self.changes or set(), set()
        for vpn in changed:
            self.clear_dirty(vpn)
        return changed

    # -- the MMU: reads ------------------------------------------------------
    def _read_window(self, va: int, n: int) -> bytes:
        if va >= ULIM or va + n > ULIM:
            raise PageFault(FEC_PR | FEC_U, va if va >= ULIM else ULIM)
        if va >= UVPT:
            return self._uvpt_read(va, n)
        if self.window is None:
            raise PageFault(FEC_PR | FEC_U, va)
        return self.window(va, n)

    def read(self, va: int, n: int) -> bytes:
        """n bytes at va as user code would read them (may span pages)."""
        if va >= UTOP and va < ULIM and not self.pte.get(va >> 12, 0) & PTE_P:
            return self._read_window(va, n)
        out = bytearray()
        while n > 0:
            off = va & 0xFFF
            take = min(n, PGSIZE - off)
            if va >= UTOP:
                out += self._read_window(va, take)
            else:
                d = self.rt.get(va & 0xFFFFF000)
                if d is None:
                    d = self.translate(va, False) - (va & 0xFFFFF000)
                out += self.mem[va + d:va + d + take]
            va = (va + take) & 0xFFFFFFFF
            n -= take
        return bytes(out)

    def _read_base(self, va: int) -> int:
        """Frame base for a read of va's page, below UTOP (fills the TLB)."""
        d = self.rt.get(va & 0xFFFFF000)
        if d is None:
            return self.translate(va, False)
        return d + (va & 0xFFFFF000)

    def check_read(self, va: int, n: int) -> None:
        """Raise the fault a read of [va, va+n) would raise (all pages first)."""
        end = va + n
        page = va & ~0xFFF
        while page < end:
            a = max(page, va)
            if a >= UTOP:
                self._read_window(a, 1)
            elif self.rt.get(a & 0xFFFFF000) is None:
                self.translate(a, False)
            page += PGSIZE

    def rd8(self, va: int) -> int:
        d = self.rt.get(va & 0xFFFFF000)
        if d is not None:
            return self.mem[va + d]
        return self.read(va, 1)[0]

    def rd16(self, va: int) -> int:
        d = self.rt.get(va & 0xFFFFF000)
        if d is not None and va & 0xFFF != 0xFFF:
            return unpack_from("<H", self.mem, va + d)[0]
        return int.from_bytes(self.read(va, 2), "little")

    def rd32(self, va: int) -> int:
        d = self.rt.get(va & 0xFFFFF000)
        if d is not None and va & 0xFFF <= 0xFFC:
            if va & 3:
                return unpack_from("<I", self.mem, va + d)[0]
            return self.m32[(va + d) >> 2]
        if UVPT <= va < ULIM and not va & 3:
            # uvpt[] / uvpd[]: a page directory or page-table frame (then in
            # the TLB from now on), or the kernel's synthetic entries.
            pfn = self._uvpt_frame(va)
            if pfn is not None:
                self.rt[va & 0xFFFFF000] = (pfn << 12) - (va & 0xFFFFF000)
                return self.m32[(pfn << 10) | ((va & 0xFFF) >> 2)]
            v = self.pte_value((va - UVPT) >> 2)
            if v is None:
                raise PageFault(FEC_U, va)
            return v
        if UTOP <= va < UPAGES and not va & 3 and self.window_word is not None:
            # envs[i].field reads, as programs poll a child's status.
            v = self.window_word(va)
            if v is not None:
                return v
        return int.from_bytes(self.read(va, 4), "little")

    # -- the MMU: writes -----------------------------------------------------
    def _write_base(self, va: int) -> int:
        """Frame base for a write to va's page (fills the write TLB)."""
        if va >= UTOP:
            raise PageFault(FEC_PR | FEC_WR | FEC_U, va)
        d = self.wt.get(va & 0xFFFFF000)
        if d is None:
            return self.translate(va, True)
        return d + (va & 0xFFFFF000)

    def check_write(self, va: int, n: int) -> None:
        """Raise the fault a write of [va, va+n) would raise, before any byte
        is written (used for straddling writes, pusha, enter, bulk copies)."""
        end = va + n
        page = va & ~0xFFF
        while page < end:
            self._write_base(max(page, va) & 0xFFFFFFFF)
            page += PGSIZE

    def write(self, va: int, data) -> None:
        """Write bytes as user code would: all pages are checked first."""
        n = len(data)
        if n == 0:
            return
        self.check_write(va, n)
        pos = 0
        while pos < n:
            off = va & 0xFFF
            take = min(n - pos, PGSIZE - off)
            base = self._write_base(va)
            pfn = base >> 12
            if pfn in self.phys.code:
                self._code_write(pfn, off, take)
            self.mem[base | off:(base | off) + take] = data[pos:pos + take]
            va = (va + take) & 0xFFFFFFFF
            pos += take

    def _code_write(self, pfn: int, off: int, n: int) -> None:
        bits = self.phys.codebits[pfn]
        if bits.find(1, off, off + n) >= 0:
            self.phys.drop_code(pfn)

    def wr8(self, va: int, v: int) -> None:
        d = self.wt.get(va & 0xFFFFF000)
        if d is not None:
            self.mem[va + d] = v
        else:
            self.write(va, bytes((v,)))

    def wr16(self, va: int, v: int) -> None:
        d = self.wt.get(va & 0xFFFFF000)
        if d is not None and va & 0xFFF != 0xFFF:
            pack_into("<H", self.mem, va + d, v)
        else:
            self.write(va, v.to_bytes(2, "little"))

    def wr32(self, va: int, v: int) -> None:
        d = self.wt.get(va & 0xFFFFF000)
        if d is not None and va & 0xFFF <= 0xFFC:
            if va & 3:
                pack_into("<I", self.mem, va + d, v)
            else:
                self.m32[(va + d) >> 2] = v
        else:
            self.write(va, v.to_bytes(4, "little"))

    # -- the MMU: bulk string operations -------------------------------------------
    def bulk_copy(self, dst: int, src: int, count: int, size: int) -> int:
        """Copy up to `count` size-byte elements forward from src to dst, as
        many as fit in both pages, as one slice copy.  Returns how many were
        copied; 0 means "use the element loop" (an element straddles a page,
        a read-only window, or overlap that a forward copy must replicate).
        Faults are raised before anything is written."""
        soff = src & 0xFFF
        doff = dst & 0xFFF
        n = min(count, (PGSIZE - soff) // size, (PGSIZE - doff) // size)
        if n < 2 or src >= UTOP:
            return 0
        sbase = self._read_base(src)
        dbase = self._write_base(dst)
        s = sbase | soff
        d = dbase | doff
        nb = n * size
        if s < d < s + nb:
            return 0
        dpfn = dbase >> 12
        if dpfn in self.phys.code:
            self._code_write(dpfn, doff, nb)
        self.mem[d:d + nb] = self.mem[s:s + nb]
        return n

    def bulk_fill(self, dst: int, value: int, count: int, size: int) -> int:
        """Store `value` into up to `count` elements at dst within its page;
        returns how many (0: use the element loop)."""
        doff = dst & 0xFFF
        n = min(count, (PGSIZE - doff) // size)
        if n < 2:
            return 0
        dbase = self._write_base(dst)
        d = dbase | doff
        nb = n * size
        dpfn = dbase >> 12
        if dpfn in self.phys.code:
            self._code_write(dpfn, doff, nb)
        self.mem[d:d + nb] = value.to_bytes(size, "little") * n
        return n

    # -- the MMU: instruction fetch --------------------------------------------
    def code_page(self, eip: int) -> dict:
        """The decoded-code dict for eip's page (checks that it is executable)."""
        if eip >= UTOP:
            raise PageFault(FEC_PR | FEC_U, eip)
        vpn = eip >> 12
        base = self._read_base(eip)
        d = self.phys.code_dict(base >> 12)
        self.icache[vpn] = d
        return d

    def fetch(self, eip: int, n: int) -> bytes:
        """Up to n code bytes at eip within its page (the page is checked)."""
        if eip >= UTOP:
            raise PageFault(FEC_PR | FEC_U, eip)
        base = self._read_base(eip)
        off = eip & 0xFFF
        # `base + ...`, not `base | ...`: the end may be PGSIZE itself.
        return bytes(self.mem[base | off:base + min(off + n, PGSIZE)])

    def peek(self, eip: int, n: int) -> bytes:
        """fetch without its side effects: the bytes a fetch would read (and
        the fault it would raise), but A stays as it is and the TLB too --
        the translator reading code ahead of its execution."""
        if eip >= UTOP:
            raise PageFault(FEC_PR | FEC_U, eip)
        pte = self.pte.get(eip >> 12)
        if pte is None or not pte & PTE_P:
            raise PageFault(FEC_U, eip)
        if pte & PTE_REMOTE:
            raise RemotePage(0, eip)
        if not pte & PTE_U:
            raise PageFault(FEC_PR | FEC_U, eip)
        base = pte & 0xFFFFF000
        off = eip & 0xFFF
        return bytes(self.mem[base | off:base + min(off + n, PGSIZE)])

    def read_code(self, eip: int, n: int) -> bytes:
        """n code bytes at eip, possibly from two pages (each checked)."""
        buf = self.fetch(eip, n)
        if len(buf) < n:
            buf += self.fetch((eip + len(buf)) & 0xFFFFFFFF, n - len(buf))
        return buf

    def mark_code(self, eip: int, n: int) -> None:
        """Record that [eip, eip+n) within eip's frame holds decoded code."""
        base = self._read_base(eip)
        off = eip & 0xFFF
        end = min(off + n, PGSIZE)
        bits = self.phys.codebits.get(base >> 12)
        if bits is not None:
            bits[off:end] = b"\x01" * (end - off)

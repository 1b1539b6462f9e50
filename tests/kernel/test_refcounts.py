"""Frame reference counts stay exact under any mix of page syscalls, forks,
copies, kills, pauses and running.

A hypothesis state machine drives a kernel with a few envs loaded from a
real ELF through the real syscall functions (sys_page_alloc & co. called
with the calling env, as the trap handler calls them) and the node-facing
operations, and keeps a model of every env's mappings: which frame is
mapped where with which permissions.  After every step:

  - the kernel's mappings equal the model's;
  - Kernel.check_invariants(): each frame's refcount is the number of
    mappings of it (pages, page tables, page directories), the free list
    holds exactly the frames with no references;
  - uvpt and uvpd read through each env's MMU give the live PTE and PDE
    values, and uvpt of a missing page table faults;

and at the end, killing every env frees every frame.
"""
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from jmig import programs
from jmig.kernel import events as ev
from jmig.kernel import syscall as sc
from jmig.kernel.env import ENV_FREE, ENV_NOT_RUNNABLE, ENVX
from jmig.kernel.kernel import Kernel
from jmig.kernel.memlayout import (
    E_BAD_ENV, E_INVAL, E_NO_FREE_ENV, E_NO_MEM, PFTEMP, PGSIZE, PTE_COW, PTE_P, PTE_SHARE,
    PTE_SYSCALL, PTE_U, PTE_W, USTACKTOP, UTOP, UVPD, UVPT, UXSTACKTOP,
)
from jmig.kernel.pmap import PageFault
from jmig.kernel.runner import VirtualClock

HELLO = programs.load("hello")
UR = PTE_U | PTE_P
URW = UR | PTE_W

# Addresses: hello's own pages, fresh ones in old and new page tables, and bad ones.
GOOD_VAS = [0x800000, 0x801000, 0x803000, USTACKTOP - PGSIZE, UXSTACKTOP - PGSIZE,
            0x400000, 0x401000, 0x10000000, 0x10001000]
BAD_VAS = [0x400004, UTOP, 0xF0000000]
GOOD_PERMS = [UR, URW, UR | PTE_COW, URW | PTE_SHARE, UR | 0x200]
BAD_PERMS = [PTE_P, PTE_U, URW | 0x40, UR | 0x1000]

vas = st.sampled_from(GOOD_VAS + BAD_VAS)
perms = st.sampled_from(GOOD_PERMS + BAD_PERMS)


def va_ok(va):
    return va < UTOP and va % PGSIZE == 0


def perm_ok(perm):
    return perm & UR == UR and perm & ~PTE_SYSCALL == 0


class RefcountMachine(RuleBasedStateMachine):
    """Model: envid -> {"parent": id, "paused": bool, "pages": {vpn: (pfn, perm)}}."""

    @initialize(frames=st.sampled_from([32, 48, 160]), n=st.integers(1, 3))
    def boot(self, frames, n):
        self.k = Kernel(memory=frames * PGSIZE, clock=VirtualClock())
        self.model = {}
        for _ in range(n):
            try:
                e = self.k.env_create(HELLO, ["hello"], name="hello")
            except ev.KernelError as exc:
                assert exc.code == ev.NO_MEMORY
                break
            self.model[e.env_id] = {"parent": 0, "paused": False, "pages": self.mappings(e)}
        self.k.take_events()

    # -- helpers ------------------------------------------------------------------
    def env(self, envid):
        e = self.k.envs[ENVX(envid)]
        assert e.env_id == envid and e.status != ENV_FREE
        return e

    @staticmethod
    def mappings(e):
        return {vpn: (pte >> 12 & 0xFFFFF, pte & PTE_SYSCALL)
                for vpn, pte in e.aspace.pte.items() if pte & PTE_P}

    def pick(self, data, label):
        return data.draw(st.sampled_from(sorted(self.model)), label=label)

    def may_touch(self, caller, target):
        return target == caller or self.model[target]["parent"] == caller

    def as_arg(self, data, caller, target):
        """The envid argument naming target: 0 for the caller itself, sometimes."""
        if target == caller and data.draw(st.booleans(), label="as zero"):
            return 0
        return target

    def frames_for(self, envid, va):
        """Frames a new mapping at va needs besides the page itself."""
        return 0 if (va >> 22) in self.env(envid).aspace.ptpages else 1

    def check_result(self, what, got, errors, nomem):
        """got must be one of the applicable errors; with none, -E_NO_MEM
        exactly when memory is short, else 0."""
        event(f"{what} -> {got}")
        if errors:
            assert got in errors, f"got {got}, expected one of {errors}"
        elif nomem:
            assert got == -E_NO_MEM
        else:
            assert got == 0
        return got == 0

    def kernel_alloc(self, caller, target_arg, target, va, perm):
        e = self.env(caller)
        errors = set()
        if target is None or not self.may_touch(caller, target):
            errors.add(-E_BAD_ENV)
        if not va_ok(va) or not perm_ok(perm):
            errors.add(-E_INVAL)
        nomem = not errors and self.k.phys.nfree < 1 + self.frames_for(target, va)
        before = self.k.phys.nfree
        got = sc.sys_page_alloc(self.k, e, target_arg, va, perm)
        if self.check_result("page_alloc", got, errors, nomem):
            pfn = self.env(target).aspace.pte[va >> 12] >> 12 & 0xFFFFF
            assert self.k.phys.ref[pfn] == 1
            assert bytes(self.k.phys.frame(pfn)) == bytes(PGSIZE)
            self.model[target]["pages"][va >> 12] = (pfn, perm | PTE_P)
        else:
            assert self.k.phys.nfree == before
        return got

    def kernel_map(self, caller, src_arg, src, srcva, dst_arg, dst, dstva, perm):
        e = self.env(caller)
        errors = set()
        if not self.may_touch(caller, src) or not self.may_touch(caller, dst):
            errors.add(-E_BAD_ENV)
        if not va_ok(srcva) or not va_ok(dstva) or not perm_ok(perm):
            errors.add(-E_INVAL)
        have = self.model[src]["pages"].get(srcva >> 12) if va_ok(srcva) else None
        if have is None or (perm & PTE_W and not have[1] & PTE_W):
            errors.add(-E_INVAL)
        nomem = not errors and self.k.phys.nfree < self.frames_for(dst, dstva)
        got = sc.sys_page_map(self.k, e, src_arg, srcva, dst_arg, dstva, perm)
        if self.check_result("page_map", got, errors, nomem):
            self.model[dst]["pages"][dstva >> 12] = (have[0], perm | PTE_P)
        return got

    def kernel_unmap(self, caller, target_arg, target, va):
        errors = set()
        if not self.may_touch(caller, target):
            errors.add(-E_BAD_ENV)
        if not va_ok(va):
            errors.add(-E_INVAL)
        got = sc.sys_page_unmap(self.k, self.env(caller), target_arg, va)
        if self.check_result("page_unmap", got, errors, False):
            self.model[target]["pages"].pop(va >> 12, None)
        return got

    # -- rules ----------------------------------------------------------------------
    @rule()
    def spawn(self):
        free = self.k.phys.nfree
        try:
            e = self.k.env_create(HELLO, ["hello"], name="hello")
        except ev.KernelError as exc:
            assert exc.code == ev.NO_MEMORY
            assert self.k.phys.nfree == free
            return
        self.model[e.env_id] = {"parent": 0, "paused": False, "pages": self.mappings(e)}

    @precondition(lambda self: self.model)
    @rule(data=st.data(), va=vas, perm=perms)
    def page_alloc(self, data, va, perm):
        caller = self.pick(data, "caller")
        target = self.pick(data, "target")
        self.kernel_alloc(caller, self.as_arg(data, caller, target), target, va, perm)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), va=vas, perm=perms)
    def page_alloc_stale_env(self, data, va, perm):
        caller = self.pick(data, "caller")
        stale = data.draw(st.sampled_from([0x12345, 0xFFFFFFFF, caller + 0x1000]))
        got = sc.sys_page_alloc(self.k, self.env(caller), stale, va, perm)
        self.check_result("page_alloc stale", got,
                          {-E_BAD_ENV} | (set() if va_ok(va) and perm_ok(perm) else {-E_INVAL}),
                          False)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), srcva=vas, dstva=vas, perm=perms)
    def page_map(self, data, srcva, dstva, perm):
        caller = self.pick(data, "caller")
        src = self.pick(data, "src")
        dst = self.pick(data, "dst")
        if data.draw(st.booleans(), label="use a mapped srcva"):
            pages = sorted(self.model[src]["pages"])
            if pages:
                srcva = data.draw(st.sampled_from(pages), label="mapped vpn") << 12
        self.kernel_map(caller, self.as_arg(data, caller, src), src, srcva,
                        self.as_arg(data, caller, dst), dst, dstva, perm)

    @precondition(lambda self: any(not p & PTE_W for m in self.model.values()
                                   for _, p in m["pages"].values()))
    @rule(data=st.data(), dstva=vas)
    def page_map_adding_write(self, data, dstva):
        """Asking for PTE_W on a read-only (e.g. COW) page must fail."""
        ro = sorted((envid, vpn) for envid, m in self.model.items()
                    for vpn, (_, p) in m["pages"].items() if not p & PTE_W)
        envid, vpn = data.draw(st.sampled_from(ro), label="read-only page")
        dst = data.draw(st.sampled_from([envid] + sorted(
            c for c, m in self.model.items() if m["parent"] == envid)), label="dst")
        got = self.kernel_map(envid, 0, envid, vpn << 12, dst, dst, dstva, URW)
        assert got == -E_INVAL

    @precondition(lambda self: self.model)
    @rule(data=st.data(), leave=st.integers(0, 2))
    def fill_memory(self, data, leave):
        """Allocate pages until only `leave` frames are free, so that the
        next allocations meet exhaustion in every way."""
        envid = self.pick(data, "hog")
        va = 0x20000000
        while self.k.phys.nfree > leave and va < 0x20400000:
            if self.kernel_alloc(envid, 0, envid, va, URW) != 0:
                break
            va += PGSIZE

    @precondition(lambda self: self.model)
    @rule(data=st.data(), va=vas)
    def page_unmap(self, data, va):
        caller = self.pick(data, "caller")
        target = self.pick(data, "target")
        self.kernel_unmap(caller, self.as_arg(data, caller, target), target, va)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def fork(self, data):
        """JOS's fork: exofork, then share every page, writable ones as COW
        in both (child first, then the parent's own remap)."""
        parent = self.pick(data, "parent")
        free_before = self.k.phys.nfree
        child = sc.sys_exofork(self.k, self.env(parent))
        if child < 0:
            assert child in (-E_NO_MEM, -E_NO_FREE_ENV)
            assert child != -E_NO_MEM or free_before == 0
            return
        c = self.env(child)
        assert c.status == ENV_NOT_RUNNABLE and c.parent_id == parent
        assert c.cpu.r[0] == 0 and c.cpu.r[1:] == self.env(parent).cpu.r[1:]
        self.model[child] = {"parent": parent, "paused": False, "pages": {}}
        for vpn, (_, perm) in sorted(self.model[parent]["pages"].items()):
            va = vpn << 12
            if va == UXSTACKTOP - PGSIZE:
                continue
            if perm & (PTE_W | PTE_COW) and not perm & PTE_SHARE:
                perm = (perm & ~PTE_W) | PTE_COW
                if self.kernel_map(parent, 0, parent, va, child, child, va, perm) == 0:
                    self.kernel_map(parent, 0, parent, va, 0, parent, va, perm)
            else:
                self.kernel_map(parent, 0, parent, va, child, child, va, perm)
        self.kernel_alloc(parent, child, child, UXSTACKTOP - PGSIZE, URW)

    @precondition(lambda self: any(p & PTE_COW for m in self.model.values()
                                   for _, p in m["pages"].values()))
    @rule(data=st.data())
    def cow_fault(self, data):
        """What the user library's pgfault handler does on a write to a COW
        page: copy it through PFTEMP into a private writable page."""
        cows = sorted((envid, vpn) for envid, m in self.model.items()
                      for vpn, (_, p) in m["pages"].items() if p & PTE_COW)
        envid, vpn = data.draw(st.sampled_from(cows), label="cow page")
        e = self.env(envid)
        va = vpn << 12
        old = e.aspace.read(va, PGSIZE)
        if self.kernel_alloc(envid, 0, envid, PFTEMP, URW) != 0:
            return
        e.aspace.write(PFTEMP, old)
        perm = (self.model[envid]["pages"][vpn][1] & ~PTE_COW) | PTE_W
        if self.kernel_map(envid, 0, envid, PFTEMP, 0, envid, va, perm) == 0:
            event("cow page copied")
            assert e.aspace.read(va, PGSIZE) == old
        self.kernel_unmap(envid, 0, envid, PFTEMP)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def kill(self, data):
        envid = self.pick(data, "victim")
        self.k.kill(envid)
        del self.model[envid]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def copy(self, data):
        envid = self.pick(data, "original")
        src = self.env(envid)
        pages = self.model[envid]["pages"]
        least = len(pages) + len({vpn >> 10 for vpn in pages}) + 1
        most = len(pages) + len(src.aspace.ptpages) + 1
        free = self.k.phys.nfree
        live = len(self.k.live_envs())
        try:
            e = self.k.copy(envid)
        except ev.KernelError as exc:
            assert exc.code in (ev.NO_MEMORY, ev.NO_FREE_ENV)
            assert exc.code != ev.NO_MEMORY or free < most, "copy refused with memory to spare"
            assert self.k.phys.nfree == free and len(self.k.live_envs()) == live
            return
        assert free >= least
        event("copied")
        assert e.paused and e.status == ENV_NOT_RUNNABLE and e.parent_id == envid
        assert e.cpu.r == src.cpu.r and e.cpu.eip == src.cpu.eip
        got = self.mappings(e)
        assert {v: p for v, (_, p) in got.items()} == {v: p for v, (_, p) in pages.items()}
        theirs = {pfn for pfn, _ in pages.values()}
        assert not theirs & {pfn for pfn, _ in got.values()}, "copy shares a frame"
        for vpn in got:
            assert bytes(self.k.page_data(e.env_id, vpn << 12)) == \
                bytes(self.k.page_data(envid, vpn << 12))
        self.model[e.env_id] = {"parent": envid, "paused": True, "pages": got}

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def pause_or_resume(self, data):
        envid = self.pick(data, "env")
        paused = self.model[envid]["paused"]
        op = data.draw(st.sampled_from(["pause", "resume"]), label="op")
        try:
            getattr(self.k, op)(envid)
        except ev.KernelError as exc:
            assert exc.code == ev.BAD_STATE
            assert paused == (op == "pause")
            return
        assert paused == (op == "resume")
        self.model[envid]["paused"] = op == "pause"

    @precondition(lambda self: self.model)
    @rule(budget=st.sampled_from([30, 300]))
    def run(self, budget):
        """Running the envs (hello) sets A and D bits, may end them (exit or
        a fault on a page the rules took away), and changes no mapping."""
        self.k.run(budget)
        self.k.take_events()
        for envid in list(self.model):
            e = self.k.envs[ENVX(envid)]
            if e.env_id != envid or e.status == ENV_FREE:
                del self.model[envid]

    # -- invariants -------------------------------------------------------------------
    @invariant()
    def mappings_match_the_model(self):
        if not hasattr(self, "k"):
            return
        assert sorted(e.env_id for e in self.k.live_envs()) == sorted(self.model)
        for envid, m in self.model.items():
            e = self.env(envid)
            assert self.mappings(e) == m["pages"], f"env {envid:08x}"
            assert e.paused == m["paused"]

    @invariant()
    def refcounts_match_mappings(self):
        if hasattr(self, "k"):
            self.k.check_invariants()

    @invariant()
    def uvpt_shows_the_live_page_tables(self):
        if not hasattr(self, "k"):
            return
        for envid in self.model:
            a = self.env(envid).aspace

            def word(va):
                return int.from_bytes(a.read(va, 4), "little")

            for vpn, pte in a.pte.items():
                assert word(UVPT + 4 * vpn) == pte & 0xFFFFFFFF, f"uvpt[{vpn:#x}]"
            # uvpd[PDX(UVPT)]: the page directory maps itself, user-readable.
            assert word(UVPD + 4 * (UVPT >> 22)) == (a.pgdir_pfn << 12) | PTE_U | PTE_P
            for pdx, pfn in a.ptpages.items():
                assert word(UVPD + 4 * pdx) == (pfn << 12) | PTE_U | PTE_W | PTE_P
                # An unmapped slot in an existing page table reads as 0.
                hole = next((v for v in range(pdx << 10, (pdx + 1) << 10) if v not in a.pte), None)
                if hole is not None:
                    assert word(UVPT + 4 * hole) == 0
            for pdx in (1, 2, 0x40, 0x3BA):
                if pdx not in a.ptpages:
                    assert word(UVPD + 4 * pdx) == 0
                    with pytest.raises(PageFault):
                        a.read(UVPT + 4 * (pdx << 10), 4)

    def teardown(self):
        if not hasattr(self, "k"):
            return
        for e in list(self.k.live_envs()):
            self.k.kill(e.env_id)
        assert self.k.phys.nfree == self.k.phys.nframes - 1, "frames leaked"
        self.k.check_invariants()


RefcountMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestRefcounts = pytest.mark.slow(RefcountMachine.TestCase)

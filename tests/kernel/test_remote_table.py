"""What a demand-paging switch is made of on each side: the page runs the
source computes once while the process runs (kept until the mapping
changes), and the remote page table the destination builds from them
ahead of the stream (the same table, mirror and counts as restoring the
runs one by one)."""
import pytest

from jmig import programs
from jmig.kernel import events as ev
from jmig.kernel.kernel import Kernel
from jmig.kernel.memlayout import PTE_P, PTE_U, PTE_W, UTOP, UVPT
from jmig.kernel.runner import VirtualClock

from .asm import Machine, assemble, needs_binutils

# Writes a counter forever (A and D change, the mapping does not).
WRITER = """
_start:
    addl $1, out
    jmp _start
"""

# Maps a page at 0x500000, writes it, then unmaps the stack's neighbour
# page it mapped at 0x501000, then spins.
MAPPER = """
_start:
    sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_W|PTE_P
    sys SYS_page_alloc, $0, $0x501000, $PTE_U|PTE_P
    movl $5, 0x500000
    sys SYS_page_unmap, $0, $0x500000
1:  jmp 1b
"""


def fresh_runs(k, envid):
    """page_runs computed anew, not from what was kept."""
    k.live_env(envid).aspace.runs_memo = None
    return k.page_runs(envid)


@needs_binutils
def test_page_runs_are_kept_while_the_process_only_writes_and_recomputed_when_it_maps():
    m = Machine()
    p = m.spawn(assemble(WRITER), name="writer")
    m.run(2_000)
    k = m.k
    runs = k.page_runs(p.envid)
    m.run(20_000)                      # writes: D and A bits only
    assert k.page_runs(p.envid) is runs
    assert fresh_runs(k, p.envid) == runs

    q = m.spawn(assemble(MAPPER), name="mapper")
    before = k.page_runs(q.envid)
    assert not any(f <= 0x500 < f + c for f, c, _ in before)
    m.run(20_000)
    after = k.page_runs(q.envid)
    assert after == fresh_runs(k, q.envid)
    assert (0x501, 1, PTE_U | PTE_P) in after, "a page mapped since is in the runs"
    assert not any(f <= 0x500 < f + c for f, c, _ in after), "a page unmapped since is not"


def test_page_runs_follow_permission_changes_and_unmaps_made_by_the_kernel():
    k = Kernel(clock=VirtualClock())
    e = k.env_create(programs.load("hello"), ["hello"], name="hello", paused=True)
    a = e.aspace
    pfn = k.phys.page_alloc()
    assert a.page_insert(pfn, 0x600000, PTE_U | PTE_W)
    runs = k.page_runs(e.env_id)
    assert (0x600, 1, PTE_U | PTE_W | PTE_P) in runs
    a.set_perm(0x600, a.pte[0x600] & ~PTE_W)
    assert (0x600, 1, PTE_U | PTE_P) in k.page_runs(e.env_id)
    a.page_remove(0x600000)
    assert not any(f <= 0x600 < f + c for f, c, _ in k.page_runs(e.env_id))
    assert k.page_runs(e.env_id) == fresh_runs(k, e.env_id)


def incoming(k):
    e = k.env_create(programs.load("hello"), ["hello"], name="hello", paused=True)
    for vpn in [v for v in e.aspace.pte if v < UTOP >> 12]:
        e.aspace.page_remove(vpn << 12)
    return e


RUNS = ((0x200, 3, PTE_U | PTE_P), (0x3FE, 4, PTE_U | PTE_W | PTE_P),
        (0xEEBFD, 1, PTE_U | PTE_W | PTE_P))


def test_a_prebuilt_remote_table_gives_the_page_table_that_run_by_run_restores_give():
    k = Kernel(clock=VirtualClock())
    one, other = incoming(k), incoming(k)
    for first, count, perm in RUNS:
        k.restore_remote_run(one, first << 12, count, perm)
    k.restore_remote_table(other, k.remote_table(RUNS))
    assert other.aspace.pte == one.aspace.pte
    assert other.aspace.nremote == one.aspace.nremote == 8
    for first, count, perm in RUNS:
        assert [other.aspace.rd32(UVPT + v * 4) for v in range(first, first + count)] == \
            [perm] * count
    other.aspace.check_mirror()
    assert k.page_runs(other.env_id) == RUNS
    k.check_invariants()


@pytest.mark.parametrize("runs,why", [
    (((0x200, 3, PTE_U | PTE_P), (0x201, 1, PTE_U | PTE_P)), "out of order or overlaps"),
    (((0x300, 1, PTE_U | PTE_P), (0x200, 1, PTE_U | PTE_P)), "out of order or overlaps"),
    (((0x200, 0, PTE_U | PTE_P),), "bad page run"),
    (((0x200, 1, PTE_P),), "bad page run"),
    (((0x200, 1, PTE_U | PTE_P | 0x40),), "bad page run"),
    ((((UTOP >> 12) - 1, 2, PTE_U | PTE_P),), "bad page run"),
])
def test_bad_announced_runs_are_refused_before_anything_is_built(runs, why):
    with pytest.raises(ev.KernelError, match=why):
        Kernel.remote_table(runs)


def test_a_table_overlapping_pages_the_env_has_is_refused_and_changes_nothing():
    k = Kernel(clock=VirtualClock())
    e = incoming(k)
    k.restore_remote_run(e, 0x3FF000, 1, PTE_U | PTE_P)
    before = dict(e.aspace.pte)
    with pytest.raises(ev.KernelError, match="overlaps mapped pages"):
        k.restore_remote_table(e, k.remote_table(RUNS))
    assert e.aspace.pte == before


def test_runs_may_start_at_address_zero_and_end_at_utop():
    # The lowest and the highest pages a process may have: both ends of a
    # run's allowed range.
    runs = ((0, 2, PTE_U | PTE_P), ((UTOP >> 12) - 1, 1, PTE_U | PTE_P))
    table = Kernel.remote_table(runs)
    assert sorted(table.pte) == [0, 1, (UTOP >> 12) - 1]
    k = Kernel(clock=VirtualClock())
    e = incoming(k)
    k.restore_remote_run(e, 0, 2, PTE_U | PTE_P)
    assert k.remote_pages(e.env_id) == [0, 0x1000]
    k.check_invariants()

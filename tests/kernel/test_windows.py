"""The read-only windows as user code reads them quickly: uvpd[] and uvpt[]
come straight from the page directory and page-table frames, which the
address space keeps equal to its page tables on every change."""
import pytest

from jmig import programs
from jmig.kernel.kernel import Kernel
from jmig.kernel.memlayout import PTE_A, PTE_D, PTE_P, PTE_U, PTE_W, UVPD, UVPT
from jmig.kernel.pmap import KernelPanic
from jmig.kernel.runner import VirtualClock

from .asm import Machine, assemble, needs_binutils


def run_checking_mirrors(name, *args, engine=None, slice_=3000, limit=3_000_000):
    """Run a program, checking every live env's page-table frames after
    every slice of `slice_` instructions."""
    k = Kernel(clock=VirtualClock(), engine=engine, slice=slice_)
    k.env_create(programs.load(name), [name, *args], name=name)
    checked = total = 0
    while total < limit:
        r = k.run(slice_)
        total += r.executed
        for e in k.live_envs():
            e.aspace.check_mirror()
            checked += 1
        if r.idle:
            break
    return k, checked


@pytest.mark.parametrize("name,args", [pytest.param("cowstress", ("1",), marks=pytest.mark.slow),
                                       pytest.param("forktree", (), marks=pytest.mark.slow),
                                       ("scantree", ())])
@pytest.mark.parametrize("engine", ["blocks", "interp"])
def test_page_table_frames_follow_fork_cow_faults_and_unmaps(name, args, engine):
    k, checked = run_checking_mirrors(name, *args, engine=engine,
                                      limit=400_000 if name == "scantree" else 3_000_000)
    assert checked > 20


def test_uvpt_reads_see_accessed_and_dirty_bits_and_remote_pages():
    k = Kernel(clock=VirtualClock())
    e = k.env_create(programs.load("hello"), ["hello"], name="hello", paused=True)
    a = e.aspace
    va = 0x500000
    pfn = k.phys.page_alloc()
    assert a.page_insert(pfn, va, PTE_U | PTE_W)
    word = UVPT + (va >> 12) * 4
    assert a.rd32(word) == (pfn << 12) | PTE_U | PTE_W | PTE_P
    assert (word & ~0xFFF) in a.rt, "the page-table frame is in the TLB after a read"
    a.rd8(va)
    assert a.rd32(word) == (pfn << 12) | PTE_A | PTE_U | PTE_W | PTE_P
    a.wr8(va, 1)
    assert a.rd32(word) == (pfn << 12) | PTE_D | PTE_A | PTE_U | PTE_W | PTE_P
    assert a.set_remote_run(0x600, 3, PTE_U | PTE_P)
    assert [a.rd32(UVPT + v * 4) for v in (0x600, 0x601, 0x602, 0x603)] == [5, 5, 5, 0]
    assert a.rd32(UVPD + (va >> 22) * 4) == a.pde_value(va >> 22)
    a.page_remove(va)
    assert a.rd32(word) == 0
    a.check_mirror()


@pytest.mark.parametrize("k_", [0, 5, 1023])
def test_a_stale_page_table_frame_is_caught_at_any_entry(k_):
    """check_mirror, the oracle of these tests, looks at every word of
    every page-table frame: the first, one inside, the last."""
    k = Kernel(clock=VirtualClock())
    e = k.env_create(programs.load("hello"), ["hello"], name="hello")
    a = e.aspace
    a.check_mirror()
    pdx, pfn = next(iter(a.ptpages.items()))
    k.phys.m32[(pfn << 10) | k_] ^= PTE_W
    with pytest.raises(KernelPanic, match=rf"uvpt\[{(pdx << 10) | k_:#x}\] differs"):
        a.check_mirror()


def test_remote_pages_show_their_own_permissions_and_a_run_gets_every_page_table():
    k = Kernel(clock=VirtualClock())
    e = k.env_create(programs.load("hello"), ["hello"], name="hello", paused=True)
    a = e.aspace
    assert a.set_remote(0x500000, PTE_U | PTE_P)
    assert a.set_remote(0x501000, PTE_U | PTE_W | PTE_P)
    assert [a.rd32(UVPT + v * 4) for v in (0x500, 0x501)] == [PTE_U | PTE_P,
                                                              PTE_U | PTE_W | PTE_P]
    # 0x13fe000..0x1402000: four pages over two page tables, neither there before.
    assert 4 not in a.ptpages and 5 not in a.ptpages
    assert a.set_remote_run(0x13FE, 4, PTE_U | PTE_P)
    assert [a.rd32(UVPT + v * 4) for v in range(0x13FE, 0x1402)] == [PTE_U | PTE_P] * 4
    assert a.nremote == 6
    a.check_mirror()


@needs_binutils
def test_enter_reads_its_display_from_the_first_word_of_uenvs():
    # enter $0,$2 with ebp = UENVS + 4 copies the frame pointer at
    # [ebp - 4] = UENVS (= UTOP), the first word of the read-only envs[],
    # to -4 of the new frame.
    m = Machine()
    p = m.spawn(assemble("""
_start:
    mov %ebp, %edi
    mov $0xeec00004, %ebp
    enter $0, $2
    mov -4(%ebp), %eax
    mov %eax, out
    mov %edi, %ebp
    movl $1, out+4
    halt
"""))
    m.run(10_000)
    assert "user fault" not in m.console
    assert p.outs(2) == [int.from_bytes(p.read(0xEEC00000, 4), "little"), 1]


def test_a_frame_above_2_gib_is_an_ordinary_local_page():
    """A node may have up to 4 GiB: a frame at a physical address with bit
    31 set holds a page like any other (jmig's remote flag lives above the
    32 bits of a PTE, never among them)."""
    k = Kernel(memory=3 << 30, clock=VirtualClock())
    e = k.env_create(programs.load("hello"), ["hello"], name="hello", paused=True)
    a = e.aspace
    high = 0x80005                                   # physical address 0x80005000
    k.phys.free.remove(high)
    assert a.page_insert(high, 0x500000, PTE_U | PTE_W)
    a.wr32(0x500004, 0x12345678)
    assert a.rd32(0x500004) == 0x12345678 == k.phys.m32[(high << 10) | 1]
    assert a.rd32(UVPT + (0x500000 >> 12) * 4) == (high << 12) | PTE_D | PTE_A | PTE_U | PTE_W | PTE_P
    assert k.remote_count(e.env_id) == 0
    a.check_mirror()

"""The restore side of snapshots that the stream decoder drives
(snapshot.py): restore_batch maps a batch of pages on fresh frames and
hands back views of those frames to fill, one per run of consecutive
frames; and the page lists pre-copy compares between rounds
(page_snapshot, page_info)."""
import attrs
import pytest

from jmig.kernel import events as ev
from jmig.kernel.memlayout import PGSIZE, PTE_P, PTE_SYSCALL, PTE_U, PTE_W

from .asm import Machine, assemble, needs_binutils

pytestmark = needs_binutils

URW = PTE_U | PTE_P | PTE_W
UR = PTE_U | PTE_P
VAS = [0x500000, 0x501000, 0x502000, 0x600000, 0x601000]


def incoming(m):
    """A new incoming env (no pages yet), from a halted program's header."""
    p = m.spawn(assemble("_start:\n    halt\n"))
    m.run()
    return m.k.create_from(m.k.header(p.envid), keep_id=False)


def fill(views, pages):
    """Write pages' bytes into the views back to back, as the decoder does."""
    data = b"".join(pages)
    assert sum(len(v) for v in views) == len(data)
    pos = 0
    for v in views:
        v[:] = data[pos:pos + len(v)]
        pos += len(v)


def pages_of(n):
    return [bytes([i + 1]) * PGSIZE for i in range(n)]


def test_a_batch_on_consecutive_frames_comes_back_as_one_view():
    m = Machine()
    e = incoming(m)
    views = m.k.restore_batch(e, VAS, [URW] * len(VAS))
    assert len(views) == 1 and len(views[0]) == len(VAS) * PGSIZE
    fill(views, pages_of(len(VAS)))
    for i, va in enumerate(VAS):
        assert e.aspace.read(va, PGSIZE) == pages_of(len(VAS))[i]
    m.k.check_invariants()


def test_a_batch_on_scattered_frames_gets_a_view_per_run_and_every_page_its_bytes():
    m = Machine()
    e = incoming(m)
    # Leave the free list's tail as frames a, a+2, a+4, a+5, a+6: three runs.
    taken = [m.k.phys.page_alloc() for _ in range(7)]
    for pfn in sorted(taken)[::-1]:
        if pfn - min(taken) in (0, 2, 4, 5, 6):
            m.k.phys.page_free(pfn)
    views = m.k.restore_batch(e, VAS, [URW, UR, URW, URW, UR])
    assert [len(v) // PGSIZE for v in views] == [1, 1, 3]
    fill(views, pages_of(len(VAS)))
    for i, va in enumerate(VAS):
        assert e.aspace.read(va, PGSIZE) == pages_of(len(VAS))[i]
    assert [e.aspace.pte[va >> 12] & PTE_SYSCALL for va in VAS] == [URW, UR, URW, URW, UR]
    m.k.commit_incoming(e)
    for pfn in taken:
        if pfn - min(taken) in (1, 3):
            m.k.phys.page_free(pfn)                         # the two held back
    m.k.check_invariants()


def test_a_batch_with_a_page_already_mapped_is_refused_naming_it():
    m = Machine()
    e = incoming(m)
    m.k.restore_batch(e, VAS[:2], [URW, URW])
    free = m.k.phys.nfree
    with pytest.raises(ev.KernelError, match="page 00501000 appears twice") as exc:
        m.k.restore_batch(e, VAS[1:], [URW] * 4)
    assert exc.value.code == ev.BAD_SNAPSHOT
    assert m.k.phys.nfree == free


def test_a_batch_larger_than_free_memory_is_refused_and_maps_nothing():
    m = Machine()
    e = incoming(m)
    vas = [0x10000000 + i * PGSIZE for i in range(m.k.phys.nfree + 1)]
    with pytest.raises(ev.KernelError) as exc:
        m.k.restore_batch(e, vas, [URW] * len(vas))
    assert exc.value.code == ev.NO_MEMORY
    assert e.aspace.pte == {}
    m.k.abort_incoming(e)
    m.k.check_invariants()


def test_page_snapshot_and_page_info_list_the_local_pages_with_frame_and_perm():
    m = Machine()
    e = incoming(m)
    m.k.restore_page(e, 0x500000, URW, b"a" * PGSIZE)
    m.k.restore_page(e, 0x501000, UR, b"b" * PGSIZE)
    m.k.restore_page(e, 0x502000, URW, None)                 # remote: not listed
    m.k.commit_incoming(e)
    snap = m.k.page_snapshot(e.env_id)
    assert sorted(snap) == [0x500, 0x501]
    for vpn, perm, byte in [(0x500, URW, b"a"), (0x501, UR, b"b")]:
        pfn, got = snap[vpn]
        assert got == perm and m.k.phys.frame(pfn)[:4] == byte * 4
        assert m.k.page_info(e.env_id, vpn) == snap[vpn]
    assert m.k.page_info(e.env_id, 0x502) is None
    assert m.k.page_info(e.env_id, 0x503) is None


def test_a_restored_env_has_exactly_the_registers_of_its_header():
    m = Machine()
    p = m.spawn(assemble("_start:\n    halt\n"))
    m.run()
    regs = (1, 0x80000003, 5, 0xFFFFFFFF, 0xEEBFDFF7, 0x1_0000_000B, 13, 0x7FFFFFFF)
    h = attrs.evolve(m.k.header(p.envid), regs=regs, eip=0x800021)
    e = m.k.create_from(h, keep_id=False)
    assert e.cpu.r == [r & 0xFFFFFFFF for r in regs] and e.cpu.eip == 0x800021
    m.k.commit_incoming(e)
    assert m.k.header(e.env_id).regs == tuple(r & 0xFFFFFFFF for r in regs)

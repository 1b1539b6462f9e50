"""The kernel's page change log, which pre-copy's rounds and stop phase are
built on: after track_changes, take_changes returns exactly the pages
written, mapped, unmapped or remapped since the previous take, whatever
path made the change, and nothing for pages only read."""
from jmig.kernel.memlayout import PGSIZE, PTE_P, PTE_U, PTE_W

from .asm import Machine, assemble, needs_binutils

pytestmark = needs_binutils

# Writes out[0] (counting) forever, reads `ro` each time around.
WRITER = """
_start:
    movl ro, %eax
    addl $1, out
    jmp _start

    .data
    .balign 0x1000
ro: .long 7
"""

# Allocates pages at 0x500000 and 0x501000, writes the first, unmaps the
# second, then halts.
MAPPER = """
_start:
    sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_W|PTE_P
    sys SYS_page_alloc, $0, $0x501000, $PTE_U|PTE_W|PTE_P
    movl $5, 0x500000
    sys SYS_page_unmap, $0, $0x501000
    halt
"""


def test_a_paused_env_changes_nothing_and_a_running_one_only_the_pages_it_writes():
    m = Machine()
    prog = assemble(WRITER)
    p = m.spawn(prog, name="writer")
    m.run(3_000)
    k = m.k
    k.pause(p.envid)
    k.track_changes(p.envid)
    m.run(3_000)
    assert k.take_changes(p.envid) == set()
    k.resume(p.envid)
    m.run(3_000)
    out_vpn, ro_vpn = prog.out_va >> 12, prog.addr("ro") >> 12
    changed = k.take_changes(p.envid)
    assert out_vpn in changed and ro_vpn not in changed
    # Taken: the next take sees only writes made after it.
    k.pause(p.envid)
    assert k.take_changes(p.envid) == set()
    k.resume(p.envid)
    m.run(3_000)
    assert k.take_changes(p.envid) == {out_vpn}


def test_mapping_and_unmapping_are_changes_and_stop_tracking_ends_the_log():
    m = Machine()
    k = m.k
    p = m.spawn(assemble(MAPPER), name="mapper")
    k.pause(p.envid)
    k.track_changes(p.envid)
    k.resume(p.envid)
    m.run(10_000)
    changed = k.take_changes(p.envid)
    assert {0x500, 0x501} <= changed
    assert p.pte(0x500000) & (PTE_P | PTE_U | PTE_W) == PTE_P | PTE_U | PTE_W
    assert not p.pte(0x501000)
    # A change made by the kernel on the node's behalf is logged too.
    k.drop_page(k.get_env(p.envid), 0x500000)
    assert k.take_changes(p.envid) == {0x500}
    k.stop_tracking(p.envid)
    assert k.get_env(p.envid).aspace.changes is None
    k.restore_page(k.get_env(p.envid), 0x600000, PTE_U | PTE_W | PTE_P, bytes(PGSIZE))
    assert k.get_env(p.envid).aspace.changes is None

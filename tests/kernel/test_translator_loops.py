"""Loops whose turn passes through several heads of a region.

A fork that scans the page tables turns through three heads (advance,
test the PDE through UVPD, test the PTE through UVPT), each entered from
more than one place.  The translator compiles such a loop into one inner
`while` loop of the loop head's tree (translate.py, _short_loops): the heads
on the way are followed inline.  These programs check that the result and
the instruction count stay exact however the scheduler's slices cut
through the turns.
"""
from __future__ import annotations

import pytest

from .asm import Machine, assemble

SCAN = assemble(r"""
_start:
    xor %esi, %esi              # present pages seen
    xor %edi, %edi              # a checksum of the PTEs seen
    mov $UTEXT, %ebx
    jmp pde                     # enter the loop at its second head
next:                           # head: the loop's header
    add $PGSIZE, %ebx
    cmp $UTEXT + 0x800000, %ebx   # 2,048 turns: enough to be compiled and cut
    je done
pde:                            # head: reached from next and from the entry
    mov %ebx, %eax
    shr $22, %eax
    mov UVPD(,%eax,4), %edx
    rol $3, %edi
    test $1, %dl
    je next
pte:                            # head: reached from pde and from the bottom of the loop
    mov %ebx, %eax
    shr $12, %eax
    mov UVPT(,%eax,4), %eax
    xor %eax, %edi
    add %eax, %edi
    test $PTE_P, %al
    je next
    inc %esi
    cmp $UTEXT + 0x3000, %ebx   # a second way into pte: look at the next page now
    jae next
    add $PGSIZE, %ebx
    jmp pte
done:
    mov %esi, %eax
    save 0
    mov %edi, %eax
    save 1
    halt
""")


def _scan(monkeypatch, engine: str, slice: int) -> tuple[list[int], int]:
    monkeypatch.setenv("JMIG_ENGINE", engine)
    m = Machine(slice=slice)
    p = m.spawn(SCAN)
    res = m.run(50_000_000)
    return p.outs(2), res.executed


@pytest.mark.parametrize("slice", [1, 2, 3, 5, 7, 11, 13, 17, 10_000])
def test_a_loop_through_three_heads_counts_exactly_at_every_cut(monkeypatch, slice):
    """The same results and the same instruction count as the interpreter
    given the same slices (the count at the end depends on where the last
    slice ends, on either engine)."""
    outs, executed = _scan(monkeypatch, "blocks", slice)
    assert (outs, executed) == _scan(monkeypatch, "interp", slice)
    assert outs[0] == 2                 # its text and its out[] page

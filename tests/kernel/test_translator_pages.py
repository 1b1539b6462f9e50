"""Loads whose address the translator knows stays in one page.

Along a path the translator knows upper bounds of some values (the result
of `shr $k`, of `and $c`, a byte or word just loaded); a load whose
address is then confined to one page, aligned, has its TLB key at
compile time, and in a loop its TLB entry is looked up once before the
loop (translate.py, RegionGen._one_page and _entry).  The first turn after
each entry finds no entry for a page not yet in the TLB: that load is
restarted through the interpreter, as a TLB miss is.

These programs check the results and the exact instruction counts
against the interpreter however the slices cut the loops: tables read
through shifted, masked and byte indices, an index bounded on one branch
only, a mask that does not keep an access in one page, a loop whose page
is unmapped part-way (the fault is reported at the same instruction), and
the page-table scan of a student's fork.
"""
from __future__ import annotations

import pytest

from jmig.kernel.x86 import translate

from .asm import Machine, assemble

TABLES = r"""
    .data
    .balign 4096
words:                          # one page of words, word k = k * 0x01010101 + 7
    .set k, 0
    .rept 1024
    .long k * 0x01010101 + 7
    .set k, k + 1
    .endr
next_page:                      # the page after it, different words
    .set k, 0
    .rept 1024
    .long 0x80000000 + k * 3
    .set k, k + 1
    .endr
    .text
"""

PROGRAMS = {
    # word k of one page, k = i >> 22 (bound 1024: one page)
    "shifted words": r"""
_start:
    xor %ecx, %ecx
    xor %esi, %esi
1:  mov %ecx, %eax
    shr $22, %eax
    mov words(,%eax,4), %edx
    add %edx, %esi
    rol $1, %esi
    add $0x00400000, %ecx
    cmp $0x40000000, %ecx
    jne 1b
    mov %esi, %eax
    save 0
    halt
""",
    # word k of two pages, k = i >> 21 (bound 2048): not one page, but an
    # address below 4 GiB, computed without wrapping
    "shifted words across two pages": r"""
_start:
    xor %ecx, %ecx
    xor %esi, %esi
1:  mov %ecx, %eax
    shr $21, %eax
    mov words(,%eax,4), %edx
    add %edx, %esi
    rol $1, %esi
    add $0x00200000, %ecx
    jnz 1b
    mov %esi, %eax
    save 0
    halt
""",
    # bytes and halfwords: movzbl words(%eax) with eax = i & 0xff; movzwl with i & 0x7fe
    "bytes and halfwords": r"""
_start:
    xor %ecx, %ecx
    xor %esi, %esi
    xor %edi, %edi
1:  mov %ecx, %eax
    and $0xff, %eax
    movzbl words + 0x100(%eax), %edx
    add %edx, %esi
    mov %ecx, %eax
    and $0x7fe, %eax
    movzwl words + 0x400(%eax), %edx
    xor %edx, %edi
    rol $3, %edi
    movzbl %dl, %eax
    mov words(,%eax,4), %eax
    add %eax, %edi
    add $7, %ecx
    cmp $7 * 3000, %ecx
    jne 1b
    mov %esi, %eax
    save 0
    mov %edi, %eax
    save 1
    halt
""",
    # and $0x3ff, then words + 0x800(,%eax,4): the access crosses into next_page,
    # which is made to map the frame of words (not the frame after it)
    "a mask that crosses a page": r"""
_start:
    sys SYS_page_map, $0, $words, $0, $next_page, $PTE_P|PTE_U
    xor %ecx, %ecx
    xor %esi, %esi
1:  mov %ecx, %eax
    and $0x3ff, %eax
    mov words + 0x800(,%eax,4), %edx
    add %edx, %esi
    rol $1, %esi
    add $0x14, %ecx
    cmp $0x14 * 2000, %ecx
    jne 1b
    mov %esi, %eax
    save 0
    halt
""",
    # eax (up to 2047: two pages) is bounded (shr) only when ecx is odd;
    # the short block at 3 is copied into both paths, the bounded one first
    "a bound on one branch": r"""
_start:
    xor %ecx, %ecx
    xor %esi, %esi
    mov $0x3f0, %ebx
1:  mov %ebx, %eax
    test $1, %cl
    jne 2f
    jmp 3f
2:  shr $22, %eax
3:  mov words(,%eax,4), %edx
    add %edx, %esi
    jmp 4f
4:  rol $1, %esi
    add $0x2c4, %ebx
    and $0x7ff, %ebx
    inc %ecx
    cmp $3000, %ecx
    jne 1b
    mov %esi, %eax
    save 0
    halt
""",
    # the page under the table goes away (sys_page_unmap) after 500 turns:
    # the next load faults at the same instruction on both engines
    "a page unmapped under the loop": r"""
_start:
    xor %ecx, %ecx
    xor %esi, %esi
1:  mov %ecx, %eax
    shr $24, %eax
load:
    mov words(,%eax,4), %edx
    add %edx, %esi
    add $0x01000000, %ecx
    inc %edi
    cmp $500, %edi
    jne 1b
    mov %esi, %eax
    save 0
    push %ecx
    sys SYS_page_unmap, $0, $words
    pop %ecx
    jmp 1b
""",
}


def _run(monkeypatch, name: str, engine: str, slice: int):
    monkeypatch.setenv("JMIG_ENGINE", engine)
    m = Machine(slice=slice)
    p = m.spawn(assemble(PROGRAMS[name] + TABLES))
    res = m.run(5_000_000)
    return (p.outs(2) if p.alive else None), res.executed, m.console


@pytest.mark.parametrize("slice", [1, 3, 7, 100, 10_000])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_one_page_loads_give_the_interpreters_results_at_every_cut(monkeypatch, name, slice):
    """The same words, instruction count and console as the interpreter."""
    blocks = _run(monkeypatch, name, "blocks", slice)
    assert blocks == _run(monkeypatch, name, "interp", slice)
    assert blocks[0] is None if "unmapped" in name else blocks[0][0] != 0


def test_the_unmapped_page_is_reported_as_a_fault_at_the_load(monkeypatch):
    outs, _, console = _run(monkeypatch, "a page unmapped under the loop", "blocks", 10_000)
    prog = assemble(PROGRAMS["a page unmapped under the loop"] + TABLES)
    assert f"user fault va {prog.addr('words') >> 12:05x}" in console, console
    assert f"ip {prog.addr('load'):08x}" in console, console


def test_a_loop_looks_its_one_page_entry_up_once_before_it(monkeypatch):
    """The compiled loop of the shifted-words program reads its table
    through a local assigned before the loop (white box: the source)."""
    translate._COMPILED.clear()
    translate._BY_HEAD.clear()              # compile it again here, not reuse it
    _run(monkeypatch, "shifted words", "blocks", 10_000)
    prog = assemble(PROGRAMS["shifted words"] + TABLES)
    page = prog.addr("words")
    srcs = [fn.src for fn in translate._COMPILED.values()
            if f"RD.get({page:#x}, {translate.NOPAGE:#x})" in fn.src]
    assert srcs, "no region hoisted the table's TLB entry"
    src = srcs[0]
    assert src.index("RD.get(") < src.index("while True:")
    assert "+ _h0]" in src


def test_a_bounded_index_under_a_large_displacement_is_not_wrapped(monkeypatch):
    """words(,%eax,4) with eax < 2048 (shr $21) stays below 4 GiB: its
    address is the plain sum, without `& 0xFFFFFFFF` (white box)."""
    translate._COMPILED.clear()
    translate._BY_HEAD.clear()
    _run(monkeypatch, "shifted words across two pages", "blocks", 10_000)
    words = assemble(PROGRAMS["shifted words across two pages"] + TABLES).addr("words")
    srcs = [fn.src for fn in translate._COMPILED.values() if f"eax * 4 + {words:#x}" in fn.src]
    assert srcs, "no region reads the table through the plain sum"
    assert f"(eax * 4 + {words:#x}) & 0xFFFFFFFF" not in srcs[0]

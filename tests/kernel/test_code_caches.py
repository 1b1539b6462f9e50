"""What the core keeps of decoded and compiled code, and when it lets go.

- Each code frame has a dict of decoded instructions keyed by page
  offset (cpu.lookup_slow); an instruction at the frame's last byte,
  0xFFF, whose page is shared with other code, must be found there and not
  confused with them.
- A region installed in one env is offered to envs mapping the same frames
  (a template kept in the dict of its entry's frame, cpu._place); a region
  spans pages, so a change of code in any of its frames must forget the
  template in the entry's frame too (PhysMem.note_template), or the next
  install would run the old code.  A fork's children map their parent's
  code frames, so they take its regions as they are, without planning
  them again.
- A second run of a program in the same process (a node running it
  again, a benchmark's second run) installs the regions an earlier run
  compiled as soon as their first block runs, without interpreting or
  decoding their code (cpu._reuse, translate.known_regions).  Installing
  marks the bytes of the frames that hold compiled code, so that a store
  over any of them drops the region, even over the last byte of a block.
"""
from __future__ import annotations

import pytest

from jmig import programs
from jmig.kernel.runner import run_program
from jmig.kernel.x86 import cpu as core
from jmig.kernel.x86 import translate

from .asm import Machine, assemble

# f's one-byte `inc` is the last byte of a page whose first bytes are g.
LAST_BYTE = assemble(r"""
_start:
    xor %eax, %eax
    xor %edx, %edx
    mov $100, %ecx
1:  call f
    call g
    loop 1b
    save 0
    mov %edx, %eax
    save 1
    halt

    .balign 4096
g:  add $2, %edx                # 3 bytes
    ret                         # 1 byte
    .skip 4095 - 4
f:  inc %eax                    # at page offset 0xfff
    ret                         # at offset 0 of the next page
""")

# The loop (one page) calls h (the next page); at turn 1500 it rewrites
# h's immediate, so that h adds 5 instead of 1.
PATCHED_CALLEE = assemble(r"""
_start:
    xor %esi, %esi
    xor %ecx, %ecx
    jmp loop
loop:
    call h
    inc %ecx
    cmp $1500, %ecx
    jne 2f
    movb $5, h_imm
2:  cmp $3000, %ecx
    jne loop
    mov %esi, %eax
    save 0
    halt

    .balign 4096
h:  .byte 0x83, 0xc6            # add $imm8, %esi
h_imm:
    .byte 1
    ret
""")

# The loop body ends in a jmp whose displacement (the block's last byte)
# is rewritten at turn patch_at; a first run with patch_at 0 never does.
PATCHED_LOOP = assemble(r"""
_start:
    xor %esi, %esi
    xor %ecx, %ecx
    mov patch_at, %edx          # its page in the TLB: no restart (and no interpreter) in the loop
    jmp loop                    # loop's first run installs the region there
loop:
    inc %ecx
    cmp $3000, %ecx
    je done
    cmp patch_at, %ecx          # 0: never
    jne body
    movb $0, jbyte              # from now on the jmp below falls through to alt
body:
    add $1, %esi
    .byte 0xeb                  # jmp loop (rel8): the block's last byte is ...
jbyte:
    .byte loop - (jbyte + 1)    # ... this displacement
alt:
    add $100, %esi
    jmp loop
done:
    mov %esi, %eax
    save 0
    halt

    .data
    .balign 4096                # not in the code's page: both runs' code pages are the same
patch_at:
    .long 0
""")


def _run(monkeypatch, prog, engine: str, n: int, words: dict | None = None):
    """out[0:n] and the instructions run; words: {symbol: value} stored
    into the env's memory before it runs."""
    monkeypatch.setenv("JMIG_ENGINE", engine)
    m = Machine()
    p = m.spawn(prog)
    for name, value in (words or {}).items():
        p.env.aspace.write(prog.addr(name), value.to_bytes(4, "little"))
    res = m.run(1_000_000)
    return p.outs(n), res.executed


@pytest.mark.parametrize("engine", ["interp", "blocks"])
def test_an_instruction_at_a_pages_last_byte_is_itself(monkeypatch, engine):
    assert LAST_BYTE.addr("f") & 0xFFF == 0xFFF
    monkeypatch.setenv("JMIG_ENGINE", engine)
    m = Machine()
    p = m.spawn(LAST_BYTE)
    m.run(1_000_000)
    assert p.outs(2) == [100, 200]
    # Decoded once and kept at its offset in its frame's dict (the
    # interpreter ran it; the translator ran it until its block was hot).
    f = LAST_BYTE.addr("f")
    kept = p.env.aspace.icache[f >> 12].get(0xFFF)
    assert kept is not None and kept.insn.addr == f


def test_a_change_in_a_regions_second_page_forgets_its_template(monkeypatch):
    translate._COMPILED.clear()
    translate._BY_HEAD.clear()
    want = _run(monkeypatch, PATCHED_CALLEE, "interp", 1)
    assert want[0] == [1500 * 1 + 1500 * 5]
    assert _run(monkeypatch, PATCHED_CALLEE, "blocks", 1) == want


def test_forked_children_install_their_parents_regions_without_planning(monkeypatch):
    """forktree: 15 envs running the same code.  Its regions are planned a
    few times (the first env's hot code); every other install in a child
    is the template its ancestor's frames hold (a fork shares the frames)."""
    translate._COMPILED.clear()
    translate._BY_HEAD.clear()
    planned, templates = [], []
    build, place = translate.build, core._place

    def counting_build(*args, **kw):
        planned.append(args[1])
        return build(*args, **kw)

    def counting_place(m, fn, static, frames=None):
        if frames is not None:
            templates.append(fn.plan.entry)
        return place(m, fn, static, frames)

    monkeypatch.setattr(translate, "build", counting_build)
    monkeypatch.setattr(core, "_place", counting_place)
    out = run_program(programs.load("forktree"), ["forktree"], "forktree", engine="blocks")
    assert "I am '111'" in out.console
    assert len(planned) <= 8, planned
    assert len(templates) >= 40, templates


def test_a_store_over_the_last_byte_of_a_reused_region_drops_it(monkeypatch):
    want = _run(monkeypatch, PATCHED_LOOP, "interp", 1, {"patch_at": 1500})
    assert want[0] == [1499 + 1500 * 101]            # the patch took effect at turn 1500
    translate._COMPILED.clear()
    translate._BY_HEAD.clear()
    unpatched = _run(monkeypatch, PATCHED_LOOP, "blocks", 1, {"patch_at": 0})
    assert unpatched[0] == [2999]                    # compiles the loop
    assert _run(monkeypatch, PATCHED_LOOP, "blocks", 1, {"patch_at": 1500}) == want

"""A region compiled in one kernel and installed in another.

A second run of a program in the same process (a node running it again, a
benchmark's second run) installs the regions an earlier run compiled as
soon as their first block runs, without interpreting or decoding their
code (cpu._reuse, translate.known_regions).  Installing marks the bytes
of the frames that hold compiled code, so that a store over any of them
drops the region: here the store is over the last byte of a block, the
displacement of the `jmp` that ends the loop's body, in a run that
installed the loop from a run that never stored there."""
from __future__ import annotations

from jmig.kernel.x86 import translate

from .asm import Machine, assemble

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


def _run(monkeypatch, engine: str, patch_at: int) -> tuple[int, int]:
    monkeypatch.setenv("JMIG_ENGINE", engine)
    m = Machine()
    p = m.spawn(PATCHED_LOOP)
    p.env.aspace.write(PATCHED_LOOP.addr("patch_at"), patch_at.to_bytes(4, "little"))
    res = m.run(1_000_000)
    return p.out(0), res.executed


def test_a_store_over_the_last_byte_of_a_reused_region_drops_it(monkeypatch):
    want = _run(monkeypatch, "interp", 1500)
    assert want[0] == 1499 + 1500 * 101              # the patch took effect at turn 1500
    translate._COMPILED.clear()
    translate._BY_HEAD.clear()
    assert _run(monkeypatch, "blocks", 0)[0] == 2999     # compiles the loop, unpatched
    assert _run(monkeypatch, "blocks", 1500) == want     # installs that loop, then patches it

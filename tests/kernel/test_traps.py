"""Traps as JOS handles them (trap.py): an unhandled trap prints JOS's
print_trapframe, every register in its place, then destroys the env; a
page fault goes to the env's upcall on the exception stack -- below the
faulting esp when the fault happened on that stack already (JOS's
recursive case, whose bounds are the stack's first and last byte) -- and
waits when that stack page is still on another node."""
from jmig.kernel import events as ev
from jmig.kernel.memlayout import PGSIZE, UXSTACKTOP

from .asm import Machine, assemble, needs_binutils
from .test_remote_pages import moved_with_remote

pytestmark = needs_binutils

REGS = {"eax": 0xA0A0A0A0, "ecx": 0xC1C1C1C1, "edx": 0xD2D2D2D2, "ebx": 0xB3B3B3B3,
        "esp": 0xEEBFD000, "ebp": 0xE5E5E5E5, "esi": 0x5E5E5E5E, "edi": 0xD7D7D7D7}

BREAK = "_start:\n" + "".join(f"    mov ${v:#x}, %{r}\n" for r, v in REGS.items()) + """
trap_here:
    int3
    jmp .
"""


def test_an_unhandled_trap_prints_the_trapframe_as_jos_does_and_destroys_the_env():
    m = Machine()
    m.spawn(assemble("_start:\n    halt\n"))                      # slot 0
    p = m.spawn(assemble(BREAK))                                    # slot 1
    eflags = p.env.cpu.eflags
    m.run()
    assert not p.alive
    eip = p.prog.addr("trap_here") + 1                               # int3 is a trap: after it
    r = REGS
    frame = [
        "TRAP frame at 0xf030007c from CPU 0",                      # envs[1] at ENVS_KVA
        f"  edi  0x{r['edi']:08x}", f"  esi  0x{r['esi']:08x}", f"  ebp  0x{r['ebp']:08x}",
        "  oesp 0xefffffdc", f"  ebx  0x{r['ebx']:08x}", f"  edx  0x{r['edx']:08x}",
        f"  ecx  0x{r['ecx']:08x}", f"  eax  0x{r['eax']:08x}",
        "  es   0x----0023", "  ds   0x----0023",
        "  trap 0x00000003 Breakpoint", "  err  0x00000000", f"  eip  0x{eip:08x}",
        "  cs   0x----001b", f"  flag 0x{eflags:08x}", f"  esp  0x{r['esp']:08x}",
        "  ss   0x----0023",
    ]
    ls = m.lines
    start = ls.index(frame[0])
    assert ls[start:start + len(frame)] == frame
    assert ev.EnvFaulted(p.envid, 3, 0, 0, eip) in m.events
    assert ev.EnvDestroyed(p.envid, "trap 3 (Breakpoint)") in m.events


def fault_on_esp(esp: int) -> str:
    """A program whose read of address 0 faults with esp = `esp` and the
    other registers as in REGS; its handler stores the esp it was given
    (the UTrapframe's address) and the fault va from the frame, then halts."""
    return f"""
    _start:
        sys SYS_page_alloc, $0, $UXSTACKTOP-PGSIZE, $PTE_U|PTE_P|PTE_W
        sys SYS_env_set_pgfault_upcall, $0, $handler
        mov ${esp:#x}, %esp
""" + "".join(f"        mov ${v:#x}, %{r}\n" for r, v in REGS.items() if r != "esp") + """
        mov 0, %eax
        jmp .
    handler:
        mov %esp, out
        mov (%esp), %eax
        save 1
        halt
    """


def test_a_fault_with_esp_on_the_exception_stack_nests_below_it_up_to_its_last_byte():
    # The last byte of the exception stack is on it: the frame goes below
    # esp with a word of scratch space; at UXSTACKTOP itself esp is not on
    # it, and the frame goes at the top.
    for esp, frame in [(UXSTACKTOP - 1, UXSTACKTOP - 1 - 52 - 4),
                       (UXSTACKTOP - PGSIZE + 0x100, UXSTACKTOP - PGSIZE + 0x100 - 56),
                       (UXSTACKTOP, UXSTACKTOP - 52)]:
        m = Machine()
        p = m.spawn(assemble(fault_on_esp(esp)))
        m.run()
        assert p.alive, (hex(esp), m.console)
        assert (p.out(0) & 0xFFFFFFFF, p.out(1)) == (frame, 0), hex(esp)
        # utf_fault_va, utf_err, utf_regs (edi esi ebp oesp ebx edx ecx eax), utf_esp
        assert [p.word(frame + 4 * i) for i in range(10)] == [
            0, 4, REGS["edi"], REGS["esi"], REGS["ebp"], esp, REGS["ebx"], REGS["edx"],
            REGS["ecx"], REGS["eax"]]
        assert p.word(frame + 48) == esp


def test_a_nested_fault_at_the_bottom_of_the_exception_stack_overflows_it():
    m = Machine()
    p = m.spawn(assemble(fault_on_esp(UXSTACKTOP - PGSIZE)))
    m.run()
    assert not p.alive
    bad = UXSTACKTOP - PGSIZE - 56
    assert f"[{p.envid:08x}] user_mem_check assertion failure for va {bad:08x}" in m.lines


STOP_THEN_FAULT = """
_start:
    sys SYS_page_alloc, $0, $UXSTACKTOP-PGSIZE, $PTE_U|PTE_P|PTE_W
    sys SYS_env_set_pgfault_upcall, $0, $handler
    sys SYS_env_set_status, $0, $ENV_NOT_RUNNABLE
    sys SYS_yield
    mov 0, %eax
    jmp .
handler:
    mov (%esp), %eax
    save 0
    movl $1, out+4
    halt
"""


def test_a_fault_whose_exception_stack_is_on_another_node_waits_for_that_page():
    m = Machine()
    p = m.spawn(assemble(STOP_THEN_FAULT))
    m.run()
    xstack = UXSTACKTOP - PGSIZE
    e, remote = moved_with_remote(m, p.envid, {xstack})
    m.run(100_000)
    assert m.of_type(ev.EnvBlocked) == [ev.EnvBlocked(e.env_id, e.env_id, xstack)]
    q = m.proc(e.env_id, p.prog)
    assert q.out(1) == 0                                             # the handler has not run
    assert m.k.install_page(e.env_id, xstack, remote[xstack])
    m.run()
    assert q.outs(2) == [0, 1]
    assert len(m.of_type(ev.EnvBlocked)) == 1


def test_a_handled_page_fault_keeps_the_cpu_for_the_rest_of_the_slice():
    # JOS's page_fault_handler returns to the env at its upcall (env_run of
    # curenv), without the scheduler: another runnable env waits its turn.
    m = Machine(slice=1000)
    a = m.spawn(assemble("""
    _start:
        sys SYS_page_alloc, $0, $UXSTACKTOP-PGSIZE, $PTE_U|PTE_P|PTE_W
        sys SYS_env_set_pgfault_upcall, $0, $handler
        mov 0, %eax
    handler:
        movl $1, out+4
    spin:
        addl $1, out
        jmp spin
    """))
    b = m.spawn(assemble("""
    _start:
        addl $1, out
        jmp _start
    """))
    assert m.k.run(1000).executed == 1000
    assert a.out(1) == 1 and a.out(0) > 400
    assert (a.env.runs, b.env.runs, b.out(0)) == (1, 0, 0)

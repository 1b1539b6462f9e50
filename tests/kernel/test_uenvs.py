"""envs[] at UENVS byte for byte, as user code reads it (JOS's struct Env:
its Trapframe, then env_link, env_id ... env_ipc_perm): a slot never
used reads as JOS's zeroed envs[] (but for the selectors and eflags a
trapframe always holds, and the free list's link); a live env's selectors
have zero padding."""
import struct

from jmig.kernel.env import ENV_SIZE, ENVS_KVA
from jmig.kernel.memlayout import UENVS

from .asm import Machine, assemble, needs_binutils

pytestmark = needs_binutils

TF = struct.Struct("<8I HH HH II I HH I I HH")      # 68 bytes
REST = struct.Struct("<IIIIIIIIIB3xIIII")           # 56 bytes

HALT = "_start:\n    halt\n"


def env_struct(p, index):
    raw = p.read(UENVS + index * ENV_SIZE, ENV_SIZE)
    return TF.unpack_from(raw, 0), REST.unpack_from(raw, TF.size)


def test_a_slot_never_used_reads_as_a_zeroed_env_on_the_free_list():
    m = Machine()
    p = m.spawn(assemble(HALT))                      # slot 0; the free list starts at 1
    m.run()
    tf, rest = env_struct(p, 5)
    assert tf == (0, 0, 0, 0, 0, 0, 0, 0,            # tf_regs
                  0x23, 0, 0x23, 0,                  # tf_es, tf_ds and their padding
                  0, 0, 0,                           # tf_trapno, tf_err, tf_eip
                  0x1B, 0, 0x202, 0, 0x23, 0)        # tf_cs, eflags (IF), tf_esp, tf_ss
    link = ENVS_KVA + 6 * ENV_SIZE                   # env_link: the next free slot
    # env_id, parent, type, status (FREE), runs, cpunum, pgdir, upcall,
    # ipc_recving, ipc_dstva, ipc_value, ipc_from, ipc_perm
    assert rest == (link,) + (0,) * 13


def test_a_live_env_reads_with_its_ids_and_zero_padding_after_each_selector():
    m = Machine()
    p = m.spawn(assemble(HALT))
    m.run()
    tf, rest = env_struct(p, 0)
    assert tf[8:12] == (0x23, 0, 0x23, 0)
    assert tf[15:17] == (0x1B, 0) and tf[19:] == (0x23, 0)
    assert rest[:6] == (0, p.envid, 0, 0, 4, 1)      # link, id, parent, type, NOT_RUNNABLE, runs


def test_an_env_stopped_in_a_system_call_shows_trap_48_in_its_trapframe():
    # tf_trapno of an env that entered the kernel by int $0x30 (halt ends
    # in sys_yield), as JOS's trap() records it: at UENVS, and in the
    # header a snapshot carries to another node.
    m = Machine()
    p = m.spawn(assemble(HALT))
    m.run()
    tf, _ = env_struct(p, 0)
    assert (tf[12], tf[13]) == (48, 0)                   # tf_trapno, tf_err
    assert (m.k.header(p.envid).trapno, m.k.header(p.envid).err) == (48, 0)


def test_upages_reads_that_end_in_the_next_entry_give_every_byte():
    # sys_cputs of 4 bytes from UPAGES + 5 (pages[0]'s pp_ref high byte
    # and padding, then pages[1]'s first byte): 4 bytes reach the console.
    m = Machine()
    p = m.spawn(assemble("""
    _start:
        sys SYS_cputs, $UPAGES+5, $4
        sys SYS_cputs, $UPAGES+8*3+4, $9
        halt
    """))
    m.run()
    assert p.alive
    ref = m.k.phys.ref
    want = (bytes([ref[0] >> 8 & 0xFF, 0, 0, 0])
            + ref[3].to_bytes(2, "little") + bytes(6) + bytes([ref[4] & 0xFF]))
    assert m.user_output(p.envid).encode("latin-1") == want


def test_iter_envs_gives_the_live_envs_only():
    m = Machine()
    a = m.spawn(assemble(HALT))
    b = m.spawn(assemble(HALT))
    m.run()
    assert [e.env_id for e in m.k.iter_envs()] == [a.envid, b.envid]
    m.k.kill(a.envid)
    assert [e.env_id for e in m.k.iter_envs()] == [b.envid]



def test_an_env_yielding_in_a_hot_loop_shows_trap_48_too():
    # Once the loop is compiled, the block translator runs its int $0x30
    # without leaving the region (the yield then ends the env's turn): the
    # trapframe records the system call all the same.
    m = Machine()
    p = m.spawn(assemble("""
    _start:
        sys SYS_yield
        jmp _start
    """))
    m.run(30_000)
    assert p.alive and p.env.runs > 1000
    h = m.k.header(p.envid)
    assert (h.trapno, h.err) == (48, 0)
    tf, _ = env_struct(p, 0)
    assert (tf[12], tf[13]) == (48, 0)


def test_a_stopped_env_shows_each_of_its_registers_where_pushregs_has_it():
    # JOS's PushRegs order: edi, esi, ebp, oesp (0), ebx, edx, ecx, eax;
    # then esp in the trapframe's tail.  env_pgdir is the page directory's
    # kernel virtual address (KERNBASE + its physical address).
    m = Machine()
    p = m.spawn(assemble("""
_start:
    sys SYS_env_set_status, $0, $ENV_NOT_RUNNABLE
    mov $0x11111111, %ecx
    mov $0x22222222, %edx
    mov $0x33333333, %ebx
    mov $0x55555555, %ebp
    mov $0x66666666, %esi
    mov $0x77777777, %edi
    mov $0xEEBFD000, %esp
    sys SYS_yield
    jmp .
"""))
    m.run()
    tf, rest = env_struct(p, 0)
    assert tf[:7] == (0x77777777, 0x66666666, 0x55555555, 0, 0x33333333, 0x22222222,
                      0x11111111)
    assert tf[18] == 0xEEBFD000                       # tf_esp
    pfn = m.k.get_env(p.envid).aspace.pgdir_pfn
    assert rest[7] == 0xF0000000 + pfn * 4096 and pfn > 0

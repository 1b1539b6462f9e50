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

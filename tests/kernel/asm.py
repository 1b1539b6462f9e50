"""Tiny JOS user programs written in GNU assembler, for kernel tests.

`assemble(source)` runs `as --32` and `ld -m elf_i386 -N -Ttext=0x800020
-e _start` and returns a Program: the real ELF bytes and its symbols.  The
source is prefixed with PRELUDE (JOS constants and a few macros) and must
define `_start`.  Results are cached per source text, in memory and in
$TMPDIR/jmig-asm-$UID (keyed by source, flags and binutils version), so a
program is assembled once, not once per test or per run.

`-N` gives one loadable segment whose file offset (0x54) is not page
aligned, and no segment for the ELF headers (ld's default would put one at
PFTEMP, 0x7ff000).

A program reports what it saw by storing words into `out[]`, a page of its
own (the macro `save SLOT` stores eax into out[SLOT]), or by SYS_cputs, and
stops with `halt` (env_set_status(0, NOT_RUNNABLE) then yield: the env
keeps its memory so the test can read it) or `exit` (env_destroy(0)).

    prog = assemble('''
        _start:
            sys SYS_page_alloc, $0, $0x500000, $PTE_U|PTE_P
            save 0
            halt
    ''')
    m = Machine()
    p = m.spawn(prog)
    m.run()
    assert p.out(0) == 0

Registers in `sys`: the macro loads a1..a5 into edx, ecx, ebx, edi, esi in
that order, so an argument that names one of those registers must not be
one already overwritten.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import attrs
import pytest

from jmig.kernel import events as ev
from jmig.kernel.env import ENV_FREE, ENVX, Env
from jmig.kernel.kernel import DEFAULT_SLICE, Kernel, RunResult
from jmig.kernel.runner import VirtualClock

HAVE_BINUTILS = shutil.which("as") is not None and shutil.which("ld") is not None
needs_binutils = pytest.mark.skipif(not HAVE_BINUTILS, reason="needs GNU as and ld (binutils)")

OUT_WORDS = 256

PRELUDE = r"""
    .set PGSIZE, 0x1000
    .set UTEMP, 0x400000
    .set PFTEMP, 0x7ff000
    .set UTEXT, 0x800000
    .set USTACKTOP, 0xeebfe000
    .set UXSTACKTOP, 0xeec00000
    .set UTOP, 0xeec00000
    .set UENVS, 0xeec00000
    .set UPAGES, 0xef000000
    .set UVPT, 0xef400000
    .set UVPD, 0xef7bd000
    .set ULIM, 0xef800000
    .set PTE_P, 0x1
    .set PTE_W, 0x2
    .set PTE_U, 0x4
    .set PTE_SHARE, 0x400
    .set PTE_COW, 0x800
    .set ENV_SIZE, 0x7c
    .set ENV_ID, 72
    .set ENV_PARENT_ID, 76
    .set ENV_STATUS, 84
    .set ENV_RUNNABLE, 2
    .set ENV_NOT_RUNNABLE, 4
    .set SYS_cputs, 0
    .set SYS_cgetc, 1
    .set SYS_getenvid, 2
    .set SYS_env_destroy, 3
    .set SYS_page_alloc, 4
    .set SYS_page_map, 5
    .set SYS_page_unmap, 6
    .set SYS_exofork, 7
    .set SYS_env_set_status, 8
    .set SYS_env_set_pgfault_upcall, 9
    .set SYS_yield, 10
    .set SYS_ipc_try_send, 11
    .set SYS_ipc_recv, 12
    .set SYS_time_msec, 32
    .set SYS_sleep_msec, 33

    # sys NUM [a1 [a2 [a3 [a4 [a5]]]]]: eax = NUM, args in edx ecx ebx edi esi.
    .macro sys num, a1, a2, a3, a4, a5
    .ifnb \a1
    mov \a1, %edx
    .endif
    .ifnb \a2
    mov \a2, %ecx
    .endif
    .ifnb \a3
    mov \a3, %ebx
    .endif
    .ifnb \a4
    mov \a4, %edi
    .endif
    .ifnb \a5
    mov \a5, %esi
    .endif
    mov $\num, %eax
    int $0x30
    .endm

    # save SLOT: out[SLOT] = eax
    .macro save slot
    mov %eax, out + 4 * (\slot)
    .endm

    # halt: stop for good, keeping the address space for the test to read.
    .macro halt
    sys SYS_env_set_status, $0, $ENV_NOT_RUNNABLE
    sys SYS_yield
    jmp .
    .endm

    # exit: env_destroy(0), as the JOS library's exit().
    .macro exit
    sys SYS_env_destroy, $0
    jmp .
    .endm

    .text
    .globl _start
"""

EPILOGUE = rf"""
    .data
    .balign 0x1000
    .globl out
out:
    .fill {OUT_WORDS}, 4, 0
"""


@attrs.frozen
class Program:
    elf: bytes
    symbols: dict

    def addr(self, name: str) -> int:
        return self.symbols[name]

    @property
    def out_va(self) -> int:
        return self.symbols["out"]


_cache: dict[str, Program] = {}
_flat_cache: dict[tuple[str, int], bytes] = {}
_tool_id: str | None = None


def _cache_dir() -> Path:
    """A per-user cache of built programs, kept between test runs; entries
    are keyed by the source, the link flags and the binutils version."""
    d = Path(tempfile.gettempdir()) / f"jmig-asm-{os.getuid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    return d


def _tools() -> str:
    global _tool_id
    if _tool_id is None:
        r = subprocess.run(["as", "--version"], capture_output=True, text=True)
        _tool_id = r.stdout.splitlines()[0] if r.stdout else "as"
    return _tool_id


def _run(cmd: list[str], what: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"{what} failed ({' '.join(cmd)}):\n{r.stderr}")


def _build(text: str, ldflags: list[str]) -> bytes:
    key = hashlib.sha256("\0".join([_tools(), *ldflags, text]).encode()).hexdigest()[:32]
    out = _cache_dir() / key
    if not out.exists():
        with tempfile.TemporaryDirectory(dir=_cache_dir()) as work:
            src, obj, exe = Path(work, "p.s"), Path(work, "p.o"), Path(work, "p.out")
            src.write_text(text)
            _run(["as", "--32", "-o", str(obj), str(src)], "as")
            _run(["ld", "-m", "elf_i386", "-N", "--no-warn-rwx-segments", *ldflags,
                  "-o", str(exe), str(obj)], "ld")
            os.replace(exe, out)           # atomic: concurrent runs see all or nothing
    return out.read_bytes()


def elf_symbols(elf: bytes) -> dict:
    """Name -> value for every named symbol in a 32-bit ELF's .symtab."""
    shoff, = struct.unpack_from("<I", elf, 32)
    shentsize, shnum = struct.unpack_from("<HH", elf, 46)
    sections = [struct.unpack_from("<10I", elf, shoff + i * shentsize) for i in range(shnum)]
    syms = {}
    for sh in sections:
        if sh[1] != 2:                     # SHT_SYMTAB
            continue
        strtab = sections[sh[6]]           # sh_link
        for off in range(sh[4], sh[4] + sh[5], 16):
            name, value = struct.unpack_from("<II", elf, off)
            if name:
                start = strtab[4] + name
                syms[elf[start:elf.index(b"\0", start)].decode()] = value
    return syms


def assemble(source: str) -> Program:
    """Assemble and link a user program (PRELUDE + source + the out page)."""
    if not HAVE_BINUTILS:
        pytest.skip("needs GNU as and ld (binutils)")
    prog = _cache.get(source)
    if prog is None:
        elf = _build(PRELUDE + source + EPILOGUE, ["-Ttext=0x800020", "-e", "_start"])
        prog = _cache[source] = Program(elf, elf_symbols(elf))
    return prog


def flat(source: str, org: int) -> bytes:
    """Raw machine code for `source` (PRELUDE included) linked at `org`:
    for hand-built ELFs."""
    if not HAVE_BINUTILS:
        pytest.skip("needs GNU as and ld (binutils)")
    got = _flat_cache.get((source, org))
    if got is None:
        got = _flat_cache[(source, org)] = _build(
            PRELUDE + source, [f"-Ttext={org:#x}", "-e", "_start", "--oformat", "binary"])
    return got


def signed(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


REG_NAMES = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")


@attrs.define
class Proc:
    """An env started by Machine.spawn, with the program it runs."""
    m: "Machine"
    env: Env
    envid: int
    prog: Program | None

    @property
    def alive(self) -> bool:
        return self.env.status != ENV_FREE and self.env.env_id == self.envid

    @property
    def regs(self) -> dict:
        return dict(zip(REG_NAMES, self.env.cpu.r))

    def read(self, va: int, n: int) -> bytes:
        """Bytes as the env itself would read them (through its MMU)."""
        assert self.alive, f"env {self.envid:08x} is gone"
        return self.env.aspace.read(va, n)

    def word(self, va: int) -> int:
        return int.from_bytes(self.read(va, 4), "little")

    def out(self, slot: int) -> int:
        """out[slot] as a signed int (negative values are -E_* codes)."""
        return signed(self.word(self.prog.out_va + 4 * slot))

    def outs(self, n: int) -> list[int]:
        return [self.out(i) for i in range(n)]

    def pte(self, va: int) -> int | None:
        return self.env.aspace.pte.get(va >> 12)


MACHINE_MEMORY = 4 << 20      # 1024 frames: plenty, and quick to set up (64 MB is not)


class Machine:
    """A fresh Kernel (virtual clock by default) and what it printed."""

    def __init__(self, memory: int = MACHINE_MEMORY, ncpus: int = 1, clock=None,
                 start_ms: float = 0.0, slice: int = DEFAULT_SLICE):
        self.clock = clock if clock is not None else VirtualClock(start_ms)
        self.k = Kernel(memory=memory, ncpus=ncpus, clock=self.clock, slice=slice)
        self.events: list = []

    def spawn(self, prog: Program | bytes, argv: list[str] | None = None, name: str = "asm",
              **kw) -> Proc:
        elf = prog.elf if isinstance(prog, Program) else prog
        e = self.k.env_create(elf, argv, name=name, **kw)
        self.drain()
        return Proc(self, e, e.env_id, prog if isinstance(prog, Program) else None)

    def proc(self, envid: int, prog: Program | None = None) -> Proc:
        """A handle on an env the programs created (e.g. an exofork child)."""
        e = self.k.envs[ENVX(envid)]
        assert e.env_id == envid and e.status != ENV_FREE, f"no env {envid:08x}"
        return Proc(self, e, envid, prog)

    def drain(self) -> list:
        got = self.k.take_events()
        self.events += got
        return got

    def run(self, budget: int = 1_000_000) -> RunResult:
        """Run until nothing is runnable (sleepers do not wake by themselves)
        or `budget` instructions have run."""
        total = 0
        while True:
            r = self.k.run(budget - total)
            total += r.executed
            self.drain()
            if r.idle or total >= budget:
                return RunResult(total, r.idle, r.next_wake)

    @property
    def console(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, ev.Console))

    @property
    def lines(self) -> list[str]:
        return self.console.splitlines()

    def user_output(self, envid: int) -> str:
        """What one env printed with sys_cputs."""
        return "".join(e.text for e in self.events
                       if isinstance(e, ev.Console) and e.envid == envid)

    def of_type(self, cls) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    def all_frames_free(self) -> bool:
        return self.k.phys.nfree == self.k.phys.nframes - 1

    def kill_all(self) -> None:
        for e in list(self.k.iter_envs()):
            self.k.kill(e.env_id)
        self.drain()

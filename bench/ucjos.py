"""Unicorn as a reference CPU for one JOS env, for benchmarks.

Loads a JOS ELF into a Unicorn instance laid out as jmig's kernel lays it
out (segments, one stack page with argc/argv, USTACKTOP), and answers the
system calls a single-env program makes (cputs, getenvid, time, sleep,
page_alloc, env_destroy) so that it runs to completion.  Only for
benchmarks: no fork, IPC or page faults.
"""
from __future__ import annotations

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32, Uc, UcError
from unicorn.x86_const import (UC_X86_REG_EAX, UC_X86_REG_ECX,
                               UC_X86_REG_EDX, UC_X86_REG_EFLAGS, UC_X86_REG_EIP,
                               UC_X86_REG_ESP)

from jmig.kernel.elf import parse_elf
from jmig.kernel.memlayout import PGSIZE, USTACKTOP, UXSTACKTOP

ENVID = 0x1000


class UnicornJos:
    def __init__(self, elf: bytes, argv: list[str]):
        self.uc = uc = Uc(UC_ARCH_X86, UC_MODE_32)
        image = parse_elf(elf)
        mapped = set()
        for seg in image.segments:
            for va in range(seg.vaddr & ~0xFFF, seg.vaddr + seg.memsz, PGSIZE):
                if va not in mapped:
                    uc.mem_map(va, PGSIZE)
                    mapped.add(va)
            uc.mem_write(seg.vaddr, elf[seg.offset:seg.offset + seg.filesz])
        uc.mem_map(USTACKTOP - PGSIZE, PGSIZE)
        uc.mem_map(UXSTACKTOP - PGSIZE, PGSIZE)
        # argc/argv as jmig lays them out.
        top = USTACKTOP
        ptrs = []
        for a in argv:
            b = a.encode() + b"\0"
            top -= len(b)
            uc.mem_write(top, b)
            ptrs.append(top)
        top &= ~3
        arr = top - 4 * (len(ptrs) + 1)
        uc.mem_write(arr, b"".join(p.to_bytes(4, "little") for p in ptrs) + bytes(4))
        sp = arr - 8
        uc.mem_write(sp, len(argv).to_bytes(4, "little") + arr.to_bytes(4, "little"))
        uc.reg_write(UC_X86_REG_ESP, sp)
        uc.reg_write(UC_X86_REG_EFLAGS, 0x202)
        self.entry = image.entry
        self.console: list[str] = []
        self.exited = False
        self.heap: set[int] = set()
        uc.hook_add(UC_HOOK_INTR, self._intr)

    def _intr(self, uc, intno, _):
        if intno != 0x30:
            uc.emu_stop()
            self.exited = True
            return
        num = uc.reg_read(UC_X86_REG_EAX)
        a1 = uc.reg_read(UC_X86_REG_EDX)
        a2 = uc.reg_read(UC_X86_REG_ECX)
        ret = 0
        if num == 0:                                   # cputs
            self.console.append(bytes(uc.mem_read(a1, a2)).decode("latin-1"))
        elif num == 2:                                 # getenvid
            ret = ENVID
        elif num == 3:                                 # env_destroy
            self.exited = True
            uc.emu_stop()
        elif num == 4:                                 # page_alloc(envid, va, perm)
            va = a2
            if va not in self.heap:
                uc.mem_map(va, PGSIZE)
                self.heap.add(va)
        uc.reg_write(UC_X86_REG_EAX, ret & 0xFFFFFFFF)

    def run(self) -> str:
        eip = self.entry
        while not self.exited:
            try:
                self.uc.emu_start(eip, 0xFFFFFFFF)
            except UcError as exc:
                raise RuntimeError(f"unicorn stopped at {self.uc.reg_read(UC_X86_REG_EIP):#x}: "
                                   f"{exc}") from None
            eip = self.uc.reg_read(UC_X86_REG_EIP)
        return "".join(self.console)

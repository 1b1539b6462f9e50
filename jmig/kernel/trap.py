"""Traps: page faults to the env's upcall, everything else printed as
JOS's print_trapframe prints it, then the env destroyed.  A mixin of
Kernel (kernel.py)."""
from __future__ import annotations

import struct

from . import events as ev
from .env import ENVS_KVA, ENV_SIZE, Blocked, Env
from .memlayout import FEC_PR, FEC_U, FEC_WR, PGSIZE, PTE_W, T_PGFLT, UXSTACKTOP

UTF_SIZE = 52
_UTF = struct.Struct("<13I")       # struct UTrapframe: fault va, err, regs, eip, eflags, esp

TRAP_NAMES = {
    0: "Divide error", 1: "Debug", 2: "Non-Maskable Interrupt", 3: "Breakpoint",
    4: "Overflow", 5: "BOUND Range Exceeded", 6: "Invalid Opcode",
    7: "Device Not Available", 8: "Double Fault", 9: "Coprocessor Segment Overrun",
    10: "Invalid TSS", 11: "Segment Not Present", 12: "Stack Fault",
    13: "General Protection", 14: "Page Fault", 15: "(unknown trap)",
    16: "x87 FPU Floating-Point Error", 17: "Alignment Check", 18: "Machine-Check",
    19: "SIMD Floating-Point Exception", 48: "System call",
}



class TrapMixin:
    def _trap(self, e: Env, stop) -> bool:
        """Handle a fault or trap; True if e may keep running now."""
        e.trapno, e.err = stop.trapno, stop.err
        if stop.trapno == T_PGFLT:
            return self._page_fault(e, stop.err, stop.va)
        self._print_trapframe(e, stop.trapno, stop.err, None)
        self.events.append(ev.EnvFaulted(e.env_id, stop.trapno, stop.err, 0, e.cpu.eip))
        self.env_destroy(e, e.env_id, f"trap {stop.trapno} ({TRAP_NAMES.get(stop.trapno, '?')})")
        return False

    def _page_fault(self, e: Env, err: int, va: int) -> bool:
        if not e.pgfault_upcall:
            self.cprintf(f"[{e.env_id:08x}] user fault va {va:08x} ip {e.cpu.eip:08x}\n")
            self._print_trapframe(e, T_PGFLT, err, va)
            self.events.append(ev.EnvFaulted(e.env_id, T_PGFLT, err, va, e.cpu.eip))
            self.env_destroy(e, e.env_id, f"page fault at {va:08x}")
            return False
        c = e.cpu
        esp = c.r[4]
        if UXSTACKTOP - PGSIZE <= esp <= UXSTACKTOP - 1:
            utf = esp - UTF_SIZE - 4
        else:
            utf = UXSTACKTOP - UTF_SIZE
        if not self.user_mem_assert(e, utf, UTF_SIZE, PTE_W):
            return False
        try:
            self.need_local(e, utf, UTF_SIZE)
        except Blocked as b:
            self._block(e, b.owner, b.va)     # the instruction faults again later
            return False
        r = c.r
        e.aspace.write(utf, _UTF.pack(va, err, r[7], r[6], r[5], r[4], r[3], r[2], r[1], r[0],
                                      c.eip, c.eflags, esp))
        c.eip = e.pgfault_upcall
        r[4] = utf
        return True

    def _print_trapframe(self, e: Env, trapno: int, err: int, cr2: int | None) -> None:
        c = e.cpu
        r = c.r
        name = TRAP_NAMES.get(trapno, "(unknown trap)")
        lines = [f"TRAP frame at 0x{ENVS_KVA + e.index * ENV_SIZE:x} from CPU {e.cpunum}",
                 f"  edi  0x{r[7]:08x}", f"  esi  0x{r[6]:08x}", f"  ebp  0x{r[5]:08x}",
                 "  oesp 0xefffffdc", f"  ebx  0x{r[3]:08x}", f"  edx  0x{r[2]:08x}",
                 f"  ecx  0x{r[1]:08x}", f"  eax  0x{r[0]:08x}",
                 "  es   0x----0023", "  ds   0x----0023",
                 f"  trap 0x{trapno:08x} {name}"]
        if cr2 is not None:
            lines.append(f"  cr2  0x{cr2:08x}")
        errline = f"  err  0x{err:08x}"
        if trapno == T_PGFLT:
            errline += " [{}, {}, {}]".format(
                "user" if err & FEC_U else "kernel",
                "write" if err & FEC_WR else "read",
                "protection" if err & FEC_PR else "not-present")
        lines += [errline, f"  eip  0x{c.eip:08x}", "  cs   0x----001b",
                  f"  flag 0x{c.eflags:08x}", f"  esp  0x{r[4]:08x}", "  ss   0x----0023"]
        self.cprintf("\n".join(lines) + "\n")


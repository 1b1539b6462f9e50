"""Core speed: guest instructions per second of jmig's interpreter and block
translator, next to Unicorn's rate on the same code in the same run.

    python bench/cpu.py [--json FILE] [--quick]

Rows:
  - tight loop (inc, cmp, jne: 3 instructions per iteration): Unicorn runs
    it for at least a second (the iteration count doubles until it does),
    and so does the translator, on the same code;
  - printbench (snprintf-heavy, bundled): the translator runs it on
    jmig's kernel; Unicorn runs the same program with the same arguments
    again and again (a fresh instance each time, bench/ucjos.py answering
    its system calls) until a second has passed, so its rate is over at
    least a second of the same instruction stream;
  - programs that need a kernel (fork, IPC, page faults, yields), which
    Unicorn cannot run: forktree, pingpong, primes, and the student-style
    scantree (forktree with lib/forkscan.c's fork, which reads uvpd/uvpt for
    every page below USTACKTOP) and scansched (stresssched with forkscan;
    children yield thousands of times).  Their reference is jmig's
    interpreter (on the first few million instructions).

The translator's time is the best of the runs in this process: the first
run compiles (its time is printed too), the next reuse the compiled
regions, as a node running a program again does (one more run; five more
for a program whose first run takes under a second, such as pingpong's
55,000 instructions, whose single runs vary by a factor of five here).
Instruction counts come from jmig (exact).  Every figure stands next to
its reference from the same run, because this machine is noisy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jmig import programs                                     # noqa: E402
from jmig.kernel.memlayout import PGSIZE, PTE_U, PTE_W         # noqa: E402
from jmig.kernel.pmap import AddressSpace, PhysMem            # noqa: E402
from jmig.kernel.runner import run_program                    # noqa: E402
from jmig.kernel.x86 import cpu as core                       # noqa: E402
from jmig.kernel.x86 import translate                         # noqa: E402

TIGHT = bytes([0x40, 0x39, 0xC8, 0x75, 0xFB, 0xCD, 0x30])      # 1: inc; cmp; jne 1b; int $0x30
MIN_SECONDS = 1.0
INTERP_LIMIT = 3_000_000         # instructions the interpreter reference runs at most
SHORT = 1.0                      # a program whose first run is shorter than this (s) ...
AGAIN_SHORT = 5                  # ... runs this many times again (else once): the best counts


def cold() -> None:
    """Forget everything compiled, so that the next run compiles afresh."""
    translate._COMPILED.clear()
    translate._DECODED.clear()
    core._COMPILED.clear()
    core._SHAPES.clear()
    core.SLOW.clear()


# -- the tight loop ------------------------------------------------------------------

def tight_jmig(engine: str, iters: int) -> tuple[int, float]:
    run = core.run if engine == "interp" else core.run_blocks
    ph = PhysMem(16)
    a = AddressSpace(ph)
    p = ph.page_alloc()
    a.page_insert(p, 0x800000, PTE_U | PTE_W)
    a.write(0x800000, TIGHT)
    c = core.Cpu()
    c.eip = 0x800000
    c.r[1] = iters
    t = time.perf_counter()
    st = run(c, a, 10 ** 12)
    dt = time.perf_counter() - t
    assert st.reason == core.SYSCALL and c.r[0] == iters, st
    return st.count, dt


def tight_unicorn(iters: int) -> float:
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn.x86_const import UC_X86_REG_EAX, UC_X86_REG_ECX

    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0x800000, PGSIZE)
    uc.mem_write(0x800000, TIGHT)
    uc.reg_write(UC_X86_REG_ECX, iters)
    t = time.perf_counter()
    uc.emu_start(0x800000, 0x800005)
    dt = time.perf_counter() - t
    assert uc.reg_read(UC_X86_REG_EAX) == iters & 0xFFFFFFFF
    return dt


def at_least(seconds: float, run, n: int) -> tuple[int, float]:
    """Grow n until run(n) -> (count, time) takes `seconds`; that run."""
    while True:
        count, dt = run(n)
        if dt >= seconds:
            return count, dt
        n = int(n * max(2.0, seconds / max(dt, 1e-3) * 1.3))


# -- programs --------------------------------------------------------------------------

def program_jmig(name: str, args: list[str], engine: str, limit: int):
    """(instructions, seconds, console) of one run."""
    elf = programs.load(name)
    t = time.perf_counter()
    o = run_program(elf, [name, *args], name, max_instructions=limit, engine=engine)
    return o.instructions, time.perf_counter() - t, o.console


def program_unicorn(name: str, args: list[str], seconds: float) -> tuple[int, float, str]:
    """Run the program in fresh Unicorn instances until `seconds` have
    passed: (runs, total seconds, console of one run)."""
    from ucjos import UnicornJos
    elf = programs.load(name)
    runs = 0
    total = 0.0
    console = ""
    while total < seconds:
        t = time.perf_counter()
        console = UnicornJos(elf, [name, *args]).run()
        total += time.perf_counter() - t
        runs += 1
    return runs, total, console


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results to this file")
    ap.add_argument("--quick", action="store_true", help="smaller inputs, shorter references")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    seconds = 0.2 if a.quick else MIN_SECONDS
    rows = []

    # The tight loop: Unicorn and the translator each for at least `seconds`.
    uc_count, uc_t = at_least(seconds, lambda n: (3 * n + 1, tight_unicorn(n)), 1_000_000)
    cold()
    bl_count, bl_t = at_least(seconds, lambda n: tight_jmig("blocks", n), 300_000)
    in_count, in_t = tight_jmig("interp", 100_000 if a.quick else 300_000)
    rows.append({"program": "tight loop", "instructions": bl_count,
                 "interp_mips": in_count / in_t / 1e6, "blocks_mips": bl_count / bl_t / 1e6,
                 "blocks_first_s": None, "blocks_s": bl_t,
                 "unicorn_mips": uc_count / uc_t / 1e6, "unicorn_instructions": uc_count,
                 "unicorn_s": uc_t})

    lines = "300" if a.quick else "3000"
    table = [
        ("printbench (printf-heavy)", "printbench", [lines], None, True),
        ("forktree (fork, COW)", "forktree", [], None, False),
        ("pingpong (fork, IPC)", "pingpong", [], None, False),
        ("primes (fork, IPC)", "primes", [], 1_000_000 if a.quick else 5_000_000, False),
        ("scantree (forkscan)", "scantree", [], 10_000_000 if a.quick else None, False),
        ("scansched (forkscan, yields)", "scansched", ["100" if a.quick else "1000"],
         10_000_000 if a.quick else None, False),
    ]
    for label, name, args, limit, unicorn in table:
        limit = limit or 10 ** 10
        cold()
        n, first, con_b = program_jmig(name, args, "blocks", limit)
        best = first
        for _ in range(AGAIN_SHORT if first < SHORT else 1):
            best = min(best, program_jmig(name, args, "blocks", limit)[1])
        ni, ti, con_i = program_jmig(name, args, "interp", min(limit, INTERP_LIMIT))
        row = {"program": label, "instructions": n, "interp_mips": ni / ti / 1e6,
               "blocks_mips": n / best / 1e6, "blocks_first_s": first, "blocks_s": best,
               "unicorn_mips": None}
        if ni == n:
            assert con_i == con_b, f"{name}: the engines print different things"
        if unicorn:
            runs, tu, con_u = program_unicorn(name, args, seconds)
            check = [ln for ln in con_u.splitlines() if "checksum" in ln]
            assert check and check[0] in con_b, f"{name}: Unicorn and jmig differ"
            row.update(unicorn_mips=runs * n / tu / 1e6, unicorn_instructions=runs * n,
                       unicorn_s=tu)
        rows.append(row)

    print(f"{'program':30} {'instructions':>12} {'interp':>8} {'blocks':>8} {'first run':>10} "
          f"{'unicorn':>9} {'blocks/unicorn':>14} {'blocks/interp':>13}")
    print(f"{'':30} {'':>12} {'M/s':>8} {'M/s':>8} {'s':>10} {'M/s':>9}")
    for r in rows:
        uc = r["unicorn_mips"]
        r["blocks_vs_unicorn"] = r["blocks_mips"] / uc if uc else None
        r["blocks_vs_interp"] = r["blocks_mips"] / r["interp_mips"]
        first = "-" if r["blocks_first_s"] is None else f"{r['blocks_first_s']:.2f}"
        print(f"{r['program']:30} {r['instructions']:>12} {r['interp_mips']:>8.2f} "
              f"{r['blocks_mips']:>8.2f} {first:>10} "
              f"{'-' if uc is None else f'{uc:.0f}':>9} "
              f"{'1/%.0f' % (1 / r['blocks_vs_unicorn']) if uc else '-':>14} "
              f"{r['blocks_vs_interp']:>12.1f}x")
    print(f"(Unicorn: tight loop {rows[0]['unicorn_instructions']:,} instructions in "
          f"{rows[0]['unicorn_s']:.2f} s; printbench run {rows[1].get('unicorn_instructions', 0) // max(rows[1]['instructions'], 1)} "
          f"times, {rows[1].get('unicorn_s', 0):.2f} s.  Translator: tight loop "
          f"{rows[0]['instructions']:,} instructions in {rows[0]['blocks_s']:.2f} s.)")
    result = {"cpu": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

"""Core speed: guest instructions per second of jmig's interpreter and block
translator, each next to Unicorn's rate on the same code in the same run.

    python bench/cpu.py [--json FILE] [--quick]

Programs: a tight loop (inc, cmp, jne: 3 instructions per iteration), the
bundled printbench (snprintf-heavy), and the fork/IPC programs forktree,
pingpong and primes on jmig's kernel (Unicorn cannot run those: they need
a kernel, so their reference is the interpreter).  Instruction counts come
from jmig (exact); Unicorn runs the same instruction stream.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jmig import programs                                     # noqa: E402
from jmig.kernel.memlayout import PTE_U, PTE_W, PGSIZE  # noqa: E402
from jmig.kernel.pmap import AddressSpace, PhysMem            # noqa: E402
from jmig.kernel.runner import run_program                    # noqa: E402
from jmig.kernel.x86 import cpu as core                       # noqa: E402

TIGHT = bytes([0x40, 0x39, 0xC8, 0x75, 0xFB, 0xCD, 0x30])      # 1: inc; cmp; jne 1b; int $0x30


def best(fn, repeat: int) -> float:
    """Best wall time of `repeat` runs (this machine is noisy)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def tight_jmig(engine: str, iters: int) -> tuple[int, float]:
    run = core.run if engine == "interp" else core.run_blocks

    def go():
        ph = PhysMem(16)
        a = AddressSpace(ph)
        p = ph.page_alloc()
        a.page_insert(p, 0x800000, PTE_U | PTE_W)
        a.write(0x800000, TIGHT)
        c = core.Cpu()
        c.eip = 0x800000
        c.r[1] = iters
        st = run(c, a, 10 ** 12)
        assert st.reason == core.SYSCALL and c.r[0] == iters
        go.count = st.count
    t = best(go, 3)
    return go.count, t


def tight_unicorn(iters: int) -> float:
    from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
    from unicorn.x86_const import UC_X86_REG_ECX

    def go():
        uc = Uc(UC_ARCH_X86, UC_MODE_32)
        uc.mem_map(0x800000, PGSIZE)
        uc.mem_write(0x800000, TIGHT)
        uc.reg_write(UC_X86_REG_ECX, iters)
        uc.emu_start(0x800000, 0x800005)
    return best(go, 3)


def program_jmig(name: str, args: list[str], engine: str, limit: int = 10 ** 9):
    elf = programs.load(name)
    out = {}

    def go():
        o = run_program(elf, [name, *args], name, max_instructions=limit, engine=engine)
        out["count"] = o.instructions
        out["console"] = o.console
    t = best(go, 2)
    return out["count"], t, out["console"]


def program_unicorn(name: str, args: list[str]) -> tuple[float, str]:
    from ucjos import UnicornJos
    elf = programs.load(name)
    out = {}

    def go():
        out["console"] = UnicornJos(elf, [name, *args]).run()
    return best(go, 2), out["console"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write results to this file")
    ap.add_argument("--quick", action="store_true", help="smaller inputs")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    iters = 300_000 if a.quick else 3_000_000
    lines = 300 if a.quick else 3000
    rows = []

    n, t_blocks = tight_jmig("blocks", iters)
    _, t_interp = tight_jmig("interp", iters // 10)
    t_interp *= 10
    t_uc = tight_unicorn(iters)
    rows.append({"program": "tight loop", "instructions": n, "interp_mips": n / t_interp / 1e6,
                 "blocks_mips": n / t_blocks / 1e6, "unicorn_mips": n / t_uc / 1e6})

    n, t_blocks, con_b = program_jmig("printbench", [str(lines)], "blocks")
    _, t_interp, con_i = program_jmig("printbench", [str(lines)], "interp")
    t_uc, con_u = program_unicorn("printbench", [str(lines)])
    check = [l for l in con_u.splitlines() if "checksum" in l]
    assert check and check[0] in con_b and check[0] in con_i, "printbench results differ"
    rows.append({"program": "printbench (printf-heavy)", "instructions": n,
                 "interp_mips": n / t_interp / 1e6, "blocks_mips": n / t_blocks / 1e6,
                 "unicorn_mips": n / t_uc / 1e6})

    for name, args, limit in (("forktree", [], 10 ** 9), ("pingpong", [], 10 ** 9),
                              ("primes", [], 1_000_000 if a.quick else 5_000_000)):
        n, t_blocks, _ = program_jmig(name, args, "blocks", limit)
        _, t_interp, _ = program_jmig(name, args, "interp", limit)
        rows.append({"program": f"{name} (fork/IPC)", "instructions": n,
                     "interp_mips": n / t_interp / 1e6, "blocks_mips": n / t_blocks / 1e6,
                     "unicorn_mips": None})

    print(f"{'program':28} {'instructions':>12} {'interp M/s':>10} {'blocks M/s':>10} "
          f"{'unicorn M/s':>11} {'blocks/unicorn':>14} {'blocks/interp':>13}")
    for r in rows:
        uc = r["unicorn_mips"]
        r["blocks_vs_unicorn"] = r["blocks_mips"] / uc if uc else None
        r["blocks_vs_interp"] = r["blocks_mips"] / r["interp_mips"]
        print(f"{r['program']:28} {r['instructions']:>12} {r['interp_mips']:>10.2f} "
              f"{r['blocks_mips']:>10.2f} {uc if uc is None else round(uc, 1)!s:>11} "
              f"{'1/%.0f' % (1 / r['blocks_vs_unicorn']) if uc else '-':>14} "
              f"{r['blocks_vs_interp']:>12.1f}x")
    result = {"cpu": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

"""Run every benchmark, print their tables and write JSON.

    python3 dev.py bench [--quick] [--sizes 16,64] [--out bench/results/latest.json]

Each figure is printed next to a reference measured in the same run
(Unicorn on the same code, the raw file and TCP throughput of this machine,
the same node without the attack, the cluster before balancing, IPC on one
node and a raw TCP round trip, the node without viewers),
because this machine is noisy and only same-run ratios mean anything.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small inputs (a smoke run)")
    ap.add_argument("--sizes", default="16,64", help="migration process sizes in MiB")
    ap.add_argument("--out", default=str(HERE / "results" / "latest.json"))
    a = ap.parse_args(argv)
    import abuse
    import balance
    import cpu
    import ipc
    import migration
    import scale
    import web
    results = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
               "machine": platform.machine()}
    print("== core: guest instructions per second ==")
    results.update(cpu.main(["--quick"] if a.quick else []))
    print("\n== save, load and migration ==")
    results.update(migration.main(["--quick"] if a.quick else ["--sizes", a.sizes]))
    print("\n== abuse: ps latency and memory under attack ==")
    results.update(abuse.main(["--quick"] if a.quick else []))
    print("\n== scale: 16 nodes, a full node, 100 migrations at once ==")
    results.update(scale.main(["--quick"] if a.quick else []))
    print("\n== balance: 12 CPU-bound envs on one of 4 nodes, balancing on ==")
    results.update(balance.main(["--quick"] if a.quick else []))
    print("\n== ipc: round trips between two envs, on one node and across two ==")
    results.update(ipc.main(["--quick"] if a.quick else []))
    print("\n== web: the tight loop with 0 and with 3 viewers of jmigctl web ==")
    results.update(web.main(["--quick"] if a.quick else []))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

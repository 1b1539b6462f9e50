#!/usr/bin/env python3
"""Write OUT/manifest.json: the compiler that built the bundled ELFs and
each ELF's SHA-256, so tests can tell whether a rebuild must match byte
for byte (same compiler) or only build cleanly (another compiler)."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

out = Path(sys.argv[1])
gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
ld = subprocess.run(["ld", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
elfs = {p.name[:-4]: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.elf"))}
(out / "manifest.json").write_text(json.dumps({"gcc": gcc, "ld": ld, "programs": elfs},
                                              indent=1, sort_keys=True) + "\n")

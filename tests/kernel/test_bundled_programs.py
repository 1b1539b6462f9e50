"""The committed ELFs are exactly what their sources build to."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from jmig import programs

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "examples" / "user"
BUNDLED = ROOT / "jmig" / "programs"


def _first_line(cmd):
    return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]


def test_every_source_has_a_bundled_elf():
    sources = sorted(p.stem for p in SRC.glob("*.c"))
    assert sources == programs.names()
    manifest = json.loads((BUNDLED / "manifest.json").read_text())
    assert sorted(manifest["programs"]) == sources


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                    reason="needs gcc and make to rebuild the programs")
def test_committed_binaries_match_their_sources(tmp_path):
    out = tmp_path / "out"
    obj = tmp_path / "obj"
    subprocess.run(["make", "-s", f"OUT={out}", f"OBJ={obj}"], cwd=SRC, check=True,
                   capture_output=True)
    manifest = json.loads((BUNDLED / "manifest.json").read_text())
    built = sorted(p.stem for p in out.glob("*.elf"))
    assert built == programs.names()
    if _first_line(["gcc", "--version"]) != manifest["gcc"] or \
            _first_line(["ld", "--version"]) != manifest["ld"]:
        pytest.skip("a different compiler than the one that built the bundled ELFs: "
                    "the rebuild succeeded, bytes are not comparable")
    for name in built:
        assert (out / f"{name}.elf").read_bytes() == programs.load(name), \
            f"{name}.elf is stale: run `make` in examples/user and commit the result"

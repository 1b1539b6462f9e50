"""`jmigctl run`: an in-process kernel printing a program's console, as
JOS's `make run-NAME` does."""
import io

import pytest

from jmig import programs
from jmig.ctl.main import main


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = main(["run", *argv], environ={}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_run_a_bundled_program_prints_its_console_with_kernel_messages():
    code, out, err = run("hello")
    assert code == 0, err
    assert out.splitlines() == [
        "[00000000] new env 00001000",
        "hello, world",
        "i am environment 00001000",
        "[00001000] exiting gracefully",
        "[00001000] free env 00001000",
    ]


def test_run_passes_arguments():
    code, out, _ = run("args", "x", "y z")
    assert code == 0
    assert "argv[2] = y z" in out


def test_run_an_elf_by_path(tmp_path):
    p = tmp_path / "mine.elf"
    p.write_bytes(programs.load("hello"))
    code, out, _ = run(str(p))
    assert code == 0 and "hello, world" in out


@pytest.mark.slow
def test_run_with_four_cpus():
    code, out, _ = run("--cpus", "4", "stresssched")
    assert code == 0
    assert out.count("stresssched on CPU") == 20
    cpus = {l.rsplit(" ", 1)[1] for l in out.splitlines() if "stresssched on CPU" in l}
    assert len(cpus) > 1


def test_run_stops_at_the_instruction_limit_and_says_so():
    code, out, err = run("--max-instructions", "20000", "loop", "1")
    assert code == 0
    assert "Test Program, Env ID: 4096, Counter: 0" in out
    assert "stopped after" in err and "--max-instructions" in err


def test_run_refuses_a_malformed_elf_with_the_reason(tmp_path):
    p = tmp_path / "bad.elf"
    p.write_bytes(b"\x7fELF" + bytes(60))
    code, out, err = run(str(p))
    assert code == 1
    assert "cannot run" in err and "32-bit" in err


def test_run_an_unknown_program_lists_the_bundled_ones():
    code, out, err = run("nosuchprogram")
    assert code == 1
    assert "hello" in err

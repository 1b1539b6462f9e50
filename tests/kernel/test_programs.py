"""Every bundled program runs on the kernel with the output JOS gives,
kernel messages included, and leaves no frame behind."""
import re

import pytest

from jmig import programs
from jmig.kernel.runner import run_program


def boot(name, *args, ncpus=1, limit=50_000_000, argv=True):
    out = run_program(programs.load(name), [name, *args] if argv else None, name,
                      ncpus=ncpus, max_instructions=limit)
    return out


def lines(out):
    return out.console.splitlines()


def assert_all_freed(out):
    k = out.kernel
    assert not k.live_envs()
    assert k.phys.nfree == k.phys.nframes - 1, "frames leaked"
    k.check_invariants()


def test_hello_prints_greeting_and_exits():
    out = boot("hello")
    assert lines(out) == [
        "[00000000] new env 00001000",
        "hello, world",
        "i am environment 00001000",
        "[00001000] exiting gracefully",
        "[00001000] free env 00001000",
    ]
    assert out.reason == "idle"
    assert_all_freed(out)


def test_hello_without_argv_starts_at_ustacktop_like_jos_env_create():
    out = boot("hello", argv=False)
    assert "i am environment 00001000" in lines(out)


def test_forktree_visits_every_node_once():
    out = boot("forktree")
    names = re.findall(r"^([0-9a-f]{4}): I am '([01]*)'$", out.console, re.M)
    got = sorted(n for _, n in names)
    want = sorted([""] + [format(i, f"0{d}b") for d in (1, 2, 3) for i in range(2 ** d)])
    assert got == want
    assert out.console.count("exiting gracefully") == 15
    # Each env prints its own id.
    for envid, _ in names:
        assert f"[0000{envid}] exiting gracefully" in out.console
    assert_all_freed(out)


@pytest.mark.slow
def test_scantree_with_the_student_fork_visits_every_node_once():
    # lib/forkscan.c: a fork reading uvpd/uvpt for every page below USTACKTOP.
    out = boot("scantree", limit=200_000_000)
    names = re.findall(r"^([0-9a-f]{4}): I am '([01]*)'$", out.console, re.M)
    got = sorted(n for _, n in names)
    want = sorted([""] + [format(i, f"0{d}b") for d in (1, 2, 3) for i in range(2 ** d)])
    assert got == want
    assert out.console.count("exiting gracefully") == 15
    assert out.instructions > 14 * 7_000_000      # each fork walks every page
    assert_all_freed(out)


@pytest.mark.slow
def test_scansched_children_yield_and_keep_private_counters():
    out = boot("scansched", "100", limit=400_000_000)
    ok = re.findall(r"^\[([0-9a-f]{8})\] scansched: 100 yields ok$", out.console, re.M)
    assert len(ok) == 20 and len(set(ok)) == 20
    assert "panic" not in out.console
    assert_all_freed(out)


def test_pingpong_exchanges_values_up_to_ten():
    out = boot("pingpong")
    body = [l for l in lines(out) if not l.startswith("[")]
    assert body[0] == "send 0 from 1000 to 1001"
    want = [f"{'1001' if v % 2 == 0 else '1000'} got {v} from {'1000' if v % 2 == 0 else '1001'}"
            for v in range(11)]
    assert body[1:] == want
    assert_all_freed(out)


@pytest.mark.slow
def test_primes_prints_the_primes_in_order():
    out = boot("primes", limit=3_000_000)
    got = [int(l) for l in lines(out) if l.isdigit()]
    assert got[:15] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47]
    assert out.reason == "limit"


@pytest.mark.parametrize("prog,err,kind", [
    ("faultread", 0x4, "[user, read, not-present]"),
    ("faultwrite", 0x6, "[user, write, not-present]"),
])
def test_fault_at_zero_destroys_env_with_jos_messages(prog, err, kind):
    out = boot(prog)
    ls = lines(out)
    m = re.match(r"\[00001000\] user fault va 00000000 ip (008[0-9a-f]{5})$", ls[1])
    assert m, ls[1]
    assert ls[2].startswith("TRAP frame at 0x") and ls[2].endswith("from CPU 0")
    assert "  trap 0x0000000e Page Fault" in ls
    assert f"  err  0x{err:08x} {kind}" in ls
    assert f"  eip  0x{m.group(1)}" in ls
    assert ls[-1] == "[00001000] free env 00001000"
    assert "I read" not in out.console
    assert_all_freed(out)


def test_faultalloc_handler_maps_pages_including_a_straddling_string():
    out = boot("faultalloc")
    body = [l for l in lines(out) if not l.startswith("[")]
    assert body == [
        "fault deadbeef",
        "this string was faulted in at deadbeef",
        "fault cafebffe",
        "fault cafec000",
        "this string was faulted in at cafebffe",
    ]
    assert_all_freed(out)


def test_faultnest_handles_a_fault_inside_the_handler():
    out = boot("faultnest")
    body = [l for l in lines(out) if not l.startswith("[")]
    assert body[-1] == "faultnest: ok"
    assert any(l.startswith("nested fault") for l in body)
    assert any(l.startswith("outer fault") for l in body)
    assert_all_freed(out)


def test_faultdie_handler_sees_va_and_error_code():
    out = boot("faultdie")
    assert "i faulted at va deadbeef, err 6" in lines(out)
    assert "[00001000] exiting gracefully" in lines(out)


def test_yield_alternates_and_finishes():
    out = boot("yield")
    body = [l for l in lines(out) if not l.startswith("[")]
    assert body == (["Hello, I am environment 00001000."]
                    + [f"Back in environment 00001000, iteration {i}." for i in range(5)]
                    + ["All done in environment 00001000."])


@pytest.mark.parametrize("prog,trap", [
    ("divzero", "  trap 0x00000000 Divide error"),
    ("breakpoint", "  trap 0x00000003 Breakpoint"),
    ("softint", "  trap 0x0000000d General Protection"),
    ("badsegment", "  trap 0x0000000d General Protection"),
])
def test_traps_print_the_frame_and_destroy_the_env(prog, trap):
    out = boot(prog)
    ls = lines(out)
    assert trap in ls
    assert ls[-1] == "[00001000] free env 00001000"
    assert "1/0 is" not in out.console
    assert_all_freed(out)


def test_softint_error_code_names_the_idt_gate():
    assert "  err  0x00000072" in lines(boot("softint"))


def test_badsegment_error_code_is_the_selector():
    assert "  err  0x00000028" in lines(boot("badsegment"))


@pytest.mark.parametrize("prog,va", [("buggyhello", 0x1), ("evilhello", 0xF010000C)])
def test_bad_pointer_to_cputs_fails_user_mem_check(prog, va):
    out = boot(prog)
    assert lines(out) == [
        "[00000000] new env 00001000",
        f"[00001000] user_mem_check assertion failure for va {va:08x}",
        "[00001000] free env 00001000",
    ]


def test_spin_parent_kills_spinning_child():
    out = boot("spin")
    ls = lines(out)
    assert "I am the child.  Spinning..." in ls
    assert "[00001000] destroying 00001001" in ls
    assert "[00001000] free env 00001001" in ls
    assert_all_freed(out)


def test_dumbfork_parent_and_child_run_interleaved():
    out = boot("dumbfork")
    parent = [l for l in lines(out) if l.endswith("I am the parent!")]
    child = [l for l in lines(out) if l.endswith("I am the child!")]
    assert len(parent) == 10 and len(child) == 20
    assert parent[0] == "0: I am the parent!" and child[-1] == "19: I am the child!"
    assert_all_freed(out)


@pytest.mark.slow
def test_stresssched_on_four_cpus():
    out = boot("stresssched", ncpus=4, limit=80_000_000)
    ls = [l for l in lines(out) if "stresssched on CPU" in l]
    assert len(ls) == 20
    cpus = {int(l.rsplit(" ", 1)[1]) for l in ls}
    assert len(cpus) > 1
    assert "panic" not in out.console
    assert_all_freed(out)


def test_cowstress_parent_and_children_keep_private_copies():
    out = boot("cowstress", "2")
    assert "cowstress: round 1 ok" in lines(out)
    assert "cowstress: done" in lines(out)
    assert "MISMATCH" not in out.console
    assert_all_freed(out)


def test_memtest_verifies_every_pass():
    out = boot("memtest", "32", "8", "0", "4")
    passes = [l for l in lines(out) if l.startswith("memtest: pass")]
    assert passes == [f"memtest: pass {i} ok, 32 pages verified, 8 rewritten" for i in range(1, 5)]
    assert "memtest: done" in lines(out)
    assert_all_freed(out)


def test_sleeper_sees_the_clock_advance():
    out = boot("sleeper")
    assert "sleeper: slept" in lines(out)


def test_args_are_laid_out_as_argc_argv():
    out = boot("args", "one", "two words")
    body = [l for l in lines(out) if not l.startswith("[")]
    assert body == ["argc 3", "argv[0] = args", "argv[1] = one", "argv[2] = two words"]


def test_loop_counts_with_decimal_env_id():
    out = boot("loop", "10", limit=200_000)
    got = re.findall(r"^Test Program, Env ID: (\d+), Counter: (\d+)$", out.console, re.M)
    assert len(got) > 5
    assert all(envid == "4096" for envid, _ in got)
    assert [int(c) for _, c in got] == list(range(len(got)))


def test_faultregs_sees_exact_registers_in_and_after_a_fault():
    out = boot("faultregs")
    assert "Registers in UTrapframe OK" in lines(out)
    assert "Registers after page-fault OK" in lines(out)
    assert "MISMATCH" not in out.console


@pytest.mark.parametrize("prog,va", [
    ("faultallocbad", 0xDEADBEEF),      # sys_cputs of a faulting string: the kernel checks it
    ("faultnostack", 0xEEBFFFCC),       # no exception stack mapped: UXSTACKTOP - 52
    ("faultbadhandler", 0xEEBFEFD4),    # upcall faults forever until the stack overflows
    ("faultevilhandler", 0xEEBFEFD4),   # upcall in the kernel: same
])
def test_bad_fault_handling_setups_fail_user_mem_check(prog, va):
    out = boot(prog)
    assert f"[00001000] user_mem_check assertion failure for va {va:08x}" in lines(out)
    assert lines(out)[-1] == "[00001000] free env 00001000"
    assert_all_freed(out)


def test_burn_computes_and_counts_its_lines():
    # `burn 1000`: a line every 1,000 iterations of its generator; a stopped
    # run leaves it running (it never exits), its lines numbered 1, 2, ...
    out = boot("burn", "1000", limit=300_000)
    got = [line for line in lines(out) if line.startswith("burn ")]
    assert len(got) >= 5
    assert [int(line.split()[2]) for line in got] == list(range(1, len(got) + 1))
    assert all(line.startswith("burn 00001000: ") for line in got)
    # The generator's state after n * 1000 steps: x = 1103515245 x + 12345 (mod 2^32).
    x = 1
    for n, line in enumerate(got, 1):
        for _ in range(1000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF
        assert line.endswith(f"({x:08x})"), (n, line)


def test_sendpage_passes_a_page_both_ways():
    # Each prints who sent the page (the child: 1000, the parent: 1001) and what was in it.
    out = lines(boot("sendpage"))
    assert "child received correct message" in out
    assert "parent received correct message" in out
    assert "1001 got message: hello parent environment! I'm good." in out
    assert "1000 got message: hello child environment! how are you?" in out


def test_primes_with_a_limit_prints_the_primes_up_to_it():
    out = boot("primes", "0", "100")
    printed = [int(line) for line in lines(out) if line.strip().isdigit()]
    assert printed == [p for p in range(2, 101) if all(p % d for d in range(2, p))]
    assert "primes: generated 2..100" in lines(out)


def test_ipcbench_times_its_round_trips():
    got = lines(boot("ipcbench", "30", "0", "10"))
    assert [line.split(":")[0] for line in got if line.startswith("ipcbench: batch")] == \
        ["ipcbench"] * 3
    assert any(line.startswith("ipcbench: 30 round trips in ") for line in got)
    assert not any("panic" in line for line in got)

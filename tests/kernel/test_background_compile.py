"""The block translator compiling regions in a worker thread (a node's
kernel: Kernel(background_compile=True)): programs give exactly the output
they give when regions compile in run(), and a region whose code changed
while it compiled is never installed."""
import concurrent.futures

import pytest

from jmig import programs
from jmig.kernel import kernel as kmod
from jmig.kernel.kernel import Kernel
from jmig.kernel.runner import run_program
from jmig.kernel.x86 import bytecode, translate

LIMIT = 3_000_000           # instructions (primes forks forever: its output up to here)


@pytest.fixture
def jobs(monkeypatch):
    """Every compile the background thread is given (its future); nothing
    compiled before (another test's regions would be found, not compiled)."""
    for table in ("_COMPILED", "_BY_HEAD", "_INFLIGHT"):
        monkeypatch.setattr(translate, table, {})
    seen = []
    real = kmod._compiler()

    class Counting:
        def submit(self, fn, *args):
            seen.append(real.submit(fn, *args))
            return seen[-1]

    monkeypatch.setattr(kmod, "_compiler", lambda: Counting())
    return seen


@pytest.mark.parametrize("name,args", [("primes", []), ("forktree", []), ("pingpong", []),
                                       ("memtest", ["64", "8", "0", "3"]), ("scantree", [])])
def test_programs_give_the_same_output_with_regions_compiled_in_the_background(
        jobs, name, args):
    before = dict(bytecode.stats)
    background = run_program(programs.load(name), [name, *args], name,
                             max_instructions=LIMIT, background_compile=True)
    assert jobs, "no region was compiled in the background: the test proves nothing"
    # ... and their bytecode by the helper process, not under this one's GIL
    # (a short program may end before its compiles do: wait for them).
    concurrent.futures.wait(jobs, timeout=60)
    assert bytecode.stats["in_helper"] > before["in_helper"]
    assert bytecode.stats["here"] == before["here"]
    here = run_program(programs.load(name), [name, *args], name, max_instructions=LIMIT)
    assert background.console == here.console
    assert background.reason == here.reason


class Held:
    """An executor that runs a job only when told to (so the test can
    change the code while the region 'compiles')."""

    def __init__(self):
        self.jobs = []

    def submit(self, fn, *args):
        fut = concurrent.futures.Future()
        self.jobs.append((fut, fn, args))
        return fut

    def finish(self):
        fut, fn, args = self.jobs.pop()
        fut.set_result(fn(*args))
        return args[0]                      # the plan


def _until_compiling(k, held):
    for _ in range(10_000):
        if held.jobs:
            return
        k.run(1_000)
    raise AssertionError("no region was asked for")


def _installed(env, plan) -> bool:
    return any(fn.plan is plan for fn in env.aspace.regions.values())


@pytest.mark.parametrize("change", [False, True])
def test_a_region_is_installed_when_done_unless_its_code_changed_meanwhile(
        monkeypatch, change):
    for table in ("_COMPILED", "_BY_HEAD", "_INFLIGHT"):
        monkeypatch.setattr(translate, table, {})
    k = Kernel(background_compile=True)
    held = Held()
    k.phys.compiler = held
    env = k.env_create(programs.load("primes"), ["primes"], name="primes")
    _until_compiling(k, held)
    assert env.aspace.compiling is not None
    plan = held.finish()
    if change:
        bb = next(iter(plan.bbs.values()))
        m = env.aspace
        frame = k.phys.frame(m.pte[bb.start >> 12] >> 12 & 0xFFFFF)
        frame[bb.start & 0xFFF] ^= 0xFF
    k.run(1)
    assert env.aspace.compiling is None
    assert _installed(env, plan) is not change


def test_envs_running_the_same_code_share_one_compile(monkeypatch):
    """A thousand envs of one program must not queue a thousand compiles."""
    for table in ("_COMPILED", "_BY_HEAD", "_INFLIGHT"):
        monkeypatch.setattr(translate, table, {})
    k = Kernel(background_compile=True)
    held = Held()
    k.phys.compiler = held
    envs = [k.env_create(programs.load("spin"), ["spin"], name="spin") for _ in range(4)]
    for _ in range(10_000):
        if all(e.aspace.compiling is not None for e in envs):
            break
        k.run(1_000)
    assert all(e.aspace.compiling is not None for e in envs)
    assert len(held.jobs) == 1
    assert len({id(e.aspace.compiling[1]) for e in envs}) == 1
    shared = envs[0].aspace.compiling[1]
    held.finish()
    taken = set()                           # envs that took the one compile's result
    for _ in range(len(envs) * 2):
        k.run(10_000)                       # a slice for each env, twice
        taken |= {i for i, e in enumerate(envs)
                  if e.aspace.compiling is None or e.aspace.compiling[1] is not shared}
    assert taken == set(range(len(envs)))


def test_a_compile_survives_its_helper_process_dying_or_failing_to_start(monkeypatch):
    src = "def _r(x):\n    return x + 1\n"
    before = dict(bytecode.stats)
    ns = {}
    exec(bytecode.compile_in_helper(src, "<t>", "exec"), ns)
    assert ns["_r"](41) == 42 and bytecode.stats["in_helper"] > before["in_helper"]
    helper = bytecode._HELPER
    helper.kill()
    helper.wait(10)
    done = bytecode.stats["in_helper"]
    exec(bytecode.compile_in_helper(src, "<t>", "exec"), ns)      # by a new helper
    assert bytecode.stats["in_helper"] > done
    assert bytecode._HELPER is not helper and bytecode._HELPER.poll() is None
    # No helper can start: compiled in this thread, as without one.
    bytecode._HELPER.kill()
    bytecode._HELPER.wait(10)
    monkeypatch.setattr(bytecode.sys, "executable", "/nonexistent/python")
    ns = {}
    exec(bytecode.compile_in_helper(src, "<t>", "exec"), ns)
    assert ns["_r"](1) == 2 and bytecode.stats["here"] > before["here"]


def test_a_syntax_error_in_generated_code_reaches_the_caller_as_it_would_from_compile():
    with pytest.raises(SyntaxError):
        bytecode.compile_in_helper("def (:\n", "<bad>", "exec")

"""The destination of a demand-paging migration restores the stream's RUN
records from the page table it built ahead (from the runs the source
announced while the process ran) only when they are exactly those runs;
whatever changed in between, the env it builds is the one the stream
describes."""
import time

import pytest

from jmig import programs
from jmig.kernel.kernel import Kernel
from jmig.kernel.memlayout import PTE_P, PTE_U, PTE_W
from jmig.node.migration.stream import StreamRestorer, StreamWriter


def paused(argv, until):
    k = Kernel(memory=16 << 20, clock=lambda: time.monotonic() * 1000.0)
    e = k.env_create(programs.load(argv[0]), argv, name=argv[0])
    out = ""
    while until not in out:
        k.run(20_000)
        out += "".join(getattr(x, "text", "") for x in k.take_events())
    k.pause(e.env_id)
    return k, e


def stream_of(k, envid) -> bytes:
    w = StreamWriter(k, envid, "src", "pgfault", remote=True)
    return b"".join(bytes(p) for parts in w.parts() for p in parts)


def restore(data: bytes, expected_runs):
    """The env a destination builds from data, given the announced runs
    (or none), and whether it took the prebuilt table."""
    k = Kernel(memory=16 << 20)
    expected = Kernel.remote_table(expected_runs) if expected_runs is not None else None
    r = StreamRestorer(k, keep_id=True, allow_remote=True, expected=expected)
    taken = []
    real = k.restore_remote_table
    k.restore_remote_table = lambda e, t: (taken.append(t), real(e, t))
    r.feed(data)
    r.finish()
    k.commit_incoming(r.env)
    k.check_invariants()
    r.env.aspace.check_mirror()
    return k, r.env, bool(taken)


@pytest.fixture(scope="module")
def source():
    return paused(["memtest", "64", "8"], "pass 1 ok")


def test_the_announced_runs_unchanged_give_the_prebuilt_table_and_the_same_env(source):
    k, e = source
    data = stream_of(k, e.env_id)
    _, plain, took_plain = restore(data, None)
    k2, fast, took = restore(data, k.page_runs(e.env_id))
    assert took and not took_plain
    assert fast.aspace.pte == plain.aspace.pte
    assert k2.page_runs(fast.env_id) == k.page_runs(e.env_id)
    assert fast.aspace.nremote == sum(c for _, c, _ in k.page_runs(e.env_id))


def test_a_page_mapped_after_the_announcement_is_restored_from_the_stream(source):
    k, e = source
    announced = k.page_runs(e.env_id)
    pfn = k.phys.page_alloc()
    assert e.aspace.page_insert(pfn, 0x700000, PTE_U | PTE_W)
    try:
        k2, env, took = restore(stream_of(k, e.env_id), announced)
        assert not took
        assert env.aspace.pte.get(0x700, 0) & (PTE_U | PTE_W | PTE_P) == PTE_U | PTE_W | PTE_P
        assert k2.page_runs(env.env_id) == k.page_runs(e.env_id)
    finally:
        e.aspace.page_remove(0x700000)


@pytest.mark.parametrize("change", ["one more run announced", "one run fewer announced",
                                    "a permission differs"])
def test_announced_runs_that_differ_from_the_stream_change_nothing_it_says(source, change):
    k, e = source
    runs = list(k.page_runs(e.env_id))
    if change == "one more run announced":
        runs = sorted(runs + [(0x90000, 2, PTE_U | PTE_P)])
    elif change == "one run fewer announced":
        runs = runs[:-1]
    else:
        first, count, perm = runs[0]
        runs[0] = (first, count, perm ^ PTE_W)
    k2, env, took = restore(stream_of(k, e.env_id), runs)
    assert not took
    assert k2.page_runs(env.env_id) == k.page_runs(e.env_id)

"""The job table (node/migration/jobs.py) on its own: states, cancel before
and after a migration's decision, the finished list, and jobs a stopped
node left behind."""
import json

import pytest
import structlog
import trio

from jmig.node.migration import MigrationError
from jmig.node.migration.jobs import JobState, JobTable
from jmig.node.migration.session import Decision


class FakeNode:
    name = "n"
    log = structlog.get_logger("test")


class Session:
    def __init__(self):
        self.decision = Decision.PENDING


@pytest.fixture
async def table(tmp_path):
    t = JobTable(FakeNode(), tmp_path / "jobs")
    async with trio.open_nursery() as nursery:
        await nursery.start(t.run)
        yield t
        nursery.cancel_scope.cancel()


async def test_job_ids_are_six_hex_digits_never_one_in_use(table, monkeypatch):
    """An id names one job among those listed: a random one that is in use
    (running or finished) is drawn again."""
    async def wait(job):
        await trio.sleep_forever()

    async def done(job):
        return {}
    running = table.start("migrate", 1, "x", wait)
    finished = table.start("save", 2, "y", done)
    await finished.done.wait()
    for job in (running, finished):
        assert len(job.id) == 6 and int(job.id, 16) >= 0
    draws = iter([bytes.fromhex(running.id), bytes.fromhex(finished.id), b"\xab\xcd\xef"])
    monkeypatch.setattr("jmig.node.migration.jobs.os.urandom",
                        lambda n: next(draws) if n == 3 else b"")
    assert table.start("load", None, "z", done).id == "abcdef"
    running.scope.cancel()


async def test_a_job_runs_to_success_and_its_file_goes(table):
    async def runner(job):
        assert (table.dir / f"{job.id}.json").exists()
        job.report({"done": 1, "total": 2})
        return {"answer": 42}
    job = table.start("migrate", 4096, "h:1", runner, method="normal")
    await job.done.wait()
    assert job.state is JobState.SUCCEEDED and job.result == {"answer": 42}
    assert job.progress == {"done": 1, "total": 2}
    assert not list(table.dir.glob("*.json"))
    assert table.list()[0]["state"] == "succeeded"


async def test_a_failing_job_keeps_its_error_code_and_a_bug_is_an_internal_failure(table):
    async def refused(job):
        raise MigrationError("refused", "no")

    async def buggy(job):
        raise ZeroDivisionError
    j1, j2 = table.start("migrate", 1, "x", refused), table.start("save", 2, "y", buggy)
    await j1.done.wait()
    await j2.done.wait()
    assert j1.state is JobState.FAILED and j1.error == {"code": "refused", "message": "no"}
    assert j2.state is JobState.FAILED and j2.error["code"] == "internal"


async def test_cancel_before_the_decision_stops_the_job_and_after_it_is_refused(table):
    async def runner(job):
        job.session = Session()
        await trio.sleep_forever()
    undecided = table.start("migrate", 1, "x", runner)
    decided = table.start("migrate", 2, "y", runner)
    while decided.session is None or undecided.session is None:   # (trio runs new
        await trio.sleep(0.001)                                     # tasks in any order)
    decided.session.decision = Decision.GO
    with pytest.raises(MigrationError) as exc:
        table.cancel(decided.id)
    assert exc.value.code == "bad-state" and "past its commit" in exc.value.message
    table.cancel(undecided.id)
    await undecided.done.wait()
    assert undecided.state is JobState.CANCELLED
    assert "is back on n" in undecided.error["message"]
    with pytest.raises(MigrationError) as exc:
        table.cancel(undecided.id)
    assert "cancelled already" in exc.value.message
    with pytest.raises(MigrationError) as exc:
        table.cancel("nosuch")
    assert exc.value.code == "no-such-job"
    decided.scope.cancel()


async def test_the_finished_list_keeps_the_newest(table):
    order = []

    async def runner(job):
        order.append(job.id)
        return {}
    jobs = [table.start("save", i, "x", runner) for i in range(105)]
    for j in jobs:
        await j.done.wait()
    listed = table.list()
    assert len(listed) == 100                                  # as `jmigctl jobs` documents
    assert [j["id"] for j in listed] == order[::-1][:100]      # newest first
    assert all(table.get(jid) for jid in order[5:])
    with pytest.raises(MigrationError, match="no job"):
        table.get(order[4])


async def test_a_job_keeps_its_first_10000_trace_lines_for_its_watchers(table):
    async def runner(job):
        for i in range(10_005):
            job.trace_line(f"line {i}")
        return {}
    job = table.start("migrate", 1, "x", runner)
    await job.done.wait()
    assert len(job.lines) == 10_000 and job.lines[-1] == "line 9999"


async def test_shutdown_cancels_undecided_jobs_and_refuses_new_ones(table):
    async def runner(job):
        job.session = Session()
        await trio.sleep_forever()
    job = table.start("migrate", 1, "x", runner)
    await trio.sleep(0.01)
    await table.shutdown(FakeNode.log)
    assert job.state is JobState.CANCELLED
    with pytest.raises(MigrationError) as exc:
        table.start("migrate", 1, "x", runner)
    assert "shutting down" in exc.value.message


async def test_jobs_left_by_a_stopped_node_are_reported_as_interrupted(tmp_path):
    d = tmp_path / "jobs"
    d.mkdir()
    (d / "abc123.json").write_text(json.dumps({"id": "abc123", "kind": "migrate", "envid": 4100,
                                               "target": "h:1", "method": "pgfault",
                                               "started": 1.0}))
    (d / "junk.json").write_text("not json")
    (d / "0junk.json").write_text('{"id": "x"}')          # read first: no kind
    t = JobTable(FakeNode(), d)
    async with trio.open_nursery() as nursery:
        await nursery.start(t.run)
        listed = t.list()
        nursery.cancel_scope.cancel()
    assert [(j["id"], j["state"]) for j in listed] == [("abc123", "interrupted")]
    assert "stopped while this migrate of env 4100" in listed[0]["error"]["message"]
    assert not list(d.glob("*.json"))


@pytest.mark.parametrize("size,kept", [(4096, True), (4097, False), (1 << 20, False)])
async def test_a_job_file_is_read_up_to_4_kib_and_a_longer_one_is_junk(tmp_path, size, kept):
    """Every file read has a limit: a job's file is read up to 4 KiB (it
    holds about 150 bytes); one longer is removed unread, like any junk."""
    d = tmp_path / "jobs"
    d.mkdir()
    body = json.dumps({"id": "abc123", "kind": "save", "envid": 4100, "target": "t",
                       "started": 1.0})
    (d / "abc123.json").write_text(body + " " * (size - len(body)))
    t = JobTable(FakeNode(), d)
    async with trio.open_nursery() as nursery:
        await nursery.start(t.run)
        listed = t.list()
        nursery.cancel_scope.cancel()
    assert [j["id"] for j in listed] == (["abc123"] if kept else [])
    assert not list(d.glob("*.json"))

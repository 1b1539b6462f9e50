"""Jobs: every migrate, save and load is a job of the node that starts it
(as a migration is a job of QEMU's source), with an id, a state, progress
and, at the end, its statistics or its error.  A job runs in the node, not
in the connection of the client that asked for it: the client only
watches, and may go away.

    RUNNING -> SUCCEEDED | FAILED | CANCELLED
    (INTERRUPTED: found unfinished in the data directory when the node started)

A job can be cancelled until its migration has decided (session.py): then
it rolls back and the env is exactly as it was.  The last FINISHED_KEPT
finished jobs are kept for `jmigctl jobs`.  Each running job has a small
file in DATA_DIR/jobs/, removed when it finishes, so that a node started
again on the same data directory reports the jobs it could not settle.
"""
from __future__ import annotations

import enum
import json
import os
import time
from collections import deque
from pathlib import Path

import attrs
import trio

from ...errors import Error
from .base import MigrationError
from .session import Decision

FINISHED_KEPT = 100
MAX_JOB_FILE = 4096                 # bytes: a job's file is about 150; a longer one is junk
PROGRESS_INTERVAL = 0.1             # watchers hear of progress at most this often
TRACE_KEPT = 10_000                 # trace lines a job keeps for its watchers


class JobState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


@attrs.define(eq=False)
class Job:
    id: str
    kind: str                       # migrate, save, load
    envid: int | None
    target: str                     # HOST:P, or an image name
    method: str | None = None
    reason: str = ""                # who asked, when not a person: a drain, the balancer
    state: JobState = JobState.RUNNING
    progress: dict = attrs.Factory(dict)
    result: dict | None = None
    error: dict | None = None
    started: float = attrs.Factory(time.time)
    finished: float | None = None
    session: object = None          # the Outbound, once it exists
    lines: list = attrs.Factory(list)   # trace lines (--trace), for watchers
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    changed: trio.Event = attrs.Factory(trio.Event)
    done: trio.Event = attrs.Factory(trio.Event)

    @property
    def decided(self) -> bool:
        s = self.session
        return s is not None and getattr(s, "decision", Decision.PENDING) is not Decision.PENDING

    def report(self, progress: dict) -> None:
        self.progress.update(progress)
        self.changed.set()

    def trace_line(self, text: str) -> None:
        if len(self.lines) < TRACE_KEPT:
            self.lines.append(text)
            self.changed.set()

    def summary(self) -> dict:
        return {"id": self.id, "kind": self.kind, "envid": self.envid, "target": self.target,
                "method": self.method, "reason": self.reason, "state": str(self.state), "progress": dict(self.progress),
                "result": self.result, "error": self.error, "started": self.started,
                "finished": self.finished}

    async def next_change(self) -> None:
        """Wait for the next progress report (or the end)."""
        await self.changed.wait()
        self.changed = trio.Event()


class JobTable:
    def __init__(self, node, directory: Path):
        self.node = node
        self.dir = directory
        self.running: dict[str, Job] = {}
        self.finished: deque[Job] = deque(maxlen=FINISHED_KEPT)
        self.closed = False                 # shutting down: no new jobs
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._recover_interrupted()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _recover_interrupted(self) -> None:
        """Jobs whose files are still here did not finish before the node
        stopped: report them."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            files = sorted(self.dir.glob("*.json"))
        except OSError:
            return
        for f in files:
            try:
                with open(f, "rb") as fh:
                    raw = fh.read(MAX_JOB_FILE + 1)
                if len(raw) > MAX_JOB_FILE:
                    raise ValueError("too long")
                d = json.loads(raw)
                job = Job(id=str(d["id"]), kind=str(d["kind"]), envid=d.get("envid"),
                          target=str(d.get("target", "")), method=d.get("method"),
                          state=JobState.INTERRUPTED, started=float(d.get("started", 0)),
                          finished=time.time())
            except (OSError, ValueError, KeyError, TypeError):
                f.unlink(missing_ok=True)
                continue
            job.error = {"code": "interrupted", "message": (
                f"the node stopped while this {job.kind} of env {job.envid} "
                f"({job.target}) was under way; the env went with it unless its "
                "destination had committed it")}
            self.finished.append(job)
            self.node.log.warning("job interrupted by the last stop", job=job.id, kind=job.kind,
                                  envid=job.envid, target=job.target)
            f.unlink(missing_ok=True)

    def start(self, kind: str, envid: int | None, target: str, runner,
              method: str | None = None, reason: str = "") -> Job:
        """Start runner(job) as a job; returns it at once."""
        if self.closed or self._nursery is None:
            raise MigrationError("bad-state", f"{self.node.name} is shutting down; it starts "
                                 "no new jobs")
        job = Job(id=self._new_id(), kind=kind, envid=envid, target=target, method=method,
                  reason=reason)
        self.running[job.id] = job
        self._write(job)
        self._nursery.start_soon(self._run, job, runner)
        return job

    def _new_id(self) -> str:
        while True:
            jid = os.urandom(3).hex()
            if jid not in self.running and all(j.id != jid for j in self.finished):
                return jid

    def _write(self, job: Job) -> None:
        try:
            (self.dir / f"{job.id}.json").write_text(json.dumps(
                {"id": job.id, "kind": job.kind, "envid": job.envid, "target": job.target,
                 "method": job.method, "started": job.started}))
        except OSError as exc:
            self.node.log.warning("cannot record job", job=job.id, error=exc.strerror)

    async def _run(self, job: Job, runner) -> None:
        log = self.node.log.bind(job=job.id, kind=job.kind, envid=job.envid)
        with job.scope:
            try:
                job.result = await runner(job)
                job.state = JobState.SUCCEEDED
            except Error as exc:
                job.state = JobState.FAILED
                job.error = {"code": exc.code, "message": exc.message}
            except Exception as exc:                  # a bug: the job fails, the node lives
                log.exception("job failed unexpectedly")
                job.state = JobState.FAILED
                job.error = {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}
        if job.scope.cancelled_caught:
            job.state = JobState.CANCELLED
            job.error = {"code": "cancelled", "message": self._cancel_message(job)}
        job.finished = time.time()
        del self.running[job.id]
        self.finished.append(job)
        try:
            (self.dir / f"{job.id}.json").unlink(missing_ok=True)
        except OSError:
            pass
        log.info("job finished", state=str(job.state), error=job.error)
        job.done.set()
        job.changed.set()

    def _cancel_message(self, job: Job) -> str:
        return (f"cancelled; env {job.envid} is back on {self.node.name} as it was"
                if job.kind != "load" else "cancelled; nothing was created")

    def get(self, jid: str) -> Job:
        job = self.running.get(jid) or next((j for j in self.finished if j.id == jid), None)
        if job is None:
            raise MigrationError("no-such-job", f"no job {jid!r} on {self.node.name} "
                                 "(`jmigctl jobs` lists them)")
        return job

    def cancel(self, jid: str) -> Job:
        """Stop a job before its migration's decision (it rolls back)."""
        job = self.get(jid)
        if job.state is not JobState.RUNNING:
            raise MigrationError("bad-state", f"job {jid} has {job.state} already")
        if job.decided:
            raise MigrationError("bad-state", f"job {jid} is past its commit: env {job.envid} "
                                 f"is {job.target}'s now; it can no longer be cancelled")
        job.scope.cancel()
        return job

    def list(self) -> list[dict]:
        """Jobs in flight (oldest first), then finished ones (newest first)."""
        return [j.summary() for j in [*self.running.values(), *reversed(self.finished)]]

    async def shutdown(self, log) -> None:
        """Stop taking jobs; cancel those not yet decided (they roll back) and
        let the others finish."""
        self.closed = True
        for job in list(self.running.values()):
            if not job.decided:
                log.info("cancelling job for the shutdown", job=job.id, kind=job.kind,
                         envid=job.envid)
                job.scope.cancel()
        for job in list(self.running.values()):
            await job.done.wait()

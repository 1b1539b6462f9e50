"""The control protocol (port P+3): requests from jmigctl, one at a time per
connection.

    client -> node   {t: req, id: N, op: NAME, args: {...}}
    node -> client   {t: push, id: N, kind: "job" | "progress" | "console", data: ...}  (0 or more)
    node -> client   {t: resp, id: N, ok: true, result: ...}
                  or {t: resp, id: N, ok: false, error: {code, message}}

migrate, save and load start a job of the node (migration/jobs.py) and,
unless asked to detach, watch it: a "job" push names it, "progress"
pushes follow, and the response is the job's result.  A client that goes
away stops watching; the job goes on.

Error codes: every jmig error's code (bad-request, unknown-op,
no-such-env, bad-state, no-memory, no-free-env, bad-elf, no-such-program,
bad-name, exists, no-such-image, bad-image, unreachable, refused, timeout,
link-lost, cancelled, in-doubt, no-such-job, failed, internal).
"""
from __future__ import annotations

import os

import attrs
import trio

from .. import programs
from ..errors import Error
from ..kernel import events as ev
from ..proto.image import max_image_bytes, scan_file
from ..proto.migration import MAX_PREFETCH
from ..proto.pstream import StreamError
from ..proto.wire import ConnectionClosed, FramedStream
from .args import BadRequest, arg_bool, arg_envid, arg_int, arg_str
from .console import dropped_notice
from .disk import DiskError, check_name, fsync_dir, hidden_file
from .drain import drain
from .migration import Job, JobState
from .migration.jobs import PROGRESS_INTERVAL
from .pagemap import pagemap
from .tasks import nursery as open_nursery

MAX_ARGS = 64
MAX_ARG_LEN = 1024
EXPORT_CHUNK = 512 << 10          # image bytes per push (control replies hold 1 MiB bins)
MAX_UPLOADS = 4                   # image imports open at once on one connection


@attrs.define(eq=False)
class Upload:
    """An image arriving over this connection (image_import_*): written to a
    hidden file beside its final name, checked whole, then renamed."""
    name: str
    path: object
    tmp: object
    file: object
    force: bool
    size: int
    written: int = 0

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


class ControlSession:
    def __init__(self, node, fs: FramedStream):
        self.node = node
        self.fs = fs
        self.uploads: dict[str, Upload] = {}

    async def run(self) -> None:
        try:
            await self._serve()
        finally:
            for up in self.uploads.values():       # the client went away mid-import
                up.discard()
            self.uploads.clear()

    async def _serve(self) -> None:
        while True:
            req = await self.fs.receive()
            rid = req.get("id")
            if req.get("t") != "req" or not isinstance(rid, int) or not isinstance(req.get("op"), str):
                await self._error(rid, "bad-request", "expected {t: req, id: int, op: str, args: map}")
                continue
            op = req["op"]
            args = req.get("args") or {}
            handler = getattr(self, "op_" + op.replace("-", "_"), None)
            if handler is None or not isinstance(args, dict):
                await self._error(rid, "unknown-op" if handler is None else "bad-request",
                                  f"unknown operation {op!r}" if handler is None
                                  else "args must be a map")
                continue
            try:
                result = await handler(rid, args)
            except Error as exc:
                await self._error(rid, exc.code, exc.message)
            except OSError as exc:
                await self._error(rid, "failed", f"{type(exc).__name__}: {exc}")
            else:
                await self.fs.send({"t": "resp", "id": rid, "ok": True, "result": result})

    async def _error(self, rid, code: str, message: str) -> None:
        await self.fs.send({"t": "resp", "id": rid, "ok": False,
                            "error": {"code": code, "message": message}})

    async def push(self, rid: int, kind: str, data) -> None:
        await self.fs.send({"t": "push", "id": rid, "kind": kind, "data": data})

    async def watch(self, rid: int, job: Job):
        """Push a job's progress (at most every PROGRESS_INTERVAL s) until it
        ends; its result, or its error raised."""
        await self.push(rid, "job", job.summary())
        shown = 0                                 # trace lines pushed so far
        while not job.done.is_set():
            await job.next_change()
            if len(job.lines) > shown:
                await self.push(rid, "trace", {"lines": job.lines[shown:]})
                shown = len(job.lines)
            if job.done.is_set():
                break
            await self.push(rid, "progress", dict(job.progress))
            with trio.move_on_after(PROGRESS_INTERVAL):       # at most so often
                await job.done.wait()
        if len(job.lines) > shown:
            await self.push(rid, "trace", {"lines": job.lines[shown:]})
        if job.progress:
            await self.push(rid, "progress", dict(job.progress))
        if job.state is not JobState.SUCCEEDED:
            raise Error(job.error["message"], code=job.error["code"])
        return {**job.result, "job": job.id}

    async def start(self, rid: int, args: dict, job: Job):
        if arg_bool(args, "detach"):
            return {"job": job.id, **job.summary()}
        return await self.watch(rid, job)

    # -- processes ---------------------------------------------------------------
    async def op_ps(self, rid, args):
        envs = self.node.kernel.ps()
        for e in envs:
            e["program"] = e["name"]
            extra = self.node.migrations.annotate(e["envid"])
            if e["envid"] in self.node.balancer.pinned:
                extra = f"{extra}, pinned" if extra else "pinned"
            if extra:
                e["state"] = f"{e['state']}, {extra}" if e["state"] else extra
        return {"envs": envs}

    async def op_spawn(self, rid, args):
        name = arg_str(args, "program", 64)
        argv = args.get("args", [])
        if not isinstance(argv, list) or len(argv) > MAX_ARGS or not all(
                isinstance(a, str) and len(a) <= MAX_ARG_LEN for a in argv):
            raise BadRequest(f"args must be a list of at most {MAX_ARGS} strings")
        elf = args.get("elf")
        if elf is not None and not isinstance(elf, bytes):
            raise BadRequest("elf must be bytes")
        envid = args.get("envid")
        if envid is not None:
            envid = arg_envid(args)
        if elf is None:
            check_name(name, "program name")
        e = self.node.spawn(name, argv, elf=elf, envid=envid, paused=arg_bool(args, "paused"))
        if elf is not None:
            # Uploaded: kept on the node's disk, so that ls shows it and spawn NAME runs it.
            try:
                check_name(name, "program name")
                self.node.disk.write_program(name, elf)
            except (DiskError, OSError) as exc:
                self.node.log.warning("uploaded program not kept", program=name,
                                      error=str(exc))
        return {"envid": e.env_id, "new_envid": e.env_id, "program": name}

    async def op_pause(self, rid, args):
        envid = arg_envid(args)
        self.node.kernel.pause(envid)
        self.node.log.info("env paused", envid=envid)
        return {"envid": envid}

    async def op_resume(self, rid, args):
        envid = arg_envid(args)
        self.node.kernel.resume(envid)
        self.node.poke()
        self.node.log.info("env resumed", envid=envid)
        return {"envid": envid}

    async def op_kill(self, rid, args):
        envid = arg_envid(args)
        e = self.node.kernel.get_env(envid)
        if e.frozen or envid in self.node.migrations.busy:
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} is "
                                 f"{e.frozen or self.node.migrations.busy[envid]}; it cannot be "
                                 "killed until that finishes (`jmigctl jobs` shows what holds it)")
        self.node.kernel.kill(envid)
        self.node.dispatch_events()
        return {"envid": envid}

    async def op_copy(self, rid, args):
        envid = arg_envid(args)
        e = self.node.kernel.copy(envid)
        self.node.dispatch_events()
        self.node.log.info("env copied", envid=envid, new_envid=e.env_id)
        return {"envid": envid, "new_envid": e.env_id}

    async def op_vmmap(self, rid, args):
        envid = arg_envid(args)
        return {"envid": envid, "ranges": self.node.kernel.vmmap(envid)}

    async def op_pagemap(self, rid, args):
        """The env's pages as runs of (first vpn, count, state) for the web
        view (node/pagemap.py)."""
        return pagemap(self.node.kernel, self.node.migrations.pager, arg_envid(args))

    # -- the node ----------------------------------------------------------------
    async def op_info(self, rid, args):
        return self.node.info()

    async def op_ls(self, rid, args):
        d = self.node.disk
        return {"programs": d.list_programs(), "bundled": programs.names(),
                "images": d.list_images()}

    async def op_console(self, rid, args):
        lines = args.get("lines", 200)
        if not isinstance(lines, int) or lines < 0:
            raise BadRequest("lines must be a non-negative integer")
        envid = arg_envid(args) if args.get("envid") is not None else None
        hub = self.node.console
        recent = hub.recent(lines, envid)
        if not arg_bool(args, "follow"):
            return {"text": recent}
        if recent:
            await self.push(rid, "console", {"text": recent})
        chan = hub.follow()
        tracer = self.node.tracer

        def sink(line: str) -> None:
            hub.inject(chan, line + "\n")
        # trace: the node's trace lines too (unless they are on its console already).
        traced = arg_bool(args, "trace") and tracer.console is None
        if traced:
            tracer.subscribers.add(sink)
        try:
            async with open_nursery() as nursery:
                async def watch_peer():
                    # The client ends a follow by closing the connection.
                    try:
                        await self.fs.receive()
                    except (ConnectionClosed, Exception):
                        pass
                    nursery.cancel_scope.cancel()
                nursery.start_soon(watch_peer)
                async for envid, text in chan:
                    dropped = hub.take_dropped(chan)
                    if dropped:
                        text = dropped_notice(dropped) + text
                    await self.push(rid, "console", {"text": text, "envid": envid})
        finally:
            tracer.subscribers.discard(sink)
            hub.unfollow(chan)
        return {"text": ""}

    async def op_stats(self, rid, args):
        node = self.node
        return {"info": node.info(), "pager": node.migrations.stats(),
                "ipc": node.remote.figures()}

    # -- jobs: images and migration ------------------------------------------------------
    async def op_save(self, rid, args):
        envid = arg_envid(args)
        name = check_name(arg_str(args, "name", 64), "image name")
        job = self.node.migrations.save(envid, name, force=arg_bool(args, "force"),
                                        pause=arg_bool(args, "pause"), trace=arg_bool(args, "trace"))
        return await self.start(rid, args, job)

    async def op_load(self, rid, args):
        name = check_name(arg_str(args, "name", 64), "image name")
        job = self.node.migrations.load(name, resume=arg_bool(args, "resume"),
                                        trace=arg_bool(args, "trace"))
        return await self.start(rid, args, job)

    async def op_migrate(self, rid, args):
        method = args.get("method", "normal")
        then = args.get("then") or "stop"
        if then not in ("stop", "pgfault"):
            raise BadRequest("then must be stop or pgfault")
        timeout = args.get("timeout")
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(
                timeout, bool) or not 0.1 <= timeout <= 3600):
            raise BadRequest("timeout must be 0.1 .. 3600 seconds")
        page_server = args.get("page_server")
        if page_server is not None:
            page_server = arg_str(args, "page_server", 255)
        push = args.get("push", True)
        if not isinstance(push, bool):
            raise BadRequest("push must be true or false")
        job = self.node.migrations.migrate(
            arg_envid(args), arg_str(args, "to", 300), method if isinstance(method, str) else "?",
            keep=arg_bool(args, "keep"), resume=arg_bool(args, "resume"), push=push,
            prefetch=arg_int(args, "prefetch", 0, 0, MAX_PREFETCH),
            max_rounds=arg_int(args, "max_rounds", 8, 1, 1000),
            downtime_limit_ms=arg_int(args, "downtime_limit_ms", 50, 0, 3_600_000), then=then,
            timeout=timeout, page_server=page_server, trace=arg_bool(args, "trace"))
        return await self.start(rid, args, job)

    async def op_jobs(self, rid, args):
        return {"jobs": self.node.migrations.jobs.list()}

    async def op_watch(self, rid, args):
        return await self.watch(rid, self.node.migrations.jobs.get(arg_str(args, "job", 16)))

    async def op_cancel(self, rid, args):
        job = self.node.migrations.jobs.cancel(arg_str(args, "job", 16))
        with trio.move_on_after(30):
            await job.done.wait()
        return job.summary()

    async def op_wait_arrival(self, rid, args):
        """Block until the next migration arrives here (any method); with
        trace, push this node's trace lines meanwhile (kind "trace")."""
        if not arg_bool(args, "trace"):
            return await self.node.wait_arrival()
        send, recv = trio.open_memory_channel(1024)

        def sink(line: str) -> None:
            try:
                send.send_nowait(line)
            except trio.WouldBlock:
                pass                              # a slow watcher loses trace lines, not the node
        tracer = self.node.tracer
        tracer.subscribers.add(sink)
        try:
            async with open_nursery() as nursery:
                async def forward():
                    async for line in recv:
                        lines = [line]
                        while True:
                            try:
                                lines.append(recv.receive_nowait())
                            except trio.WouldBlock:
                                break
                        await self.push(rid, "trace", {"lines": lines})
                nursery.start_soon(forward)
                info = await self.node.wait_arrival()
                await trio.sleep(0.05)            # the lines of the arrival itself
                nursery.cancel_scope.cancel()
        finally:
            tracer.subscribers.discard(sink)
        while True:
            try:
                lines = [recv.receive_nowait()]
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            await self.push(rid, "trace", {"lines": lines})
        return info

    # -- images moving between nodes and files ----------------------------------------------
    def _image(self, args) -> tuple[str, object]:
        name = check_name(arg_str(args, "name", 64), "image name")
        return name, self.node.disk.image_path(name)

    async def op_image_export(self, rid, args):
        """An image's bytes, as `data` pushes of EXPORT_CHUNK bytes; the
        response gives the total."""
        name, path = self._image(args)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise DiskError("no-such-image", f"no image {name} on {self.node.name} "
                            "(see `jmigctl ls`)") from None
        size = 0
        with f:
            while data := await trio.to_thread.run_sync(f.read, EXPORT_CHUNK):
                await self.push(rid, "data", {"b": data})
                size += len(data)
        return {"name": name, "size": size}

    async def op_image_import_begin(self, rid, args):
        name, path = self._image(args)
        force = arg_bool(args, "force")
        limit = max_image_bytes(self.node.kernel.phys.nframes)
        size = arg_int(args, "size", -1, 1, limit)
        if path.exists() and not force:
            raise DiskError("exists", f"image {name} already exists on {self.node.name}; "
                            "use --force to replace it")
        if len(self.uploads) >= MAX_UPLOADS:
            raise BadRequest(f"at most {MAX_UPLOADS} imports at once on one connection")
        uid = os.urandom(4).hex()
        fd, tmp = hidden_file(path, "upload")
        self.uploads[uid] = Upload(name, path, tmp, open(fd, "wb"), force, size)
        return {"upload": uid}

    def _upload(self, args) -> tuple[str, Upload]:
        uid = args.get("upload")
        up = self.uploads.get(uid) if isinstance(uid, str) else None
        if up is None:
            raise BadRequest(f"no import {uid!r} on this connection")
        return uid, up

    async def op_image_import_data(self, rid, args):
        uid, up = self._upload(args)
        data = args.get("b")
        if not isinstance(data, bytes):
            raise BadRequest("b must be bytes")
        if up.written + len(data) > up.size:
            self.uploads.pop(uid).discard()
            raise BadRequest(f"more than the {up.size} bytes announced; import abandoned")
        await trio.to_thread.run_sync(up.file.write, data)
        up.written += len(data)
        return {"written": up.written}

    async def op_image_import_end(self, rid, args):
        """Check the whole image, then put it in place (atomically)."""
        uid, up = self._upload(args)
        del self.uploads[uid]
        try:
            if up.written != up.size:
                raise BadRequest(f"{up.written} of the {up.size} bytes announced arrived")
            f = up.file
            await trio.to_thread.run_sync(lambda: (f.flush(), os.fsync(f.fileno())))
            f.close()
            try:
                scan = await trio.to_thread.run_sync(scan_file, up.tmp,
                                                     self.node.kernel.phys.nframes)
            except StreamError as exc:
                raise DiskError("bad-image", f"image {up.name} rejected: {exc.message}") from None
            if up.path.exists() and not up.force:
                raise DiskError("exists", f"image {up.name} appeared on {self.node.name} "
                                "meanwhile; use --force to replace it")
            os.replace(up.tmp, up.path)
            fsync_dir(up.path.parent)
        except BaseException:
            up.discard()
            raise
        h = scan.header or {}
        self.node.log.info("image imported", image=up.name, bytes=up.size, envid=h.get("envid"))
        return {"name": up.name, "size": up.size, "pages": scan.pages, "envid": h.get("envid"),
                "program": h.get("name"), "checksum": f"{scan.trailer.crc:08x}"}

    # -- the cluster (cluster.py, drain.py, balance.py) ----------------------------------------
    async def op_cluster_heartbeat(self, rid, args):
        return self.node.membership.on_heartbeat(args, self.fs)

    async def op_cluster_leave(self, rid, args):
        return self.node.membership.on_leave(args)

    async def op_env_where(self, rid, args):
        return self.node.remote.on_where(args)

    async def op_ipc_try_send(self, rid, args):
        return self.node.remote.on_ipc_try_send(args)

    async def op_env_gone(self, rid, args):
        return self.node.remote.on_gone(args)

    async def op_env_call(self, rid, args):
        return self.node.remote.on_env_call(args)

    async def op_nodes(self, rid, args):
        return {"nodes": self.node.membership.view()}

    async def op_drain(self, rid, args):
        method = args.get("method") or "auto"
        if not isinstance(method, str):
            raise BadRequest("method must be a string")

        async def report(event):
            await self.push(rid, "drain", event)
        return await drain(self.node, method, arg_bool(args, "force"), report)

    async def op_cordon(self, rid, args):
        node = self.node
        on = args.get("on", True)
        if not isinstance(on, bool):
            raise BadRequest("on must be true or false")
        if node.cordoned != on:
            node.cordoned = on
            node.log.info("node cordoned" if on else "node uncordoned", by="jmigctl")
        return {"node": node.name, "cordoned": on}

    async def op_balance(self, rid, args):
        node = self.node
        on = args.get("on")
        if on is not None:
            if not isinstance(on, bool):
                raise BadRequest("on must be true or false")
            if node.balancer.on != on:
                node.balancer.on = on
                node.log.info("balancing " + ("on" if on else "off"))
        return {"node": node.name, "balance": node.balancer.on,
                "decisions": list(node.balancer.decisions)[-arg_int(args, "last", 10, 0, 100):]
                if args.get("last") else []}

    async def op_pin(self, rid, args):
        envid = arg_envid(args)
        on = args.get("on", True)
        if not isinstance(on, bool):
            raise BadRequest("on must be true or false")
        self.node.balancer.pin(envid, on)
        return {"envid": envid, "pinned": on}

    async def op_recover(self, rid, args):
        return await self.node.migrations.recover(arg_envid(args), arg_bool(args, "force"))

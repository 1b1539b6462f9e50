"""The control protocol (port P+3): requests from jmigctl, one at a time per
connection.

    client -> node   {t: req, id: N, op: NAME, args: {...}}
    node -> client   {t: push, id: N, kind: "progress" | "console", data: ...}   (0 or more)
    node -> client   {t: resp, id: N, ok: true, result: ...}
                  or {t: resp, id: N, ok: false, error: {code, message}}

Error codes: bad-request, unknown-op, no-such-env, bad-state, no-memory,
no-free-env, bad-elf, no-such-program, bad-name, exists, no-such-image,
bad-image, unreachable, refused, failed, in-doubt, internal.
"""
from __future__ import annotations

import trio

from ..kernel import events as ev
from ..proto.pstream import StreamError
from ..proto.wire import ConnectionClosed, FramedStream
from .console import dropped_notice
from .disk import DiskError, check_name
from .migrate import MigrationError
from .tasks import nursery as open_nursery

MAX_ARGS = 64
MAX_ARG_LEN = 1024
PROGRESS_INTERVAL = 0.1


class BadRequest(Exception):
    pass


def _envid(args: dict) -> int:
    v = args.get("envid")
    if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 1 << 31:
        raise BadRequest(f"envid must be a positive env id, got {v!r}")
    return v


def _bool(args: dict, key: str) -> bool:
    v = args.get(key, False)
    if not isinstance(v, bool):
        raise BadRequest(f"{key} must be true or false")
    return v


def _str(args: dict, key: str, maxlen: int = 256) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v or len(v) > maxlen:
        raise BadRequest(f"{key} must be a non-empty string of at most {maxlen} characters")
    return v


class ControlSession:
    def __init__(self, node, fs: FramedStream):
        self.node = node
        self.fs = fs

    async def run(self) -> None:
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
            except BadRequest as exc:
                await self._error(rid, "bad-request", str(exc))
            except ev.KernelError as exc:
                await self._error(rid, exc.code, exc.message)
            except DiskError as exc:
                await self._error(rid, exc.code, exc.message)
            except MigrationError as exc:
                await self._error(rid, exc.code, exc.message)
            except StreamError as exc:
                await self._error(rid, "bad-image", f"image rejected: {exc}")
            except OSError as exc:
                await self._error(rid, "failed", f"{type(exc).__name__}: {exc}")
            else:
                await self.fs.send({"t": "resp", "id": rid, "ok": True, "result": result})

    async def _error(self, rid, code: str, message: str) -> None:
        await self.fs.send({"t": "resp", "id": rid, "ok": False,
                            "error": {"code": code, "message": message}})

    async def push(self, rid: int, kind: str, data) -> None:
        await self.fs.send({"t": "push", "id": rid, "kind": kind, "data": data})

    def progress_pusher(self, rid: int):
        """A progress callback that pushes at most every PROGRESS_INTERVAL s."""
        last = [0.0]

        async def progress(done: int, total: int, nbytes: int) -> None:
            now = trio.current_time()
            if now - last[0] >= PROGRESS_INTERVAL or done >= total:
                last[0] = now
                await self.push(rid, "progress", {"done": done, "total": total, "bytes": nbytes})
        return progress

    # -- processes ---------------------------------------------------------------
    async def op_ps(self, rid, args):
        envs = self.node.kernel.ps()
        for e in envs:
            extra = self.node.pager.annotate(e["envid"]) or self.node.busy.get(e["envid"], "")
            if extra:
                e["state"] = f"{e['state']}, {extra}" if e["state"] else extra
        return {"envs": envs}

    async def op_spawn(self, rid, args):
        name = _str(args, "program", 64)
        argv = args.get("args", [])
        if not isinstance(argv, list) or len(argv) > MAX_ARGS or not all(
                isinstance(a, str) and len(a) <= MAX_ARG_LEN for a in argv):
            raise BadRequest(f"args must be a list of at most {MAX_ARGS} strings")
        elf = args.get("elf")
        if elf is not None and not isinstance(elf, bytes):
            raise BadRequest("elf must be bytes")
        envid = args.get("envid")
        if envid is not None:
            envid = _envid(args)
        if elf is None:
            check_name(name, "program name")
        e = self.node.spawn(name, argv, elf=elf, envid=envid, paused=_bool(args, "paused"))
        return {"envid": e.env_id, "program": name}

    async def op_pause(self, rid, args):
        envid = _envid(args)
        self.node.kernel.pause(envid)
        self.node.log.info("env paused", envid=envid)
        return {"envid": envid}

    async def op_resume(self, rid, args):
        envid = _envid(args)
        self.node.kernel.resume(envid)
        self.node.poke()
        self.node.log.info("env resumed", envid=envid)
        return {"envid": envid}

    async def op_kill(self, rid, args):
        envid = _envid(args)
        e = self.node.kernel.get_env(envid)
        if e.frozen or envid in self.node.busy:
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} is "
                                 f"{e.frozen or self.node.busy[envid]}; it cannot be "
                                 "killed until that finishes")
        self.node.kernel.kill(envid)
        self.node.dispatch_events()
        return {"envid": envid}

    async def op_copy(self, rid, args):
        envid = _envid(args)
        e = self.node.kernel.copy(envid)
        self.node.dispatch_events()
        self.node.log.info("env copied", envid=envid, new_envid=e.env_id)
        return {"envid": envid, "new_envid": e.env_id}

    async def op_vmmap(self, rid, args):
        envid = _envid(args)
        return {"envid": envid, "ranges": self.node.kernel.vmmap(envid)}

    # -- the node ----------------------------------------------------------------
    async def op_info(self, rid, args):
        return self.node.info()

    async def op_ls(self, rid, args):
        from .. import programs
        d = self.node.disk
        return {"programs": d.list_programs(), "bundled": programs.names(),
                "images": d.list_images()}

    async def op_console(self, rid, args):
        lines = args.get("lines", 200)
        if not isinstance(lines, int) or lines < 0:
            raise BadRequest("lines must be a non-negative integer")
        hub = self.node.console
        recent = hub.recent(lines)
        if not _bool(args, "follow"):
            return {"text": recent}
        if recent:
            await self.push(rid, "console", {"text": recent})
        chan = hub.follow()
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
            hub.unfollow(chan)
        return {"text": ""}

    async def op_stats(self, rid, args):
        node = self.node
        return {"info": node.info(), "pager": node.pager.stats() if hasattr(node.pager, "stats")
                else {}}

    # -- images and migration ------------------------------------------------------
    async def op_save(self, rid, args):
        from .images import save
        envid = _envid(args)
        name = check_name(_str(args, "name", 64), "image name")
        return await save(self.node, envid, name, force=_bool(args, "force"),
                          pause=_bool(args, "pause"), progress=self.progress_pusher(rid))

    async def op_load(self, rid, args):
        from .images import load
        name = check_name(_str(args, "name", 64), "image name")
        return await load(self.node, name, resume=_bool(args, "resume"),
                          progress=self.progress_pusher(rid))

    async def op_migrate(self, rid, args):
        with self.node.io():
            return await self._migrate(rid, args)

    async def _migrate(self, rid, args):
        envid = _envid(args)
        target = _str(args, "to", 300)
        method = args.get("method", "normal")
        node = self.node
        keep = _bool(args, "keep")
        resume = _bool(args, "resume")
        progress = self.progress_pusher(rid)
        if method == "normal":
            return await node.migrator.send_normal(envid, target, keep=keep, resume=resume,
                                                   progress=progress)
        if method == "pgfault":
            return await node.pager.send_pgfault(
                envid, target, keep=keep, resume=resume, push=args.get("push", True),
                prefetch=args.get("prefetch", 0), progress=progress)
        if method == "precopy":
            from .precopy import send_precopy
            return await send_precopy(node, envid, target, args, progress=progress)
        raise BadRequest(f"unknown method {method!r}: use normal, pgfault or precopy")

    async def op_wait_arrival(self, rid, args):
        """Block until the next migration arrives here (any method)."""
        return await self.node.wait_arrival()

    async def op_recover(self, rid, args):
        envid = _envid(args)
        force = _bool(args, "force")
        node = self.node
        res = await node.migrator.recover(envid, force)
        if res is None:
            res = await node.pager.recover(envid, force)
        return res

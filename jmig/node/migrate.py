"""Sending a process stream to another node with a two-phase commit.

Normal migration uses it with every page's contents (destination port P);
demand-paging migration (pager.py) with page table entries only (P+1).

    source -> dest   {t: begin, mid, method, src, pages, resume, ...}
    source -> dest   {t: data, b: <process-stream bytes>} ...
    source -> dest   {t: end}
    dest -> source   {t: prepared, envid}        the stream verified, env held
    source -> dest   {t: commit}
    dest -> source   {t: committed, envid, resumed}
    (any time)       {t: error, code, message}
    new connection:  {t: status, mid} -> {t: status, committed, envid}

The destination builds the env as "incoming" (never runnable) while the
stream arrives and throws it away, frames and all, if anything goes wrong
before the commit.  The source keeps its env paused and frozen until it
hears "committed", and only then gives it up (normal: destroys its copy,
or with --keep leaves it paused; pgfault: keeps it frozen to serve pages).
If the link breaks after the commit was sent, the source asks the
destination whether the commit happened; while it cannot tell, the env
stays frozen "in doubt" so that it can never run twice (`jmigctl recover`).
"""
from __future__ import annotations

import os
import time

import trio

from ..kernel import events as ev
from ..proto.frames import ProtocolError
from ..proto.handshake import AuthError
from ..proto.pstream import StreamError
from ..proto.wire import ConnectionClosed, FramedStream, parse_node, send_error
from .failpoints import failpoint
from .procstream import StreamRestorer, StreamWriter

REPLY_TIMEOUT = 30.0
IN_DOUBT = "in doubt (migration outcome unknown)"
PORT_OFFSET = {"normal": 0, "pgfault": 1}


class MigrationError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def parse_target(target: str) -> tuple[str, int]:
    try:
        return parse_node(target)
    except ValueError as exc:
        raise MigrationError("bad-request", str(exc)) from None


class Migrator:
    def __init__(self, node):
        self.node = node
        self.committed: dict[str, int] = {}     # migration id -> envid (destination side)
        self.in_doubt: dict[int, dict] = {}     # envid -> {mid, host, port, kind} (source side)

    # -- source ------------------------------------------------------------------
    async def send_normal(self, envid: int, target: str, *, keep: bool = False,
                          resume: bool = False, progress=None) -> dict:
        stats = await self.send(envid, target, "normal", resume=resume, progress=progress)
        k = self.node.kernel
        if keep:
            # The kept copy is an ordinary paused env again (send() left it
            # frozen "migrated", which nothing would ever clear).
            k.get_env(envid).frozen = ""
            self.node.log.info("migration kept source copy", envid=envid)
        else:
            k.env_destroy(k.get_env(envid), 0, f"migrated to {target}")
            self.node.dispatch_events()
        stats["kept"] = keep
        return stats

    async def send(self, envid: int, target: str, method: str, *, resume: bool = False,
                   progress=None, extra: dict | None = None, on_prepared=None,
                   on_failed=None) -> dict:
        """Stream env `envid` to `target` and commit it there.  Returns the
        statistics; afterwards the local env is still paused and frozen
        "migrated" (the caller decides its fate).  On failure before the
        commit the env is left paused and unfrozen, and MigrationError says
        why.  on_prepared(mid, fs, writer) runs between prepare and commit
        (writer: the StreamWriter that described the env)."""
        node = self.node
        k = node.kernel
        host, port = parse_target(target)
        e = k.get_env(envid)
        if e.frozen or envid in node.busy:
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} is {e.frozen or node.busy[envid]}")
        remote = method == "pgfault"
        t0 = time.perf_counter()
        was_paused = e.paused
        if not e.paused:
            k.pause(envid)
        t_pause = time.perf_counter()
        e.frozen = "migrating"
        mid = os.urandom(8).hex()
        commit_sent = False
        committed = False
        fs = None
        try:
            if k.remote_pages(envid):
                await node.pager.pull_all(envid)
            writer = StreamWriter(k, envid, node.name, method, remote=remote)
            try:
                fs = await node.connect(host, port + PORT_OFFSET[method], method)
            except (OSError, trio.TooSlowError) as exc:
                raise MigrationError("unreachable", f"cannot reach {target}: {exc}") from None
            begin = {"t": "begin", "mid": mid, "method": method, "src": node.name,
                     "pages": writer.npages, "resume": resume}
            if extra:
                begin.update(extra(fs) if callable(extra) else extra)
            await fs.send(begin)
            failpoint(f"{method}.src.after_begin")
            for batch in writer.batches():
                await fs.send({"t": "data", "b": b"".join(batch)})
                if progress is not None:
                    await progress(writer.progress.done, writer.progress.total,
                                   writer.progress.nbytes)
            failpoint(f"{method}.src.after_data")
            await fs.send({"t": "end"})
            with trio.fail_after(REPLY_TIMEOUT):
                reply = await fs.receive()
            self._check_reply(reply, "prepared")
            failpoint(f"{method}.src.after_prepared")
            if on_prepared is not None:
                on_prepared(mid, fs, writer)
            commit_sent = True
            await fs.send({"t": "commit"})
            failpoint(f"{method}.src.after_commit")
            with trio.fail_after(REPLY_TIMEOUT):
                reply = await fs.receive()
            self._check_reply(reply, "committed")
            committed = True
            new_envid = reply["envid"]
        except (ConnectionClosed, ProtocolError, trio.TooSlowError, AuthError,
                MigrationError) as exc:
            if commit_sent:
                committed, new_envid = await self._resolve(envid, mid, host, port, method)
                if committed is None:
                    raise MigrationError("in-doubt", f"lost contact with {target} after the "
                                         f"commit; env {envid} is held until `jmigctl recover "
                                         f"{envid}` can settle where it runs") from None
            if not committed:
                if on_failed is not None:
                    on_failed(mid)
                if isinstance(exc, MigrationError):
                    raise
                if isinstance(exc, AuthError):
                    raise MigrationError("refused", f"{target} refused the connection: "
                                         f"{exc.message}") from None
                raise MigrationError("failed", f"migration to {target} failed: "
                                     f"{exc or type(exc).__name__}; env {envid} is still "
                                     "here, paused") from None
        finally:
            if fs is not None:
                await fs.aclose()
            if not committed and envid not in self.in_doubt and k.envs[envid & 0x3FF].env_id == envid:
                e.frozen = ""
        if committed:
            e.frozen = "migrated"
        t_done = time.perf_counter()
        nbytes = writer.progress.nbytes
        stats = {"envid": envid, "new_envid": new_envid, "method": method, "to": target,
                 "mid": mid, "pages": writer.npages, "bytes": nbytes,
                 "wire_bytes": fs.bytes_sent + fs.bytes_received,
                 "total_s": t_done - t0, "setup_s": t_pause - t0,
                 "downtime_s": t_done - t_pause, "was_paused": was_paused,
                 "mib_per_s": nbytes / (1 << 20) / (t_done - t_pause) if t_done > t_pause else 0,
                 "resumed": resume}
        node.log.info("migration committed at destination", envid=envid, new_envid=new_envid,
                      method=method, to=target, pages=stats["pages"], bytes=nbytes,
                      seconds=round(t_done - t0, 4))
        return stats

    @staticmethod
    def _check_reply(reply: dict, want: str) -> None:
        t = reply.get("t")
        if t == "error":
            raise MigrationError(str(reply.get("code", "refused")),
                                 f"destination refused: {reply.get('message', '')}")
        if t != want:
            raise ProtocolError(f"expected {want!r} from the destination, got {t!r}")

    async def query_status(self, host: str, port: int, method: str, mid: str) -> dict | None:
        """The destination's status reply for migration `mid` ({committed,
        envid, alive}), or None if it cannot be reached."""
        try:
            fs = await self.node.connect(host, port + PORT_OFFSET[method], method, timeout=5)
        except (OSError, trio.TooSlowError, AuthError, ProtocolError, ConnectionClosed):
            return None
        try:
            await fs.send({"t": "status", "mid": mid})
            with trio.fail_after(5):
                reply = await fs.receive()
        except (ConnectionClosed, ProtocolError, trio.TooSlowError):
            return None
        finally:
            await fs.aclose()
        return reply if reply.get("t") == "status" else None

    async def ask_status(self, host: str, port: int, method: str, mid: str):
        """Whether migration `mid` committed at the destination: (True /
        False, its envid), or (None, None) if it cannot be reached."""
        reply = await self.query_status(host, port, method, mid)
        if reply is None:
            return None, None
        return bool(reply.get("committed")), reply.get("envid")

    async def _resolve(self, envid: int, mid: str, host: str, port: int, method: str):
        """After losing the link post-commit: (True, envid) if the
        destination committed, (False, None) if not, (None, None) if it
        cannot be reached (the env is then held in doubt)."""
        for delay in (0.1, 0.3, 1.0):
            committed, new_envid = await self.ask_status(host, port, method, mid)
            if committed is not None:
                return committed, new_envid
            await trio.sleep(delay)
        e = self.node.kernel.get_env(envid)
        e.frozen = IN_DOUBT
        self.in_doubt[envid] = {"mid": mid, "host": host, "port": port, "method": method}
        return None, None

    async def recover(self, envid: int, force: bool = False) -> dict | None:
        """Settle an env held in doubt: ask the destination again; with
        force (the operator confirms the destination is gone) release it.
        None if this env is not in doubt."""
        info = self.in_doubt.get(envid)
        if info is None:
            return None
        committed, new_envid = await self.ask_status(info["host"], info["port"], info["method"],
                                                     info["mid"])
        k = self.node.kernel
        e = k.get_env(envid)
        if committed:
            del self.in_doubt[envid]
            if info["method"] == "pgfault":
                e.frozen = "migrated"
                return {"envid": envid, "outcome": "the destination has it; serving its pages",
                        "new_envid": new_envid}
            k.env_destroy(e, 0, "migration had committed")
            self.node.dispatch_events()
            return {"envid": envid, "outcome": "the destination has it", "new_envid": new_envid}
        if committed is False or force:
            del self.in_doubt[envid]
            e.frozen = ""
            return {"envid": envid, "outcome": "kept here, paused"}
        raise MigrationError("in-doubt", f"the destination {info['host']}:{info['port']} cannot "
                             "be reached; if it is gone for good, use --force")

    # -- destination -------------------------------------------------------------
    async def receive_port(self, fs: FramedStream) -> None:
        """Port P: normal migrations, pre-copy migrations and status queries."""
        first = await fs.receive()
        if first.get("t") == "begin" and first.get("method") == "precopy":
            from .precopy import receive_precopy
            await receive_precopy(self.node, fs, first)
        else:
            await self.receive(fs, "normal", first=first)

    async def receive(self, fs: FramedStream, method: str, on_commit=None,
                      first: dict | None = None) -> None:
        """Serve one connection on the migration port of `method`.
        on_commit(begin, env) runs right after the commit."""
        node = self.node
        if first is None:
            first = await fs.receive()
        if first.get("t") == "status":
            mid = first.get("mid")
            envid = self.committed.get(mid) if isinstance(mid, str) else None
            alive = envid is not None and node.kernel.envs[envid & 0x3FF].env_id == envid \
                and node.kernel.envs[envid & 0x3FF].status != 0
            await fs.send({"t": "status", "committed": envid is not None, "envid": envid,
                           "alive": alive})
            return
        if first.get("t") != "begin" or first.get("method") != method \
                or not isinstance(first.get("mid"), str):
            await fs.send({"t": "error", "code": "protocol",
                           "message": f"expected a {method} migration begin"})
            return
        mid = first["mid"]
        resume = bool(first.get("resume"))
        node.log.info("migration incoming", method=method, src=first.get("src"), mid=mid)
        t0 = time.perf_counter()
        restorer = StreamRestorer(node.kernel, keep_id=True, allow_remote=method == "pgfault")
        try:
            while True:
                msg = await fs.receive()
                t = msg.get("t")
                if t == "data" and isinstance(msg.get("b"), bytes):
                    restorer.feed(msg["b"])
                elif t == "end":
                    restorer.finish()
                    break
                else:
                    raise ProtocolError(f"unexpected {t!r} in a migration stream")
            failpoint(f"{method}.dst.before_prepared")
            await fs.send({"t": "prepared", "envid": restorer.env.env_id})
            failpoint(f"{method}.dst.after_prepared")
            msg = await fs.receive()
            if msg.get("t") != "commit":
                raise ProtocolError(f"expected commit, got {msg.get('t')!r}")
            env = restorer.commit(resume=False)
            self.committed[mid] = env.env_id
            if on_commit is not None:
                on_commit(first, env)
            if resume:
                node.kernel.resume(env.env_id)
            node.dispatch_events()
            node.poke()
            dt = time.perf_counter() - t0
            node.log.info("migration committed", envid=env.env_id, mid=mid, method=method,
                          resumed=resume, pages=restorer.pages, wire_bytes=fs.bytes_received,
                          seconds=round(dt, 4),
                          mib_per_s=round(fs.bytes_received / (1 << 20) / dt, 1) if dt else None)
            node.announce_arrival({"method": method, "envid": env.env_id,
                                   "src": first.get("src"), "pages": restorer.pages,
                                   "resumed": resume})
            failpoint(f"{method}.dst.after_commit")
            await fs.send({"t": "committed", "envid": env.env_id, "resumed": resume})
        except (StreamError, ev.KernelError) as exc:
            restorer.abort()
            node.dispatch_events()
            code = exc.code if isinstance(exc, ev.KernelError) else "bad-stream"
            node.log.warning("migration refused", mid=mid, reason=str(exc))
            await send_error(fs, code, str(exc))
        except BaseException:
            restorer.abort()
            node.dispatch_events()
            raise


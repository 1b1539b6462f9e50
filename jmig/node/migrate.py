"""Normal migration: the whole process at once, over the destination's port P.

    source -> dest   {t: begin, mid, method: "normal", src, pages, resume}
    source -> dest   {t: data, b: <process-stream bytes>} ...
    source -> dest   {t: end}
    dest -> source   {t: prepared, envid}        the stream verified, env held
    source -> dest   {t: commit}
    dest -> source   {t: committed, envid, resumed}
    (any time)       {t: error, code, message}

The destination builds the env as "incoming" (never runnable) while the
stream arrives and throws it away, frames and all, if anything goes wrong
before the commit.  The source keeps its env paused and frozen until it
hears "committed", and only then destroys its copy (--keep: leaves it
paused).  If the link breaks after the commit was sent, the source asks
the destination (a new connection: {t: status, mid}) whether the commit
happened; while it cannot tell, the env stays frozen "in doubt" so that it
can never run twice (`jmigctl recover` settles it).
"""
from __future__ import annotations

import os
import time

import trio

from ..kernel import events as ev
from ..proto.frames import ProtocolError
from ..proto.handshake import AuthError
from ..proto.pstream import StreamError
from ..proto.wire import ConnectionClosed, FramedStream, connect
from .failpoints import failpoint
from .procstream import StreamRestorer, StreamWriter

REPLY_TIMEOUT = 30.0
IN_DOUBT = "in doubt (migration outcome unknown)"


class MigrationError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def parse_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65533:
        raise MigrationError("bad-request", f"bad node address {target!r}: use HOST:PORT")
    return host, int(port)


class Migrator:
    def __init__(self, node):
        self.node = node
        self.committed: dict[str, int] = {}     # migration id -> envid (destination side)
        self.in_doubt: dict[int, dict] = {}     # envid -> {mid, host, port} (source side)

    # -- source ------------------------------------------------------------------
    async def send_normal(self, envid: int, target: str, *, keep: bool = False,
                          resume: bool = False, progress=None) -> dict:
        node = self.node
        k = node.kernel
        host, port = parse_target(target)
        e = k.get_env(envid)
        if e.frozen:
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} is {e.frozen}")
        t0 = time.perf_counter()
        was_paused = e.paused
        if not e.paused:
            k.pause(envid)
        t_pause = time.perf_counter()
        e.frozen = "migrating"
        mid = os.urandom(8).hex()
        committed = False
        commit_sent = False
        fs = None
        try:
            if k.remote_pages(envid):
                await node.pager.pull_all(envid)
            writer = StreamWriter(k, envid, node.name, "normal")
            try:
                fs = await connect(host, port, node.secret, "normal", node.name)
            except (OSError, trio.TooSlowError) as exc:
                raise MigrationError("unreachable", f"cannot reach {target}: {exc}") from None
            await fs.send({"t": "begin", "mid": mid, "method": "normal", "src": node.name,
                           "pages": len(writer.pages), "resume": resume})
            failpoint("normal.src.after_begin")
            for batch in writer.batches():
                await fs.send({"t": "data", "b": b"".join(batch)})
                if progress is not None:
                    await progress(writer.progress.done, writer.progress.total,
                                   writer.progress.nbytes)
            failpoint("normal.src.after_data")
            await fs.send({"t": "end"})
            with trio.fail_after(REPLY_TIMEOUT):
                reply = await fs.receive()
            self._check_reply(reply, "prepared")
            failpoint("normal.src.after_prepared")
            commit_sent = True
            await fs.send({"t": "commit"})
            failpoint("normal.src.after_commit")
            with trio.fail_after(REPLY_TIMEOUT):
                reply = await fs.receive()
            self._check_reply(reply, "committed")
            committed = True
            new_envid = reply["envid"]
        except (ConnectionClosed, ProtocolError, trio.TooSlowError, AuthError) as exc:
            if commit_sent:
                committed, new_envid = await self._resolve(envid, mid, host, port)
                if committed is None:
                    raise MigrationError("in-doubt", f"lost contact with {target} after the "
                                         f"commit; env {envid} is held until `jmigctl recover "
                                         f"{envid}` can settle where it runs") from None
            if not committed:
                if isinstance(exc, AuthError):
                    raise MigrationError("refused", f"{target} refused the connection: "
                                         f"{exc.message}") from None
                raise MigrationError("failed", f"migration to {target} failed: "
                                     f"{exc or type(exc).__name__}; env {envid} is still "
                                     "here, paused") from None
        finally:
            if fs is not None:
                await fs.aclose()
            if envid not in self.in_doubt and k.envs[envid & 0x3FF].env_id == envid:
                e.frozen = ""
        t_done = time.perf_counter()
        nbytes = writer.progress.nbytes
        if keep:
            node.log.info("migration kept source copy", envid=envid)
        else:
            k.env_destroy(e, 0, f"migrated to {target}")
            node.dispatch_events()
        stats = {"envid": envid, "new_envid": new_envid, "method": "normal", "to": target,
                 "pages": len(writer.pages), "bytes": nbytes,
                 "wire_bytes": fs.bytes_sent + fs.bytes_received,
                 "total_s": t_done - t0, "downtime_s": t_done - t_pause if resume else None,
                 "paused_s": t_done - t_pause, "was_paused": was_paused,
                 "mib_per_s": nbytes / (1 << 20) / (t_done - t_pause) if t_done > t_pause else 0,
                 "resumed": resume, "kept": keep}
        node.log.info("migration finished", **{k2: v for k2, v in stats.items()
                                               if k2 not in ("was_paused",)})
        return stats

    @staticmethod
    def _check_reply(reply: dict, want: str) -> None:
        t = reply.get("t")
        if t == "error":
            raise MigrationError(str(reply.get("code", "refused")),
                                 f"destination refused: {reply.get('message', '')}")
        if t != want:
            raise ProtocolError(f"expected {want!r} from the destination, got {t!r}")

    async def _resolve(self, envid: int, mid: str, host: str, port: int):
        """After losing the link post-commit: ask the destination.  Returns
        (True, envid) if it committed, (False, None) if it did not, and
        (None, None) if it cannot be reached (the env is held in doubt)."""
        for delay in (0.1, 0.3, 1.0):
            try:
                fs = await connect(host, port, self.node.secret, "normal", self.node.name,
                                   timeout=5)
            except (OSError, trio.TooSlowError, AuthError, ProtocolError, ConnectionClosed):
                await trio.sleep(delay)
                continue
            try:
                await fs.send({"t": "status", "mid": mid})
                with trio.fail_after(5):
                    reply = await fs.receive()
            except (ConnectionClosed, ProtocolError, trio.TooSlowError):
                await trio.sleep(delay)
                continue
            finally:
                await fs.aclose()
            if reply.get("t") == "status":
                if reply.get("committed"):
                    return True, reply.get("envid")
                return False, None
        e = self.node.kernel.get_env(envid)
        e.frozen = IN_DOUBT
        self.in_doubt[envid] = {"mid": mid, "host": host, "port": port}
        return None, None

    async def recover(self, envid: int, force: bool = False) -> dict:
        """Settle an env held in doubt: ask the destination again; with
        force (the operator confirms the destination is gone) release it."""
        info = self.in_doubt.get(envid)
        if info is None:
            return None
        committed, new_envid = await self._resolve_once(info)
        k = self.node.kernel
        e = k.get_env(envid)
        if committed:
            del self.in_doubt[envid]
            k.env_destroy(e, 0, "migration had committed")
            self.node.dispatch_events()
            return {"envid": envid, "outcome": "destination has it", "new_envid": new_envid}
        if committed is False or force:
            del self.in_doubt[envid]
            e.frozen = ""
            return {"envid": envid, "outcome": "kept here, paused"}
        raise MigrationError("in-doubt", f"the destination {info['host']}:{info['port']} cannot "
                             "be reached; if it is gone for good, use --force")

    async def _resolve_once(self, info: dict):
        try:
            fs = await connect(info["host"], info["port"], self.node.secret, "normal",
                               self.node.name, timeout=5)
        except (OSError, trio.TooSlowError, AuthError, ProtocolError, ConnectionClosed):
            return None, None
        try:
            await fs.send({"t": "status", "mid": info["mid"]})
            with trio.fail_after(5):
                reply = await fs.receive()
        except (ConnectionClosed, ProtocolError, trio.TooSlowError):
            return None, None
        finally:
            await fs.aclose()
        if reply.get("committed"):
            return True, reply.get("envid")
        return False, None

    # -- destination -------------------------------------------------------------
    async def receive_normal(self, fs: FramedStream) -> None:
        node = self.node
        first = await fs.receive()
        if first.get("t") == "status":
            mid = first.get("mid")
            envid = self.committed.get(mid) if isinstance(mid, str) else None
            await fs.send({"t": "status", "committed": envid is not None, "envid": envid})
            return
        if first.get("t") != "begin" or first.get("method") != "normal" \
                or not isinstance(first.get("mid"), str):
            await fs.send({"t": "error", "code": "protocol", "message": "expected begin"})
            return
        mid = first["mid"]
        resume = bool(first.get("resume"))
        node.log.info("migration incoming", method="normal", src=first.get("src"), mid=mid)
        restorer = StreamRestorer(node.kernel, keep_id=True)
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
            failpoint("normal.dst.before_prepared")
            await fs.send({"t": "prepared", "envid": restorer.env.env_id})
            failpoint("normal.dst.after_prepared")
            msg = await fs.receive()
            if msg.get("t") != "commit":
                raise ProtocolError(f"expected commit, got {msg.get('t')!r}")
            env = restorer.commit(resume=resume)
            self.committed[mid] = env.env_id
            node.dispatch_events()
            if resume:
                node.poke()
            node.log.info("migration committed", envid=env.env_id, mid=mid, resumed=resume)
            failpoint("normal.dst.after_commit")
            await fs.send({"t": "committed", "envid": env.env_id, "resumed": resume})
        except (StreamError, ev.KernelError) as exc:
            restorer.abort()
            node.dispatch_events()
            code = exc.code if isinstance(exc, ev.KernelError) else "bad-stream"
            node.log.warning("migration refused", mid=mid, reason=str(exc))
            try:
                await fs.send({"t": "error", "code": code, "message": str(exc)})
            except ConnectionClosed:
                pass
        except BaseException:
            restorer.abort()
            node.dispatch_events()
            raise

"""A file as the peer of a migration: save is a migration whose
destination is an image file, load one whose source is an image file.

The session's steps (session.py) run unchanged; the file answers as a
destination or a source that never fails on its own:

    save   the process stream -> written to a hidden temporary file beside
           NAME.img with writev, a batch at a time in a worker thread
           while the next batch is built; its trailer written ->
           Prepared;  Commit -> fsync, rename onto NAME.img (atomic)
           and fsync the directory, then Committed;
           Go -> Started.  Abort or close before the commit: the
           temporary file goes; an older image NAME stays.
    load   the file, read into the incoming env (page data with readv
           straight into its frames, every entry checked first and the
           checksum before the commit); Prepared -> Commit; Committed -> Go.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import trio

from ...proto import migration as m
from ...proto.image import READ_CHUNK, max_image_bytes
from ...proto.pstream import StreamError
from ...proto.wire import IOV_MAX, advance, byte_views
from ..disk import fsync_dir, hidden_file


class _NoStream:
    """A file link's stream: no socket (Node.advertised_host, asked for a
    save's Begin, falls back to loopback)."""


class SaveLink:
    """The destination of a save: an image file, written atomically."""

    def __init__(self, path: Path, envid: int):
        self.path = path
        self._fd, self.tmp = hidden_file(path, "tmp")     # mode 0600, a name of its own
        self.envid = envid
        self.fs = _NoStream()
        self.peer = f"image {path.stem}"
        self.bytes_sent = 0                     # written to the file so far
        self.bytes_received = 0                 # a file answers nothing
        self._replies: list = []
        self.committed = False
        self._writing: trio.Event | None = None   # set when the write in flight is done
        self._result = None                       # its outcome (bytes written, or the error)

    async def send_stream(self, parts) -> None:
        """Write parts in a worker thread, returning once the parts before
        are written: writing one batch overlaps building the next (whose
        buffers StreamWriter does not reuse until the batch after it is
        asked for).  A write error surfaces here or before Prepared."""
        await self._written()
        views = byte_views(parts)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def deliver(result) -> None:            # in the worker thread
            def finish() -> None:
                self._result = result
                done.set()
            token.run_sync_soon(finish)
        self._writing = done
        trio.lowlevel.start_thread_soon(partial(self._write_all, views), deliver)

    def _write_all(self, views: list) -> int:
        n = 0
        while views:
            k = os.writev(self._fd, views[:IOV_MAX])
            n += k
            advance(views, k)
        return n

    async def _written(self) -> None:
        """Wait for the write in flight, if any, and raise its error."""
        if self._writing is None:
            return
        await self._writing.wait()
        self._writing = None
        self.bytes_sent += self._result.unwrap()

    async def send(self, msg, timeout: float | None = None) -> None:
        if isinstance(msg, m.Begin):
            return
        if isinstance(msg, m.Commit):
            await self._written()
            await trio.to_thread.run_sync(os.fsync, self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self.tmp, self.path)
            await trio.to_thread.run_sync(fsync_dir, self.path.parent)
            self.committed = True
            self._replies.append(m.Committed(self.envid))
        elif isinstance(msg, m.Go):
            self._replies.append(m.Started(self.envid, False))

    async def receive(self, allowed, timeout: float | None = None):
        if m.Prepared in allowed:
            await self._written()
            return m.Prepared(self.envid)      # the whole stream is written
        return self._replies.pop(0)

    async def refuse(self, code: str, message: str) -> None:
        pass

    async def aclose(self) -> None:
        if self._writing is not None:           # a write in flight ends first (one batch)
            with trio.CancelScope(shield=True):
                await self._writing.wait()
            self._writing = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not self.committed:
            self.tmp.unlink(missing_ok=True)


class LoadLink:
    """The source of a load: an image file, at most as large as an image
    that fits this node."""

    def __init__(self, path: Path, max_pages: int):
        self.path = path
        self.fs = _NoStream()
        self.peer = f"image {path.stem}"
        self.bytes_received = 0                 # read from the file so far
        self.limit = max_image_bytes(max_pages)
        self.failure = None                 # (code, message) the session refused with
        self._fd = os.open(path, os.O_RDONLY)
        self.size = size = os.fstat(self._fd).st_size
        if size > self.limit:
            os.close(self._fd)
            raise StreamError(f"file is {size} bytes; no image that fits here can exceed "
                              f"{self.limit}")

    def _read(self, n: int) -> bytes:
        data = os.read(self._fd, n)
        self.bytes_received += len(data)
        if self.bytes_received > self.limit:
            raise StreamError(f"file grew past {self.limit} bytes while being read")
        return data

    async def receive_stream(self, restorer, progress=None) -> None:
        while not restorer.done:
            if restorer.wants_data:
                n = os.readv(self._fd, restorer.data_views()[:IOV_MAX])
                if not n:
                    raise StreamError("the image ends early (truncated inside a batch)")
                self.bytes_received += n
                restorer.filled(n)
                restorer.feed(b"")
            else:
                data = self._read(READ_CHUNK if restorer.pages == 0 else 64 << 10)
                if not data:
                    raise StreamError("the image ends early (truncated: no trailer)")
                restorer.feed(data)
            if progress is not None:
                progress(restorer)
            await trio.sleep(0)
        if os.lseek(self._fd, 0, os.SEEK_CUR) != self.size:
            raise StreamError("data after the trailer")

    async def receive(self, allowed, timeout: float | None = None):
        if m.Commit in allowed:
            return m.Commit()
        return m.Go()

    async def send(self, msg, timeout: float | None = None) -> None:
        pass

    async def send_now(self, msg) -> None:
        pass

    async def refuse(self, code: str, message: str) -> None:
        self.failure = (code, message)

    async def aclose(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

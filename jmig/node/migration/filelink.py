"""A file as the peer of a migration: save is a migration whose
destination is an image file, load one whose source is an image file.

The session's steps (session.py) run unchanged; the file answers as a
destination or a source that never fails on its own:

    save   Data -> written to a hidden temporary file beside NAME.img;  End -> fsync, then Prepared;
           Commit -> rename onto NAME.img (atomic) and fsync the directory,
           then Committed;  Go -> Started.  Abort or close before the
           commit: the temporary file goes; an older image NAME stays.
    load   the image is checked whole first (proto/image.py); then its
           bytes arrive as Data and End; Prepared -> Commit; Committed -> Go.
"""
from __future__ import annotations

import os
from pathlib import Path

import trio

from ...proto import migration as m
from ...proto.image import max_image_bytes, read_chunks, scan_file
from ..disk import fsync_dir


class _NoStream:
    """What session code may ask of a link's stream when it is a file."""
    peer = ""
    bytes_sent = 0
    bytes_received = 0


class SaveLink:
    """The destination of a save: an image file, written atomically."""

    def __init__(self, path: Path, envid: int):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.envid = envid
        self.fs = _NoStream()
        self.peer = f"image {path.stem}"
        self.bytes_sent = 0
        self.bytes_received = 0
        self._file = open(self.tmp, "wb")
        self._replies: list = []
        self.committed = False

    async def send(self, msg, timeout: float | None = None) -> None:
        if isinstance(msg, m.End):
            f = self._file
            await trio.to_thread.run_sync(_flush_and_sync, f)
            f.close()
            self._replies.append(m.Prepared(self.envid))
        elif isinstance(msg, m.Commit):
            os.replace(self.tmp, self.path)
            await trio.to_thread.run_sync(fsync_dir, self.path.parent)
            self.committed = True
            self._replies.append(m.Committed(self.envid))
        elif isinstance(msg, m.Go):
            self._replies.append(m.Started(self.envid, False))

    async def send_raw(self, frame: dict, timeout: float | None = None) -> None:
        data = frame["b"]
        self._file.write(data)
        self.bytes_sent += len(data)

    async def receive(self, allowed, timeout: float | None = None):
        return self._replies.pop(0)

    async def refuse(self, code: str, message: str) -> None:
        pass

    async def aclose(self) -> None:
        if not self._file.closed:
            self._file.close()
        if not self.committed:
            self.tmp.unlink(missing_ok=True)


def _flush_and_sync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


class LoadLink:
    """The source of a load: an image file, checked whole before any of it
    is used (open() does that, in a thread)."""

    def __init__(self, path: Path, max_pages: int):
        self.path = path
        self.max_pages = max_pages
        self.fs = _NoStream()
        self.peer = f"image {path.stem}"
        self.bytes_sent = 0
        self.bytes_received = 0
        self.scan = None
        self._chunks = None
        self.failure = None                 # (code, message) the session refused with

    async def open(self) -> "LoadLink":
        self.scan = await trio.to_thread.run_sync(scan_file, self.path, self.max_pages)
        self._chunks = read_chunks(self.path, max_image_bytes(self.max_pages))
        return self

    async def receive(self, allowed, timeout: float | None = None):
        if m.Data in allowed:
            chunk = next(self._chunks, None)
            if chunk is None:
                return m.End()
            self.bytes_received += len(chunk)
            await trio.sleep(0)
            return m.Data(chunk)
        if m.Commit in allowed:
            return m.Commit()
        return m.Go()

    async def send(self, msg, timeout: float | None = None) -> None:
        pass

    async def refuse(self, code: str, message: str) -> None:
        self.failure = (code, message)

    async def aclose(self) -> None:
        if self._chunks is not None:
            self._chunks.close()

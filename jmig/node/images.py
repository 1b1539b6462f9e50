"""save ENV NAME and load NAME: process images on the node's disk.

An image is a process stream (proto/pstream.py) in a file.  Save writes it
atomically (temporary file, fsync, rename), so a crash mid-save never
leaves half an image under NAME.  Load verifies the whole file before it
creates anything, then restores it as a new paused env.
"""
from __future__ import annotations

import os
import time

import trio

from ..kernel import events as ev
from ..proto.pstream import MAGIC, StreamError
from .disk import DiskError, atomic_write
from .procstream import StreamRestorer, StreamWriter

READ_CHUNK = 1 << 20
PAGE_RECORD = 4111


def max_image_bytes(kernel) -> int:
    """No image can be larger than every frame of this node as PAGE records."""
    return kernel.phys.nframes * PAGE_RECORD + (1 << 20)


async def save(node, envid: int, name: str, *, force: bool = False, pause: bool = False,
               progress=None) -> dict:
    k = node.kernel
    e = k.get_env(envid)
    path = node.disk.image_path(name)
    if path.exists() and not force:
        raise DiskError("exists", f"image {name} already exists on {node.name}; "
                        "use --force to replace it")
    if e.frozen or envid in node.busy:
        raise ev.KernelError(ev.BAD_STATE, f"env {envid} is {e.frozen or node.busy[envid]}")
    paused_here = False
    if not e.paused:
        if not pause:
            raise ev.KernelError(ev.BAD_STATE, f"env {envid} is running; pause it first "
                                 "(or save with --pause to pause it just for the save)")
        k.pause(envid)
        paused_here = True
    t0 = time.perf_counter()
    e.frozen = "saving"
    try:
        if k.remote_pages(envid):
            await node.pager.pull_all(envid)
        w = StreamWriter(k, envid, node.name, "image")
        chunks = []
        for batch in w.batches():
            chunks.extend(batch)
            if progress is not None:
                await progress(w.progress.done, w.progress.total, w.progress.nbytes)
            await trio.sleep(0)
        nbytes = await trio.to_thread.run_sync(atomic_write, path, chunks)
    finally:
        e.frozen = ""
        if paused_here:
            k.resume(envid)
            node.poke()
    dt = time.perf_counter() - t0
    node.log.info("image saved", envid=envid, image=name, pages=w.npages, bytes=nbytes,
                  seconds=round(dt, 4))
    return {"envid": envid, "image": name, "pages": w.npages, "bytes": nbytes,
            "seconds": dt, "mib_per_s": nbytes / (1 << 20) / dt if dt else 0.0}


def _read_chunks(path, limit: int):
    """Yield the file in chunks, refusing files over `limit` bytes."""
    size = os.path.getsize(path)
    if size > limit:
        raise StreamError(f"image is {size} bytes; no image for this node can exceed {limit}")
    with open(path, "rb") as f:
        while True:
            data = f.read(READ_CHUNK)
            if not data:
                return
            yield data


def verify_file(path, limit: int = 1 << 40) -> dict:
    """Decode a whole image file without a kernel; returns its header and
    page count.  Raises StreamError naming what is wrong."""
    r = StreamRestorer(kernel=None, create=False, allow_remote=False)
    for chunk in _read_chunks(path, limit):
        r.feed(chunk)
    if r.dec.state == "magic" and r.dec.pending < len(MAGIC):
        raise StreamError("truncated image: shorter than the magic number")
    r.finish()
    return {"header": r.header, "pages": r.pages, "crc": r.dec.trailer.crc,
            "bytes": r.dec.trailer.nbytes}


async def load(node, name: str, *, resume: bool = False, progress=None) -> dict:
    k = node.kernel
    path = node.disk.image_path(name)
    if not path.is_file():
        raise DiskError("no-such-image", f"no image {name} on {node.name} (see `jmigctl ls`)")
    t0 = time.perf_counter()
    limit = max_image_bytes(k)
    # Pass 1: verify everything before creating anything.
    info = await trio.to_thread.run_sync(verify_file, path, limit)
    # Pass 2: restore.
    r = StreamRestorer(k, keep_id=True)
    try:
        done = 0
        for chunk in _read_chunks(path, limit):
            r.feed(chunk)
            done += len(chunk)
            if progress is not None:
                await progress(r.pages, r.total, done)
            await trio.sleep(0)
        env = r.commit(resume=resume)
    except BaseException:
        r.abort()
        node.dispatch_events()
        raise
    node.dispatch_events()
    if resume:
        node.poke()
    dt = time.perf_counter() - t0
    node.log.info("image loaded", image=name, envid=env.env_id, pages=info["pages"],
                  seconds=round(dt, 4))
    return {"envid": env.env_id, "image": name, "pages": info["pages"], "bytes": info["bytes"],
            "seconds": dt, "resumed": resume,
            "mib_per_s": info["bytes"] / (1 << 20) / dt if dt else 0.0}

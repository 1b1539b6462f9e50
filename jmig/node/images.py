"""save ENV NAME and load NAME: process images on the node's disk.

An image is a process stream (proto/pstream.py) in a file.  Save writes it
atomically (temporary file, fsync, rename), so a crash mid-save never
leaves half an image under NAME.  Load verifies the whole file before it
creates anything, then restores it as a new paused env.
"""
from __future__ import annotations

import time

import trio

from ..kernel import events as ev
from ..proto.image import max_image_bytes, read_chunks, scan_file
from .disk import DiskError, atomic_write
from .procstream import StreamRestorer, StreamWriter

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


async def load(node, name: str, *, resume: bool = False, progress=None) -> dict:
    k = node.kernel
    path = node.disk.image_path(name)
    if not path.is_file():
        raise DiskError("no-such-image", f"no image {name} on {node.name} (see `jmigctl ls`)")
    t0 = time.perf_counter()
    max_pages = k.phys.nframes
    # Pass 1: verify everything before creating anything.
    scan = await trio.to_thread.run_sync(scan_file, path, max_pages)
    # Pass 2: restore.
    r = StreamRestorer(k, keep_id=True)
    try:
        done = 0
        for chunk in read_chunks(path, max_image_bytes(max_pages)):
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
    nbytes = scan.trailer.nbytes
    node.log.info("image loaded", image=name, envid=env.env_id, pages=scan.pages,
                  seconds=round(dt, 4))
    return {"envid": env.env_id, "image": name, "pages": scan.pages, "bytes": nbytes,
            "seconds": dt, "resumed": resume,
            "mib_per_s": nbytes / (1 << 20) / dt if dt else 0.0}

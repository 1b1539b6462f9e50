"""jmigctl image: read an image file offline (inspect, verify), and move
images between a node's disk, a local file and another node (export,
import, copy).  Every image is checked where it arrives: export scans the
bytes as they come and renames the file into place only if the whole
image is valid; import checks the file before sending it and the node
checks it again before it puts it in place; copy streams from one node to
the other through jmigctl, and the receiving node checks it."""
from __future__ import annotations

import os
from pathlib import Path

from ..proto.image import ImageScan, read_chunks
from ..proto.pstream import StreamError
from . import render
from .client import ControlClient
from .exits import CtlError, UsageError

MAX_IMAGE = 16 << 30
IMPORT_CHUNK = 4 << 20         # bytes per request (control requests hold 16 MiB bins)


def _decode(path: str):
    """(scan, error or None): the image read as far as it is valid."""
    scan = ImageScan()
    try:
        for chunk in read_chunks(path, MAX_IMAGE):
            scan.feed(chunk)
        scan.finish()
    except StreamError as exc:
        return scan, str(exc)
    return scan, None


def _read(path: str):
    try:
        return _decode(path)
    except OSError as exc:
        raise CtlError(f"cannot read {path}: {exc.strerror}", code="no-such-file") from None


def _summary(path: str, scan, error) -> dict:
    h = scan.header or {}
    return {"file": path, "valid": error is None, "error": error,
            "envid": h.get("envid"), "program": h.get("name"), "pages": scan.pages,
            "checksum": f"{scan.trailer.crc:08x}" if scan.trailer else None}


def inspect(ctx) -> int:
    path = ctx.args.file
    scan, error = _read(path)
    header, ranges, trailer = scan.header, scan.ranges, scan.trailer
    if ctx.json:
        ctx.emit({**_summary(path, scan, error), "header": _jsonable(header),
                  "ranges": ranges})
        return 0 if error is None else 1
    if header:
        ctx.say(f"image     {path}")
        for k in ("format", "jmig", "method", "node", "envid", "parent", "name", "status",
                  "runs", "eip", "eflags", "upcall", "sleep_ms", "pages"):
            v = header.get(k)
            if isinstance(v, int) and k in ("eip", "eflags", "upcall"):
                v = f"{v:#010x}"
            ctx.say(f"  {k:9} {v}")
        regs = header.get("regs") or []
        names = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
        ctx.say("  regs      " + " ".join(f"{n}={v:08x}" for n, v in zip(names, regs)
                                        if isinstance(v, int)))
    render.table(ctx.console, ["START", "END", "PAGES", "PERM", "CONTENTS"],
                 [[f"{r['start']:08x}", f"{r['end']:08x}", r["pages"], render.perm(r["perm"]),
                   r["kind"]] for r in ranges])
    crc = f"{trailer.crc:08x}" if trailer else "-"
    ctx.say(f"checksum  {crc} {'ok' if error is None else 'BAD: ' + error}")
    return 0 if error is None else 1


def verify(ctx) -> int:
    path = ctx.args.file
    scan, error = _read(path)
    if error:
        raise CtlError(f"{path}: invalid image: {error}", code="bad-image")
    if ctx.json:
        ctx.emit(_summary(path, scan, None))
        return 0
    header, trailer = scan.header, scan.trailer
    ctx.say(f"{path}: ok, env {header['envid']} ({header['name']}), "
            f"{render.plural(scan.pages, 'page')}, checksum {trailer.crc:08x}")
    return 0


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return v


# -- moving images -----------------------------------------------------------------------

async def export(ctx):
    """NAME on the node -> FILE here, written beside FILE and renamed into
    place once every byte arrived and the image checked out."""
    a = ctx.args
    dest = Path(a.file)
    if dest.exists() and not a.force:
        raise UsageError(f"{dest} exists; use --force to replace it")
    if dest.is_dir():
        raise UsageError(f"{dest} is a directory; name the file to write")
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    scan = ImageScan()
    bad: list[str] = []
    try:
        f = open(tmp, "wb")
    except OSError as exc:
        raise CtlError(f"cannot write {dest}: {exc.strerror}", code="failed") from None
    try:
        with f:
            def on_push(kind, data):
                if kind != "data" or not isinstance(data, dict):
                    return
                b = data.get("b", b"")
                f.write(b)
                if not bad:
                    try:
                        scan.feed(b)
                    except StreamError as exc:
                        bad.append(str(exc))
            res = await ctx.call("image_export", {"name": a.name}, on_push=on_push)
            f.flush()
            os.fsync(f.fileno())
        if not bad:
            try:
                scan.finish()
            except StreamError as exc:
                bad.append(str(exc))
        if bad:
            raise CtlError(f"the image {a.name} that arrived is not valid ({bad[0]}); "
                           f"{dest} was not written", code="bad-image")
        if os.path.getsize(tmp) != res["size"]:
            raise CtlError(f"{os.path.getsize(tmp)} of {res['size']} bytes arrived; {dest} was "
                           "not written", code="failed")
        os.replace(tmp, dest)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    out = {"name": a.name, "file": str(dest), "size": res["size"], "pages": scan.pages,
           "envid": (scan.header or {}).get("envid"),
           "program": (scan.header or {}).get("name"), "checksum": f"{scan.trailer.crc:08x}"}
    if ctx.json:
        return ctx.emit(out)
    ctx.say(f"Image {a.name} exported to {dest}: env {out['envid']} ({out['program']}), "
            f"{render.plural(scan.pages, 'page')}, {render.size(out['size'])}, "
            f"checksum {out['checksum']}")


def _image_name(path: Path) -> str:
    name = path.name
    return name[:-4] if name.endswith(".img") else name


async def _send_file(c, path: Path, name: str, force: bool) -> dict:
    size = path.stat().st_size
    up = (await c.request("image_import_begin", {"name": name, "force": force,
                                                 "size": size}))["upload"]
    with open(path, "rb") as f:
        while data := f.read(IMPORT_CHUNK):
            await c.request("image_import_data", {"upload": up, "b": data})
    return await c.request("image_import_end", {"upload": up})


async def import_(ctx):
    """FILE here -> NAME on the node, checked here first and there again."""
    a = ctx.args
    path = Path(a.file)
    scan, error = _read(a.file)
    if error:
        raise CtlError(f"{a.file} is not a valid image ({error}); nothing was sent",
                       code="bad-image")
    name = a.name or _image_name(path)
    async with await ControlClient.open(ctx.node, ctx.secret()) as c:
        res = await _send_file(c, path, name, a.force)
    if ctx.json:
        return ctx.emit({**res, "file": a.file})
    ctx.say(f"Image {a.file} imported as {res['name']} on {ctx.node}: env {res['envid']} "
            f"({res['program']}), {render.plural(res['pages'], 'page')}, "
            f"checksum {res['checksum']}")


async def copy(ctx):
    """NAME on this node -> the other node, streamed through jmigctl."""
    a = ctx.args
    name = a.as_name or a.name
    if a.to == ctx.node:
        raise UsageError(f"--to {a.to} is the node the image is on; name another node")
    secret = ctx.secret()
    async with await ControlClient.open(ctx.node, secret) as src, \
            await ControlClient.open(a.to, secret) as dst:
        # The size first (the receiving node wants it announced): a first
        # pass that only counts would read the image twice, so ask ls.
        listing = await src.request("ls")
        size = next((i["size"] for i in listing["images"] if i["name"] == a.name), None)
        if size is None:
            raise CtlError(f"no image {a.name} on {ctx.node} ({ctx.cmd('ls')} lists them)",
                           code="no-such-image")
        up = (await dst.request("image_import_begin", {"name": name, "force": a.force,
                                                       "size": size}))["upload"]

        async def forward(kind, data):
            if kind == "data" and isinstance(data, dict):
                await dst.request("image_import_data", {"upload": up, "b": data.get("b", b"")})
        sent = await src.request("image_export", {"name": a.name}, on_push=forward)
        if sent["size"] != size:
            raise CtlError(f"image {a.name} changed on {ctx.node} while it was copied; "
                           "try again", code="failed")
        res = await dst.request("image_import_end", {"upload": up})
    if ctx.json:
        return ctx.emit({**res, "from": ctx.node, "to": a.to})
    ctx.say(f"Image {a.name} copied to {a.to} as {res['name']}: env {res['envid']} "
            f"({res['program']}), {render.plural(res['pages'], 'page')}, "
            f"checksum {res['checksum']}")


COMMANDS = {"inspect": inspect, "verify": verify, "export": export, "import": import_,
            "copy": copy}

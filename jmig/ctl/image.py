"""jmigctl image inspect|verify FILE: read an image offline (no node)."""
from __future__ import annotations

from ..proto.image import ImageScan, read_chunks
from ..proto.pstream import StreamError
from . import render

MAX_IMAGE = 16 << 30


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


def inspect(ctx) -> int:
    try:
        scan, error = _decode(ctx.args.file)
    except OSError as exc:
        print(f"jmigctl: cannot read {ctx.args.file}: {exc.strerror}", file=ctx.err)
        return 1
    header, ranges, trailer = scan.header, scan.ranges, scan.trailer
    checksum = "ok" if error is None else f"BAD: {error}"
    if ctx.args.json:
        ctx.emit({"file": ctx.args.file, "header": _jsonable(header), "ranges": ranges,
                  "pages": scan.pages, "checksum": trailer.crc if trailer else None,
                  "valid": error is None, "error": error})
        return 0 if error is None else 1
    if header:
        ctx.say(f"image     {ctx.args.file}")
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
    ctx.say(f"checksum  {crc} {checksum}")
    return 0 if error is None else 1


def verify(ctx) -> int:
    try:
        scan, error = _decode(ctx.args.file)
    except OSError as exc:
        print(f"jmigctl: cannot read {ctx.args.file}: {exc.strerror}", file=ctx.err)
        return 1
    header, trailer = scan.header, scan.trailer
    if error:
        print(f"jmigctl: {ctx.args.file}: invalid image: {error}", file=ctx.err)
        return 1
    ctx.say(f"{ctx.args.file}: ok, env {header['envid']} ({header['name']}), "
            f"{scan.pages} pages, checksum {trailer.crc:08x}")
    return 0


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return v

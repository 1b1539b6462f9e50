"""jmigctl image inspect|verify FILE: read an image offline (no node)."""
from __future__ import annotations

from pathlib import Path

from ..proto import pstream
from ..proto.pstream import StreamDecoder, StreamError
from . import render

READ_CHUNK = 1 << 20
MAX_IMAGE = 16 << 30


def _decode(path: str):
    """(header, pages [(va, perm, kind)], trailer or None, error or None)."""
    dec = StreamDecoder()
    pages = []
    error = None
    p = Path(path)
    size = p.stat().st_size
    if size > MAX_IMAGE:
        return None, [], None, f"file is {size} bytes; larger than any image ({MAX_IMAGE})"
    try:
        with open(p, "rb") as f:
            while True:
                data = f.read(READ_CHUNK)
                if not data:
                    break
                dec.receive_data(data)
                for e in dec.events():
                    if isinstance(e, pstream.Page):
                        pages.append((e.va, e.perm, "zero" if e.zero else "data"))
                    elif isinstance(e, pstream.Remote):
                        pages.append((e.va, e.perm, "remote"))
                    elif isinstance(e, pstream.RemoteRun):
                        pages += [(e.va + k * 4096, e.perm, "remote") for k in range(e.count)]
        if dec.state != "done":
            raise StreamError("truncated: the image ends before its trailer")
        if any(kind == "remote" for _, _, kind in pages):
            # As load refuses it (images.verify_file): an image holds every page.
            raise StreamError("the stream holds remote pages: it is a demand-paging "
                              "migration stream, not an image")
    except StreamError as exc:
        error = str(exc)
    return dec.header, pages, dec.trailer, error


def _ranges(pages):
    out = []
    for va, perm, kind in pages:
        if out and out[-1]["end"] == va and out[-1]["perm"] == perm and out[-1]["kind"] == kind:
            out[-1]["end"] += 4096
            out[-1]["pages"] += 1
        else:
            out.append({"start": va, "end": va + 4096, "perm": perm, "kind": kind, "pages": 1})
    return out


def inspect(ctx) -> int:
    try:
        header, pages, trailer, error = _decode(ctx.args.file)
    except OSError as exc:
        print(f"jmigctl: cannot read {ctx.args.file}: {exc.strerror}", file=ctx.err)
        return 1
    ranges = _ranges(pages)
    checksum = "ok" if error is None else f"BAD: {error}"
    if ctx.args.json:
        ctx.emit({"file": ctx.args.file, "header": _jsonable(header), "ranges": ranges,
                  "pages": len(pages), "checksum": trailer.crc if trailer else None,
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
        header, pages, trailer, error = _decode(ctx.args.file)
    except OSError as exc:
        print(f"jmigctl: cannot read {ctx.args.file}: {exc.strerror}", file=ctx.err)
        return 1
    if error is None:
        try:
            pstream.env_header(header)
        except StreamError as exc:
            error = str(exc)
    if error:
        print(f"jmigctl: {ctx.args.file}: invalid image: {error}", file=ctx.err)
        return 1
    ctx.say(f"{ctx.args.file}: ok, env {header['envid']} ({header['name']}), "
            f"{len(pages)} pages, checksum {trailer.crc:08x}")
    return 0


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return v

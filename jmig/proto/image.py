"""Process images on disk: read one and check it completely without a
kernel.  `jmigctl image inspect|verify` and a node's load (before it
creates anything) use the same scan.

An image is a process stream (pstream.py) that holds every page: REMOTE
and RUN records are refused (those belong to demand-paging migration).
A scan keeps the header, the page map as ranges (runs of pages with one
permission and one kind, "data" or "zero") and the trailer; its memory is
a constant (the decoder's page map) plus the ranges, so it stays
proportional to the real bytes of the file whatever a header announces.
"""
from __future__ import annotations

import os

from . import pstream
from .pstream import ENTRY, MAX_RUN, PGSIZE, StreamDecoder, StreamError

READ_CHUNK = 1 << 20


def max_image_bytes(max_pages: int) -> int:
    """No image of at most max_pages pages is larger than this (every page
    in a batch of its own, the worst case, plus the header and trailer)."""
    return max_pages * (9 + ENTRY + PGSIZE) + (1 << 20)


def read_chunks(path, limit: int):
    """Yield the file in chunks; StreamError if it is over limit bytes."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise StreamError(f"file is {size} bytes; no image that fits here can exceed {limit}")
        read = 0
        while data := f.read(min(READ_CHUNK, limit + 1 - read)):
            read += len(data)
            if read > limit:
                raise StreamError(f"file grew past {limit} bytes while being read")
            yield data


class ImageScan:
    """Feed an image's bytes in order; finish() checks it ended properly.
    Both raise StreamError naming what is wrong; what was read until then
    stays readable (inspect shows it)."""

    def __init__(self, max_pages: int = MAX_RUN):
        self.dec = StreamDecoder(max_pages, allow_remote=False)
        self.ranges: list[dict] = []
        self.pages = 0

    @property
    def header(self) -> dict | None:
        return self.dec.header

    @property
    def trailer(self) -> pstream.Trailer | None:
        return self.dec.trailer

    def _add(self, va: int, perm: int, kind: str) -> None:
        self.pages += 1
        r = self.ranges[-1] if self.ranges else None
        if r is not None and r["end"] == va and r["perm"] == perm and r["kind"] == kind:
            r["end"] += 4096
            r["pages"] += 1
        else:
            self.ranges.append({"start": va, "end": va + 4096, "perm": perm, "kind": kind,
                                "pages": 1})

    def feed(self, data) -> None:
        dec = self.dec
        dec.receive_data(data)
        for e in dec.events():
            if isinstance(e, pstream.Header):
                pstream.env_header(e.fields)
            elif isinstance(e, pstream.Batch):
                for va, perm in zip(e.vas, e.perms):
                    self._add(va, perm, "data")
            elif isinstance(e, pstream.Page):
                self._add(e.va, e.perm, "zero")

    def finish(self) -> None:
        if self.dec.state == "magic":
            raise StreamError("truncated: shorter than the magic number")
        if self.dec.state != "done":
            raise StreamError("truncated: the image ends before its trailer")


def scan_file(path, max_pages: int = MAX_RUN) -> ImageScan:
    """Scan a whole image file; raises StreamError (bad image) or OSError."""
    scan = ImageScan(max_pages)
    for chunk in read_chunks(path, max_image_bytes(max_pages)):
        scan.feed(chunk)
    scan.finish()
    return scan

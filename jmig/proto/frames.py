"""Length-prefixed msgpack frames: the one framing every jmig port speaks.

    FRAME ::= LENGTH(u32, big-endian) BODY[LENGTH]      BODY: a msgpack map

Sans-I/O, after h11: `FrameDecoder.receive_data(bytes)` then `next_frame()`
returns a dict or NEED_DATA; `encode_frame(obj)` gives bytes.

Every decoder works under `Limits`: the frame size, and what msgpack may
build from it (the longest bin, str, array and map, and the nesting
depth), set from what the messages of that connection may really hold.
Before the handshake a connection gets PREAUTH (a few KiB: just a hello
or an auth), afterwards its port's limits.  Anything beyond a limit, a
body that is not msgpack, or not a map raises RemoteProtocolError before
memory is spent on it, after which the decoder is dead (the caller closes
the connection).  Encoding a frame over the limit raises
LocalProtocolError.
"""
from __future__ import annotations

import struct

import attrs
import msgpack

from ..errors import Error

NEED_DATA = object()

_LEN = struct.Struct(">I")


class ProtocolError(Error):
    """A violation of the wire protocol."""
    code = "protocol"


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed or out of place."""


class LocalProtocolError(ProtocolError):
    """We were about to send something malformed (a bug or bad argument)."""


@attrs.frozen
class Limits:
    """What one frame may hold: its size and msgpack's per-object limits."""
    frame: int                 # body bytes
    bin: int                   # longest bin
    str: int                   # longest str
    array: int                 # most elements of one array
    map: int                   # most pairs of one map
    depth: int                 # deepest nesting (a flat map is depth 1)


# Before authentication: a hello ({t, proto, v, port, nonce, node}) or an
# auth; nothing else is accepted, so nothing larger is read.
PREAUTH = Limits(frame=1024, bin=64, str=256, array=4, map=8, depth=1)
# jmigctl's requests: an uploaded ELF (8 MiB) is the largest thing in them.
CONTROL_REQUEST = Limits(frame=16 << 20, bin=16 << 20, str=64 << 10, array=1024, map=64,
                         depth=4)
# The node's answers: ps of every env (NENV = 1024), a vmmap, console text.
CONTROL_REPLY = Limits(frame=16 << 20, bin=1 << 20, str=8 << 20, array=1 << 16, map=256,
                       depth=8)        # jobs: resp, result, jobs, job, result, rounds, round
# Migration and page-server ports: batches of page records and vpn lists
# (every user page of an address space is 978,944 u32s = 3.7 MiB).
DATA = Limits(frame=4 << 20, bin=4 << 20, str=4096, array=64, map=64, depth=4)

# The largest frames, for callers that only need a number.
MAX_CONTROL_FRAME = CONTROL_REQUEST.frame
MAX_DATA_FRAME = DATA.frame


def sized(frame: int) -> Limits:
    """Limits for frames of up to `frame` bytes with no tighter per-object
    limits than the frame itself (tests and tools)."""
    return Limits(frame=frame, bin=frame, str=frame, array=frame, map=frame, depth=64)


def encode_frame(obj: dict, max_frame: int = MAX_DATA_FRAME) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > max_frame:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds the limit of {max_frame}")
    return _LEN.pack(len(body)) + body


def depth_of(obj, limit: int) -> int:
    """The nesting depth of obj (a scalar is 0), counting no deeper than
    limit + 1.  Iterative: a hostile body cannot exhaust the C stack."""
    deepest = 0
    stack = [(obj, 0)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict):
            o = [*o.keys(), *o.values()]
        elif not isinstance(o, list):
            continue
        d += 1
        if d > deepest:
            deepest = d
            if d > limit:
                return d
        stack.extend((x, d) for x in o if isinstance(x, (dict, list)))
    return deepest


PREFIX_CHECK = 64 << 10       # how much of a body is looked at before the rest arrives


class FrameDecoder:
    def __init__(self, limits: Limits = DATA):
        self.limits = limits
        self._buf = bytearray()
        self._dead: ProtocolError | None = None
        self._checked = False           # the current frame's prefix passed the limits

    @property
    def max_frame(self) -> int:
        return self.limits.frame

    def _unpacker(self) -> msgpack.Unpacker:
        lim = self.limits
        return msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=lim.frame,
                                max_bin_len=lim.bin, max_str_len=lim.str,
                                max_array_len=lim.array, max_map_len=lim.map, max_ext_len=0)

    def set_limits(self, limits: Limits) -> None:
        """Apply other limits from the next frame on (after the handshake)."""
        self.limits = limits

    def receive_data(self, data: bytes) -> None:
        if self._dead is not None:
            raise self._dead
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def take_buffered(self) -> bytes:
        """Everything received and not decoded (the caller reads a raw
        stream that follows the last frame)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def next_frame(self):
        """The next complete frame (a dict), or NEED_DATA."""
        if self._dead is not None:
            raise self._dead
        buf = self._buf
        if len(buf) < 4:
            return NEED_DATA
        (n,) = _LEN.unpack_from(buf, 0)
        lim = self.limits
        if n > lim.frame:
            self._fail(f"frame of {n} bytes exceeds the limit of {lim.frame}")
        if len(buf) < 4 + n:
            # A long frame: look at its beginning now, so that a body
            # announcing millions of objects is refused before the rest of
            # it is buffered.
            if not self._checked and len(buf) >= 4 + PREFIX_CHECK:
                self._checked = True
                u = self._unpacker()
                u.feed(memoryview(buf)[4:4 + PREFIX_CHECK])
                try:
                    u.unpack()
                except msgpack.OutOfData:
                    pass
                except Exception as exc:
                    self._bad_body(exc)
            return NEED_DATA
        self._checked = False
        try:
            with memoryview(buf) as view:
                obj = msgpack.unpackb(view[4:4 + n], raw=False, strict_map_key=False,
                                      max_bin_len=lim.bin, max_str_len=lim.str,
                                      max_array_len=lim.array, max_map_len=lim.map,
                                      max_ext_len=0)
        except Exception as exc:          # msgpack raises several types for garbage
            self._bad_body(exc)
        finally:
            if self._dead is None:
                del buf[:4 + n]
        if not isinstance(obj, dict):
            self._fail(f"frame body is a {type(obj).__name__}, not a map")
        if depth_of(obj, lim.depth) > lim.depth:
            self._fail(f"frame body nests deeper than {lim.depth} levels")
        return obj

    def _bad_body(self, exc: Exception):
        self._fail(f"frame body is not valid msgpack within this connection's limits "
                   f"({type(exc).__name__}: {str(exc)[:100]})")

    def _fail(self, msg: str):
        self._dead = RemoteProtocolError(msg)
        raise self._dead

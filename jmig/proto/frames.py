"""Length-prefixed msgpack frames: the one framing every jmig port speaks.

    FRAME ::= LENGTH(u32, big-endian) BODY[LENGTH]      BODY: a msgpack map

Sans-I/O, after h11: `FrameDecoder.receive_data(bytes)` then `next_frame()`
returns a dict or NEED_DATA; `encode_frame(obj)` gives bytes.  A frame
longer than the decoder's limit, a body that is not msgpack, or not a map
raises RemoteProtocolError, after which the decoder is dead (the caller
closes the connection).  Frames are limited on both sides: encoding an
oversized frame raises LocalProtocolError.
"""
from __future__ import annotations

import struct

import msgpack

MAX_CONTROL_FRAME = 1 << 20          # control port
MAX_DATA_FRAME = 4 << 20             # migration and page-server ports
NEED_DATA = object()

_LEN = struct.Struct(">I")


class ProtocolError(Exception):
    """A violation of the wire protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed or out of place."""


class LocalProtocolError(ProtocolError):
    """We were about to send something malformed (a bug or bad argument)."""


def encode_frame(obj: dict, max_frame: int = MAX_DATA_FRAME) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    if len(body) > max_frame:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds the limit of {max_frame}")
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    def __init__(self, max_frame: int = MAX_DATA_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()
        self._dead: ProtocolError | None = None

    def receive_data(self, data: bytes) -> None:
        if self._dead is not None:
            raise self._dead
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self):
        """The next complete frame (a dict), or NEED_DATA."""
        if self._dead is not None:
            raise self._dead
        buf = self._buf
        if len(buf) < 4:
            return NEED_DATA
        (n,) = _LEN.unpack_from(buf, 0)
        if n > self.max_frame:
            self._fail(f"frame of {n} bytes exceeds the limit of {self.max_frame}")
        if len(buf) < 4 + n:
            return NEED_DATA
        body = bytes(buf[4:4 + n])
        del buf[:4 + n]
        try:
            obj = msgpack.unpackb(body, raw=False, strict_map_key=False,
                                  max_bin_len=self.max_frame, max_str_len=self.max_frame)
        except Exception as exc:          # msgpack raises several types for garbage
            self._fail(f"frame body is not valid msgpack ({type(exc).__name__})")
        if not isinstance(obj, dict):
            self._fail(f"frame body is a {type(obj).__name__}, not a map")
        return obj

    def _fail(self, msg: str):
        self._dead = RemoteProtocolError(msg)
        raise self._dead

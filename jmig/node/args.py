"""Checks of a request's arguments, as the control port and the node-to-node
operations receive them (decoded msgpack maps): each returns the value or
raises BadRequest saying what the argument must be."""
from __future__ import annotations

from ..errors import Error


class BadRequest(Error):
    code = "bad-request"


def arg_envid(args: dict, key: str = "envid") -> int:
    v = args.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 1 << 31:
        raise BadRequest(f"{key} must be a positive env id, got {v!r}")
    return v


def arg_word(args: dict, key: str) -> int:
    """A 32-bit register's value, signed or not."""
    return arg_int(args, key, None, -(1 << 31), (1 << 32) - 1)


def arg_bool(args: dict, key: str) -> bool:
    v = args.get(key, False)
    if not isinstance(v, bool):
        raise BadRequest(f"{key} must be true or false")
    return v


def arg_int(args: dict, key: str, default: int, lo: int, hi: int) -> int:
    v = args.get(key, default)
    if v is None:
        v = default
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadRequest(f"{key} must be an integer in {lo}..{hi}")
    return v


def arg_str(args: dict, key: str, maxlen: int = 256) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v or len(v) > maxlen:
        raise BadRequest(f"{key} must be a non-empty string of at most {maxlen} characters")
    return v

"""The messages of the migration ports (P, P+1) and the page server (P+2),
as typed, validated values.

Sans-I/O, after h11: `decode(frame, allowed)` turns a received frame (a
dict from frames.py) into one of the message classes below, or raises
RemoteProtocolError naming what is wrong (a missing field, a value out of
range, a message that may not come now); `encode(msg)` gives the dict to
send.  Everything the node does with a message it does with these values:
no other module looks into a raw frame.

A migration (source -> destination, on the destination's P or P+1):

    Begin  (<process stream> | Pages* Final)  -> Prepared
           (pgfault: Begin -> Ready, then the process stream)
    Commit                             -> Committed
    Go | Abort                         -> Started (after Go)
    any time, either way:  ErrorReply

and on a new connection to either node, about a migration `mid`:

    Status -> StatusReply

The page server (destination -> origin, on the origin's P+2), one
connection per channel ("faults" and "push"):

    Attach -> Attached;  Get -> PageBatch (faults);  PageBatch* (push);
    Release -> Released
"""
from __future__ import annotations

import struct

import attrs

from .frames import LocalProtocolError, RemoteProtocolError

MAX_PREFETCH = 64
METHODS = ("normal", "pgfault", "precopy")
CHANNELS = ("faults", "push")
MID_LEN = 16                      # hex characters of a migration id
TOKEN_LEN = 16
MAX_NAME = 64
MAX_TEXT = 1024
RUN_LEN = 10                      # a page run in Begin: u32 first vpn, u32 count, u16 perm
MAX_RUNS = 100_000                # Begin announces at most this many page runs
MAX_RUNS_BYTES = MAX_RUNS * RUN_LEN


# -- field checks -------------------------------------------------------------------

def _fail(t: str, field: str, why: str):
    raise RemoteProtocolError(f"{t}: field {field!r} {why}")


def _int(lo: int, hi: int):
    def check(t, f, v):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            _fail(t, f, f"is not an integer in {lo}..{hi}")
        return v
    return check


def _seconds(t, f, v):
    if not isinstance(v, float) or not 0.0 <= v <= 1e6:
        _fail(t, f, "is not a number of seconds")
    return v


def _bool(t, f, v):
    if not isinstance(v, bool):
        _fail(t, f, "is not true or false")
    return v


def _str(maxlen: int):
    def check(t, f, v):
        if not isinstance(v, str) or len(v) > maxlen:
            _fail(t, f, f"is not a string of at most {maxlen} characters")
        return v
    return check


def _choice(values):
    def check(t, f, v):
        if v not in values:
            _fail(t, f, f"is not one of {', '.join(values)}")
        return v
    return check


def _bytes(maxlen: int, multiple: int = 1, exact: int | None = None):
    def check(t, f, v):
        if not isinstance(v, bytes) or len(v) > maxlen or len(v) % multiple \
                or (exact is not None and len(v) != exact):
            _fail(t, f, "is not a byte string of the right length")
        return v
    return check


def _mid(t, f, v):
    if not isinstance(v, str) or len(v) != MID_LEN or not all(c in "0123456789abcdef" for c in v):
        _fail(t, f, f"is not a migration id ({MID_LEN} hex digits)")
    return v


def _addr(t, f, v):
    if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and 0 < len(v[0]) < 256
            and isinstance(v[1], int) and not isinstance(v[1], bool) and 0 < v[1] < 65536):
        _fail(t, f, "is not [host, port]")
    return (v[0], v[1])


def _map(t, f, v):
    if not isinstance(v, dict):
        _fail(t, f, "is not a map")
    return v


def _optional(check):
    def opt(t, f, v):
        return None if v is None else check(t, f, v)
    opt.optional = True
    return opt


_u32 = _int(0, 0xFFFFFFFF)
_envid = _int(1, (1 << 31) - 1)


# -- the messages -----------------------------------------------------------------------

_REGISTRY: dict[str, type] = {}


def message(tag: str, **checks):
    """A frozen message class sent as {t: tag, field: value, ...}; checks
    validate each field when it arrives (None-able ones via _optional)."""
    def wrap(cls):
        cls = attrs.frozen(cls)
        cls.T = tag
        cls.CHECKS = checks
        _REGISTRY[tag] = cls
        return cls
    return wrap


@message("begin", mid=_mid, method=_choice(METHODS), src=_str(MAX_NAME), src_addr=_addr,
         incarnation=_str(32), resume=_bool, pages=_optional(_u32), header=_optional(_map),
         pager=_optional(_addr), token=_optional(_bytes(TOKEN_LEN, exact=TOKEN_LEN)),
         push=_optional(_bool), prefetch=_optional(_int(0, MAX_PREFETCH)),
         runs=_optional(_bytes(MAX_RUNS_BYTES, RUN_LEN)))
class Begin:
    """The start of a migration.  src_addr is (host, P) of the source, where
    the destination asks about this migration if the link breaks;
    incarnation names the source process (a restarted source is another).
    normal/pgfault: the process stream follows, raw (not in frames: it is
    self-delimiting); `pages` is its page count (normal; pgfault's Begin
    comes before the process stops, so only the stream's header has it);
    pgfault also names the origin's page server (`pager`), the migration's
    `token`, `push` and `prefetch`, and may announce the process's page
    runs as they are while it still runs (`runs`: u32 first vpn, u32
    count, u16 perm each), so that the destination can build its page
    table before the process stops; the stream's RUN records stay what
    counts.  precopy: `header` is the env's header at the start."""
    mid: str
    method: str
    src: str
    src_addr: tuple
    incarnation: str
    resume: bool
    pages: int | None = None
    header: dict | None = None
    pager: tuple | None = None
    token: bytes | None = None
    push: bool | None = None
    prefetch: int | None = None
    runs: bytes | None = None

    def page_runs(self) -> list[tuple[int, int, int]] | None:
        return None if self.runs is None else list(struct.iter_unpack(">IIH", self.runs))


@message("pages", b=_bytes(4 << 20), round=_int(1, 100_000))
class Pages:
    """Pre-copy: PAGE/ZERO records of one round; later copies replace earlier."""
    b: bytes
    round: int


@message("round-end", round=_int(1, 100_000))
class RoundEnd:
    """Pre-copy: every page of this round has been sent."""
    round: int


@message("round-applied", round=_int(1, 100_000))
class RoundApplied:
    """Pre-copy: the destination has installed every page sent before the
    round's RoundEnd (so the source stops the process only once the
    destination has caught up, and measures the bandwidth end to end)."""
    round: int


@message("final", header=_map, map=_bytes(6 << 20, 6), remote=_bytes(4 << 20, 4),
         drops=_bytes(4 << 20, 4), pages=_int(0, 1 << 20),
         pager=_optional(_addr), token=_optional(_bytes(TOKEN_LEN, exact=TOKEN_LEN)),
         push=_optional(_bool), prefetch=_optional(_int(0, MAX_PREFETCH)))
class Final:
    """Pre-copy's stop, proportional to what changed in the last round: the
    registers; `map`, the pages of the last round (u32 vpn, u16 perm each:
    sent just before, or, those in `remote` (u32 vpn each), left on the
    source to be fetched on demand from `pager`); `drops`, pages sent in
    earlier rounds and unmapped since (u32 vpn each); `pages`, how many
    pages the process has in all, for the destination to check."""
    header: dict
    map: bytes
    remote: bytes
    drops: bytes
    pages: int
    pager: tuple | None = None
    token: bytes | None = None
    push: bool | None = None
    prefetch: int | None = None

    def page_map(self) -> list[tuple[int, int]]:
        return [struct.unpack_from(">IH", self.map, i) for i in range(0, len(self.map), 6)]

    def remote_vpns(self) -> list[int]:
        return unpack_vpns(self.remote)

    def drop_vpns(self) -> list[int]:
        return unpack_vpns(self.drops)


@message("ready")
class Ready:
    """pgfault: the destination's pager is attached to the origin's page
    server; the source may stop the process and send its stream."""


@message("prepared", envid=_envid)
class Prepared:
    """The destination holds the whole process, verified, not running."""
    envid: int


@message("commit")
class Commit:
    """The source asks the destination to keep the process."""


@message("committed", envid=_envid)
class Committed:
    """The destination keeps it, held until Go (or Abort)."""
    envid: int


@message("go")
class Go:
    """The source has given the process up: the destination runs it."""


@message("abort", reason=_str(MAX_TEXT))
class Abort:
    """The source keeps the process: the destination throws its copy away."""
    reason: str


@message("started", envid=_envid, resumed=_bool, after_s=_optional(_seconds))
class Started:
    """The destination took the process over (and resumed it if asked);
    after_s: how long ago, in its own clock, it made the env runnable (so
    the source can end the downtime there, not when this arrives)."""
    envid: int
    resumed: bool
    after_s: float | None = None


@message("error", code=_str(64), message=_str(MAX_TEXT))
class ErrorReply:
    """The peer refuses or gives up: why, as a jmig error code and message."""
    code: str
    message: str


@message("status", mid=_mid)
class Status:
    """What does the node that receives this know of migration mid?"""
    mid: str


@message("status-reply", mid=_mid, role=_choice(("source", "destination", "none")),
         state=_str(32), envid=_optional(_envid), incarnation=_str(32))
class StatusReply:
    """role "source": state is the source's decision (pending, go, abort);
    "destination": where the destination is (receiving, prepared, committed,
    running, aborted); "none": this node (this incarnation) never heard of
    it.  incarnation names the answering process."""
    mid: str
    role: str
    state: str
    incarnation: str
    envid: int | None = None


@message("attach", mid=_mid, token=_bytes(TOKEN_LEN, exact=TOKEN_LEN), channel=_choice(CHANNELS),
         need=_bytes(4 << 20, 4))
class Attach:
    """The destination's pager connects a channel to the origin's page
    server; need lists the pages it still lacks (u32 vpns)."""
    mid: str
    token: bytes
    channel: str
    need: bytes

    def need_vpns(self) -> list[int]:
        return unpack_vpns(self.need)


@message("attached", remaining=_u32)
class Attached:
    remaining: int


@message("get", vpn=_int(0, 0xFFFFF), n=_int(0, MAX_PREFETCH))
class Get:
    """A fault: page vpn, and up to n following ones."""
    vpn: int
    n: int


@message("page-batch", b=_bytes(4 << 20), push=_bool)
class PageBatch:
    """PAGE/ZERO records (pstream.encode_pages) answering a Get, or pushed."""
    b: bytes
    push: bool


@message("release")
class Release:
    """Every page has arrived (or the env died): the origin may let go."""


@message("released")
class Released:
    pass


# -- which messages may arrive where ---------------------------------------------------------

SOURCE_OPENS = frozenset({Begin, Status})            # first frame on a migration port
FROM_SOURCE_PRECOPY = frozenset({Pages, RoundEnd, Final})
ROUND_APPLIED = frozenset({RoundApplied})
FROM_SOURCE_DECISION = frozenset({Commit, Go, Abort, ErrorReply})
FROM_DESTINATION = frozenset({Ready, Prepared, Committed, Started, ErrorReply})
STATUS_REPLY = frozenset({StatusReply, ErrorReply})
PAGER_OPENS = frozenset({Attach})
FROM_PAGER = frozenset({Get, Release})
FROM_PAGE_SERVER = frozenset({Attached, PageBatch, Released, ErrorReply})


def decode(frame: dict, allowed: frozenset):
    """The message in frame, if it is one of `allowed`; else
    RemoteProtocolError (an ErrorReply from the peer is returned like any
    other message when allowed)."""
    t = frame.get("t")
    cls = _REGISTRY.get(t) if isinstance(t, str) else None
    if cls is None or cls not in allowed:
        names = ", ".join(sorted(c.T for c in allowed))
        raise RemoteProtocolError(f"unexpected message {t!r} (expected {names})")
    kwargs = {}
    for name, check in cls.CHECKS.items():
        v = frame.get(name)
        if v is None and getattr(check, "optional", False):
            kwargs[name] = None
            continue
        if v is None:
            _fail(cls.T, name, "is missing")
        kwargs[name] = check(cls.T, name, v)
    return cls(**kwargs)


def encode(msg) -> dict:
    """The frame for a message; LocalProtocolError if its fields would not
    pass decode (a bug on this side)."""
    out = {"t": msg.T}
    for name in msg.CHECKS:
        v = getattr(msg, name)
        if v is not None:
            out[name] = list(v) if isinstance(v, tuple) else v
    try:
        decode(out, frozenset({type(msg)}))
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"about to send a bad message: {exc}") from None
    return out


def pack_vpns(vpns) -> bytes:
    return struct.pack(f">{len(vpns)}I", *vpns)


def unpack_vpns(b: bytes) -> list[int]:
    return list(struct.unpack(f">{len(b) // 4}I", b))


def pack_runs(runs) -> bytes | None:
    """Begin's `runs`, or None if there are too many to announce."""
    if len(runs) * RUN_LEN > MAX_RUNS_BYTES:
        return None
    return b"".join(struct.pack(">IIH", *r) for r in runs)


def pack_map(items) -> bytes:
    return b"".join(struct.pack(">IH", vpn, perm) for vpn, perm in items)

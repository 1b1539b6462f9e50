"""Listening sockets that accept many connections per wakeup, and shut
their door on addresses that abuse them.

trio's own listeners accept one connection per scheduling round; a node
running programs takes a round of a few milliseconds, so a flood of
connections would queue in the kernel's accept backlog in front of every
honest client.  Here each wakeup drains the backlog (up to ACCEPT_BATCH)
and hands every new socket, synchronously, to a callback that admits it
(starting a task) or refuses it on the spot, which costs no task at all.

block() goes further for IPv4: a classic BPF socket filter on the
listening socket drops the SYNs of the addresses it names in the kernel,
so a flood from a penalized address costs the node nothing at all (and
its connects wait for TCP's retransmission timer).
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct

import trio

ACCEPT_BATCH = 128
BACKLOG = 1024
CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
CAPACITY_PAUSE = 0.1
MAX_BLOCKED = 2000                 # two BPF instructions each, of the 4096 allowed
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
_SKF_NET_OFF = -0x100000           # BPF: offsets from the network (IP) header
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x20, 0x15, 0x06


def bind(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on host:port (port 0: any).
    Raises OSError."""
    family, _, _, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                               flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve(sock: socket.socket, on_accept, on_capacity=None) -> None:
    """Accept connections on sock until cancelled: on_accept(fd, addr) for
    each, which owns the new socket's file descriptor from then on (see
    refuse() and stream_of()); a refusal costs no Python socket object.
    When the process is out of file descriptors or memory, on_capacity(exc)
    is told and accepting pauses briefly."""
    accept = sock._accept             # (fd, addr): the cheapest accept there is
    with sock:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(ACCEPT_BATCH):
                try:
                    fd, addr = accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.ECONNABORTED:
                        continue
                    if exc.errno not in CAPACITY_ERRNOS:
                        raise
                    if on_capacity is not None:
                        on_capacity(exc)
                    await trio.sleep(CAPACITY_PAUSE)
                    break
                on_accept(fd, addr)
            await trio.lowlevel.checkpoint()


def block(sock: socket.socket, hosts) -> bool:
    """Make the kernel drop new connections to sock from these IPv4
    addresses (replacing the previous list; an empty one lifts it).  False
    if this socket cannot filter (not IPv4, or no socket filters here)."""
    if sock.family != socket.AF_INET:
        return False
    hosts = sorted(hosts)[:MAX_BLOCKED]
    try:
        if not hosts:
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
            return True
        # A = source address; for each blocked one: if A == it, drop.
        ins = [(_BPF_LD_W_ABS, 0, 0, (_SKF_NET_OFF + 12) & 0xFFFFFFFF)]
        for h in hosts:
            ins += [(_BPF_JEQ_K, 0, 1, int(ipaddress.IPv4Address(h))), (_BPF_RET_K, 0, 0, 0)]
        ins.append((_BPF_RET_K, 0, 0, 0xFFFFFFFF))
        code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in ins))
        prog = struct.pack("@HP", len(ins), ctypes.addressof(code))      # struct sock_fprog
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
    except OSError as exc:
        if exc.errno == errno.ENOENT and not hosts:
            return True                      # there was no filter to detach
        return False
    return True


class Refuser:
    """Closes refused connections.  One told why (a small frame, which the
    new socket's buffer takes at once) is half-closed and kept for
    LINGER seconds, reading whatever its peer sent meanwhile (the hello),
    so that the close is a FIN after the frame, not a reset that might
    overtake it; at most MAX_LINGERING at a time, the rest close at once."""

    LINGER = 0.1
    MAX_LINGERING = 1024

    def __init__(self):
        self._lingering: list[tuple[float, int]] = []
        self._wake = trio.Event()

    def refuse(self, fd: int, data: bytes = b"") -> None:
        if data and len(self._lingering) < self.MAX_LINGERING:
            try:
                os.set_blocking(fd, False)         # accepted sockets start blocking
                os.write(fd, data)
                _shutdown_write(fd)
            except OSError:
                os.close(fd)
                return
            self._lingering.append((trio.current_time() + self.LINGER, fd))
            self._wake.set()
            return
        os.close(fd)

    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self._lingering:
                    await trio.sleep_until(self._lingering[0][0])
                    now = trio.current_time()
                    due = [fd for t, fd in self._lingering if t <= now]
                    self._lingering = [(t, fd) for t, fd in self._lingering if t > now]
                    for fd in due:
                        _drain_and_close(fd)
        finally:
            for _, fd in self._lingering:
                os.close(fd)
            self._lingering.clear()


def _shutdown_write(fd: int) -> None:
    s = socket.socket(fileno=fd)
    try:
        s.shutdown(socket.SHUT_WR)
    finally:
        s.detach()


def _drain_and_close(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass
    os.close(fd)


def stream_of(fd: int) -> trio.SocketStream:
    """A trio stream over an accepted socket (which drops the blocklist it
    inherited from the listener: its peer was admitted)."""
    conn = socket.socket(fileno=fd)
    conn.setblocking(False)
    try:
        conn.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:
        pass
    return trio.SocketStream(trio.socket.from_stdlib_socket(conn))

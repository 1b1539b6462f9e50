"""jmig-node: run one simulated JOS machine as a daemon.

Exit codes: 0 clean shutdown (SIGINT/SIGTERM), 1 unexpected error,
2 bad command line (a --boot program that does not exist included),
3 a port cannot be bound, 4 secret file problem, 5 data directory unusable.

Logs go to stderr: with --log-format json (the default when stderr is not
a terminal) every line is a JSON object, the reasons for a failed start
included; with console, plain lines.
"""
from __future__ import annotations

import argparse
import errno
import gc
import os
import shlex
import signal
import sys
from pathlib import Path

import structlog
import trio

import jmig
from .. import logs, programs
from ..errors import leaf
from ..kernel.events import KernelError
from ..kernel.kernel import DEFAULT_SLICE
from ..proto.handshake import MAX_NAME
from ..proto.wire import parse_node
from .cluster import NODE_IDS, SLOTS_PER_NODE, PeersFileError, read_peers_file
from .disk import NAME_RE, DataDir
from .node import BootSpec, Node, NodeConfig
from .secret import SecretError, load_or_create

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BIND, EXIT_SECRET, EXIT_DATADIR = 0, 1, 2, 3, 4, 5
GIL_SWITCH_SECONDS = 0.0005     # see _main


def parse_size(text: str) -> int:
    """'64M', '1G', '65536' -> bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    if t[-1:] in "KMG":
        t = t[:-1]
    try:
        v = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 64M or 1G") from None
    if v < 64 * 1024 or v > 4 << 30:
        raise argparse.ArgumentTypeError(f"memory {text} is out of range (64K .. 4G)")
    return v


def parse_boot(text: str) -> BootSpec:
    """'loop@4100 200' -> program loop as env 4100 with argument 200."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad --boot {text!r}: {exc}") from None
    if not words:
        raise argparse.ArgumentTypeError("--boot needs a program name")
    prog, _, envid = words[0].partition("@")
    eid = None
    if envid:
        try:
            eid = int(envid, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad env id {envid!r} in --boot") from None
    return BootSpec(prog, tuple(words[1:]), eid)


def _member(text: str) -> str:
    try:
        parse_node(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def default_data_dir(host: str, port: int) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.environ.get("HOME", "/tmp"),
                                                          ".local", "share")
    return Path(base) / "jmig" / "nodes" / f"{host}_{port}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jmig-node", description="Run a simulated JOS machine "
                                "that jmigctl can drive and migrate processes to and from.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50001,
                   help="base port P; the node listens on P..P+3 (default 50001)")
    p.add_argument("--name", default="", help="node name (default HOST:PORT)")
    p.add_argument("--data-dir", type=Path, help="programs and images "
                   "(default $XDG_DATA_HOME/jmig/nodes/HOST_PORT)")
    p.add_argument("--memory", type=parse_size, default=64 << 20,
                   help="physical memory (default 64M)")
    p.add_argument("--cpus", type=int, default=1, help="virtual CPUs (default 1)")
    p.add_argument("--slice", type=int, default=DEFAULT_SLICE,
                   help=f"instructions per scheduling slice (default {DEFAULT_SLICE})")
    p.add_argument("--secret-file", help="cluster secret (default $JMIG_SECRET_FILE or "
                   "~/.config/jmig/secret, created if absent)")
    p.add_argument("--boot", action="append", type=parse_boot, default=[],
                   metavar="'PROGRAM[@ENVID] [ARGS]'",
                   help="start a program at boot (repeatable), e.g. --boot loop@4100")
    p.add_argument("--log-format", choices=("console", "json"),
                   help="log format (default: console on a terminal, else json)")
    p.add_argument("--log-level", choices=logs.LEVELS, default="info")
    p.add_argument("--no-console", action="store_true",
                   help="do not copy user programs' output to stdout")
    p.add_argument("--trace", action="store_true",
                   help="print the original project's per-step lines (Send Page: 0x00800000, "
                   "Sequence: 1; Recv Page Table Entry: ...; Handle User Page Fault, ...) on the "
                   "console for every migration, save and load through this node")
    p.add_argument("--join", action="append", default=[], type=_member, metavar="HOST:P",
                   help="join the cluster of this member (repeatable; any member will do)")
    p.add_argument("--peers", metavar="FILE", help="members to join, one HOST:P per line "
                   "('#' comments)")
    p.add_argument("--node-id", type=int, metavar="K", help=f"this node's number in its "
                   f"cluster, 0..{NODE_IDS - 1}: new envs get env slots K*{SLOTS_PER_NODE}.."
                   f"K*{SLOTS_PER_NODE}+{SLOTS_PER_NODE - 1}, so that env ids are unique in "
                   "a cluster whose nodes have distinct ids (default: any of the 1024 slots)")
    p.add_argument("--balance", action="store_true",
                   help="balance load automatically: move envs to less loaded members "
                   "(`jmigctl balance on|off` switches it for the whole cluster)")
    p.add_argument("--version", action="version", version=f"jmig-node {jmig.__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_format, args.log_level, spool=True)
    try:
        return _main(args)
    finally:
        logs.close()


_NAME = ""                 # the node's name, for fail()


def fail(code: int, message: str) -> int:
    """Say why the node stops: a plain line on a console log, an error
    event in a JSON log (so that a JSON log stays JSON)."""
    if logs.FORMAT == "json":
        structlog.get_logger("jmig.node").error(message, exit_code=code, node=_NAME)
    else:
        logs.say(f"jmig-node: {message}")
    return code


def _main(args) -> int:
    global _NAME
    _NAME = args.name or f"{args.host}:{args.port}"
    if not 0 < args.port < 65533:
        return fail(EXIT_USAGE, f"port {args.port} out of range (1..65532)")
    if len(args.name) > MAX_NAME:
        return fail(EXIT_USAGE, f"--name is longer than {MAX_NAME} characters")
    if not 1 <= args.cpus <= 64 or args.slice < 1:
        return fail(EXIT_USAGE, "--cpus must be 1..64 and --slice at least 1")
    for b in args.boot:
        if not programs.exists(b.program) and not (
                args.data_dir and NAME_RE.match(b.program)
                and (args.data_dir / "programs" / b.program).is_file()):
            return fail(EXIT_USAGE, f"--boot: no program {b.program!r} (bundled: "
                        f"{', '.join(programs.names())}; or one uploaded to the data directory)")
    if args.node_id is not None and not 0 <= args.node_id < NODE_IDS:
        return fail(EXIT_USAGE, f"--node-id must be 0..{NODE_IDS - 1}")
    join = list(args.join)
    if args.peers:
        try:
            join += read_peers_file(args.peers)
        except PeersFileError as exc:
            return fail(EXIT_USAGE, str(exc))
    try:
        secret = load_or_create(args.secret_file)
    except SecretError as exc:
        return fail(EXIT_SECRET, str(exc))
    data_dir = args.data_dir or default_data_dir(args.host, args.port)
    cfg = NodeConfig(data_dir=data_dir, host=args.host, port=args.port, name=args.name,
                     memory=args.memory, cpus=args.cpus, slice=args.slice,
                     boot=tuple(args.boot), echo=not args.no_console, trace=args.trace,
                     join=tuple(dict.fromkeys(join)), balance=args.balance,
                     node_id=args.node_id)
    try:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        DataDir(cfg.data_dir).prepare()
    except OSError as exc:
        return fail(EXIT_DATADIR, f"data directory {data_dir} is unusable: "
                    f"{exc.strerror or exc}")
    # The kernel compiles code regions in a worker thread (Kernel's
    # background_compile); the event loop waits at most this long for the
    # GIL after each system call while a compile runs (Python's default,
    # 5 ms, would add that to every step of every request meanwhile).
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    try:
        return trio.run(_run, cfg, secret)
    except KeyboardInterrupt:
        return EXIT_OK
    except BaseException as exc:
        first = leaf(exc)
        if isinstance(first, OSError) and first.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL,
                                                          errno.EACCES):
            return fail(EXIT_BIND, f"cannot listen on {args.host}:{args.port}..{args.port + 3}: "
                        f"{first.strerror}")
        if isinstance(first, KeyboardInterrupt):
            return EXIT_OK
        if isinstance(first, (SystemExit, GeneratorExit)):
            raise
        # A bug: its traceback goes to the log as an event, not bare to stderr.
        structlog.get_logger("jmig.node").error("unexpected error", exc_info=first, node=_NAME)
        return fail(EXIT_ERROR, f"unexpected error: {type(first).__name__}: {first}")


async def _run(cfg: NodeConfig, secret: bytes) -> int:
    node = Node(cfg, secret)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(node.serve)
            except KernelError as exc:
                nursery.cancel_scope.cancel()
                return fail(EXIT_USAGE if exc.code in ("no-such-program", "bad-elf")
                            else EXIT_ERROR, f"cannot boot: {exc.message}")
            if logs.FORMAT != "json":          # a JSON log has its "node listening" event
                logs.say(f"jmig-node {node.name}: listening on {cfg.host} ports "
                         f"{cfg.port}..{cfg.port + 3}")
            _settle_heap()
            async for sig in signals:
                node.log.info("shutting down", signal=signal.Signals(sig).name)
                break
            await _shut_down(node, signals)
            nursery.cancel_scope.cancel()
    return EXIT_OK


def _settle_heap() -> None:
    """Once booted: collect, then put every object the boot made (modules,
    programs, the kernel's tables) out of the cyclic collector's sight.  A
    full collection stops every port of the node while it walks the heap;
    it then walks only what came later (45-120 ms -> about 13 ms measured
    on a node in the middle of a migration)."""
    gc.collect()
    gc.freeze()


async def _shut_down(node: Node, signals) -> None:
    """The orderly part of a shutdown (Node.shutdown); a second signal cuts
    it short, saying what that abandons."""
    async with trio.open_nursery() as nursery:
        async def second_signal():
            async for sig in signals:
                lost = node.migrations.abandoned()
                what = "exiting at once" + ("; this abandons " + "; ".join(lost) if lost else "")
                node.log.warning(what, signal=signal.Signals(sig).name, abandons=lost)
                if logs.FORMAT != "json":
                    logs.say(f"jmig-node: {what}")
                nursery.cancel_scope.cancel()
                return
        nursery.start_soon(second_signal)
        await node.shutdown()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    sys.exit(main())

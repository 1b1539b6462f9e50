"""How jmigctl reports a failure: every exception a command can meet,
as a CtlError (a message, an error code and the exit code of exits.py),
printed as a line or as JSON.  Shared by the command line (main.py), the
shell and top."""
from __future__ import annotations

import json

import trio

from ..errors import Error, leaf
from ..node.secret import SecretError
from ..proto.frames import ProtocolError
from ..proto.handshake import AuthError
from ..proto.wire import ConnectionClosed
from .client import RemoteError
from .exits import (EXIT_AUTH, EXIT_BUSY, EXIT_FAILED, EXIT_PROTOCOL, CtlError, Unreachable,
                    UsageError)

# What to do about a refusal, where the node's message does not say.
REFUSAL_HINTS = {
    "no-such-env": "`jmigctl ps` lists the node's envs",
    "no-such-image": "`jmigctl ls` lists the node's images",
    "bad-elf": "spawn takes a 32-bit JOS ELF executable (see examples/user)",
}


def bad_node(text: str) -> str:
    hint = ""
    if text and ":" not in text:
        hint = f" (add the base port: {text}:50001)"
    return (f"bad node address {text!r}: use HOST:PORT with PORT 1..65532, "
            f"e.g. 127.0.0.1:50001{hint}")


def classify(exc: BaseException, ctx, node: str | None = None) -> CtlError:
    """Any failure as a CtlError: exit code, error code, message (ctx: the
    command's Ctx, for the node it talked to when node is not given)."""
    exc = leaf(exc)
    if isinstance(exc, CtlError):
        return exc
    try:
        where = node or ctx.node
    except UsageError:
        where = "the node"
    if isinstance(exc, SecretError):
        return CtlError(str(exc), code="secret", exit=EXIT_AUTH)
    if isinstance(exc, RemoteError):
        hint = REFUSAL_HINTS.get(exc.code)
        msg = f"{exc.message} [{exc.code}]" + (f"; {hint}" if hint else "")
        return CtlError(msg, code=exc.code, exit=EXIT_FAILED)
    if isinstance(exc, AuthError):
        if exc.code == "busy":
            return CtlError(f"{where}: {exc.message}", code="busy", exit=EXIT_BUSY)
        if exc.code == "auth":
            return CtlError(f"{where}: {exc.message}", code="auth", exit=EXIT_AUTH)
        return CtlError(f"{where}: {exc.message}", code="protocol", exit=EXIT_PROTOCOL)
    if isinstance(exc, ConnectionClosed):
        return Unreachable(f"{where} closed the connection before answering (did the node "
                           "stop?)")
    if isinstance(exc, ProtocolError):
        return CtlError(f"{where}: protocol error: {exc}", code="protocol", exit=EXIT_PROTOCOL)
    if isinstance(exc, (OSError, trio.TooSlowError)):
        return Unreachable(f"cannot reach node {where}: "
                           f"{getattr(exc, 'strerror', None) or str(exc) or 'timed out'} "
                           "(is jmig-node running there? see --node / JMIG_NODE)")
    if isinstance(exc, Error):
        return CtlError(exc.message, code=exc.code, exit=EXIT_FAILED)
    return CtlError(f"internal error: {type(exc).__name__}: {exc} (a bug in jmigctl; "
                    "JMIG_DEBUG=1 shows where)", code="internal", exit=EXIT_FAILED)


def report(ctx_json: bool, err: CtlError, out, errout, prog: str = "jmigctl") -> int:
    message = err.message
    usage = getattr(err, "usage", None)
    if not prog:                             # inside the shell: hints in its own words
        message = message.replace("jmigctl ", "")
        usage = usage and usage.replace("jmigctl ", "")
    if ctx_json:
        print(json.dumps({"error": {"code": err.code, "message": message}}), file=out,
              flush=True)
    else:
        print(f"{prog or 'error'}: {message}" + (f"\n{usage}" if usage else ""), file=errout,
              flush=True)
    return err.exit

"""The versioned hello and mutual HMAC authentication every port demands.

    client -> server  {t: "hello", proto: "jmig", v: VERSION, port: KIND,
                       nonce: 32 random bytes, node: client name}
    server -> client  {t: "challenge", v: VERSION, nonce: 32 random bytes}
    client -> server  {t: "auth", mac: HMAC-SHA256(secret, "jmig-client" | KIND | snonce | cnonce)}
    server -> client  {t: "welcome", node: server name, version: jmig version,
                       mac: HMAC-SHA256(secret, "jmig-server" | KIND | cnonce | snonce)}
                  or  {t: "error", code: "auth" | "version" | "port" | "protocol" | "busy",
                       message}

The side that connects proves first.  The server answers with its own
proof only after it has verified the client's, so a peer without the
secret learns nothing it could test guesses of the secret against
offline: a challenge holds only a nonce.  Each proof is a MAC over both
fresh nonces; the secret never crosses the wire, and a recorded exchange
replayed later fails because the other side's nonce is new.  The client
checks the server's proof before it sends anything else, so it never
talks to a node that does not know the secret.

Illegal messages leave a state machine in FAILED with the reason in
`.error`; nothing else is accepted afterwards.
"""
from __future__ import annotations

import enum
import hashlib
import hmac
import os

from ..errors import Error

PROTO = "jmig"
VERSION = 2
PORT_KINDS = ("normal", "pgfault", "pager", "control")
NONCE_LEN = 32
MAX_NAME = 64                      # node names in hello and welcome
ERROR_CODES = ("auth", "version", "port", "protocol", "busy")


class State(enum.Enum):
    START = "start"
    SENT_HELLO = "sent-hello"
    SENT_CHALLENGE = "sent-challenge"
    SENT_AUTH = "sent-auth"
    DONE = "done"
    FAILED = "failed"


START, SENT_HELLO, SENT_CHALLENGE, SENT_AUTH, DONE, FAILED = State


class AuthError(Error):
    """The handshake failed: `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str):
        super().__init__(message, code=code)


def _mac(secret: bytes, label: bytes, kind: str, a: bytes, b: bytes) -> bytes:
    return hmac.new(secret, label + kind.encode() + a + b, hashlib.sha256).digest()


def _name(v) -> str:
    return v[:MAX_NAME] if isinstance(v, str) else ""


def _remote_error(msg: dict, who: str) -> AuthError:
    code = msg.get("code")
    return AuthError(code if code in ERROR_CODES else "protocol",
                     f"{who}: {str(msg.get('message', 'refused'))[:200]}")


class ServerHandshake:
    def __init__(self, secret: bytes, kind: str, node: str, software: str = ""):
        self.secret = secret
        self.kind = kind
        self.node = node
        self.software = software
        self.state = START
        self.peer = ""
        self.error: AuthError | None = None
        self._cnonce = b""
        self._snonce = b""

    def receive(self, msg: dict) -> dict:
        """Feed the client's next message; returns the reply to send.  After
        a failure the reply is the error message and state is FAILED."""
        try:
            return self._receive(msg)
        except AuthError as exc:
            self.state = FAILED
            self.error = exc
            return {"t": "error", "code": exc.code, "message": exc.message}

    def _receive(self, msg: dict) -> dict:
        t = msg.get("t")
        if self.state == START:
            if t != "hello" or msg.get("proto") != PROTO:
                raise AuthError("protocol", "expected a jmig hello")
            if msg.get("v") != VERSION:
                raise AuthError("version", f"protocol version {msg.get('v')!r} is not supported "
                                f"(this node speaks {VERSION})")
            if msg.get("port") != self.kind:
                raise AuthError("port", f"this is the {self.kind} port, not {msg.get('port')!r}")
            nonce = msg.get("nonce")
            if not isinstance(nonce, bytes) or len(nonce) != NONCE_LEN:
                raise AuthError("protocol", "bad nonce in hello")
            self.peer = _name(msg.get("node"))
            self._cnonce = nonce
            self._snonce = os.urandom(NONCE_LEN)
            self.state = SENT_CHALLENGE
            return {"t": "challenge", "v": VERSION, "nonce": self._snonce}
        if self.state == SENT_CHALLENGE:
            if t == "error":
                raise _remote_error(msg, "the client gave up")
            if t != "auth" or not isinstance(msg.get("mac"), bytes):
                raise AuthError("protocol", "expected auth")
            want = _mac(self.secret, b"jmig-client", self.kind, self._snonce, self._cnonce)
            if not hmac.compare_digest(want, msg["mac"]):
                raise AuthError("auth", "authentication failed: the client does not know "
                                "the cluster secret")
            self.state = DONE
            return {"t": "welcome", "node": self.node, "version": self.software,
                    "mac": _mac(self.secret, b"jmig-server", self.kind, self._cnonce,
                                self._snonce)}
        raise AuthError("protocol", f"unexpected message in state {self.state.value}")


class ClientHandshake:
    def __init__(self, secret: bytes, kind: str, node: str = ""):
        if kind not in PORT_KINDS:
            raise ValueError(f"unknown port kind {kind!r}")
        self.secret = secret
        self.kind = kind
        self.node = node
        self.state = START
        self.server = ""
        self.server_version = ""
        self._cnonce = os.urandom(NONCE_LEN)
        self._snonce = b""

    def hello(self) -> dict:
        self.state = SENT_HELLO
        return {"t": "hello", "proto": PROTO, "v": VERSION, "port": self.kind,
                "nonce": self._cnonce, "node": self.node}

    def receive(self, msg: dict) -> dict | None:
        """Feed the server's next message; returns the reply to send (None
        when done).  Raises AuthError on a refusal or a bad server proof."""
        try:
            return self._receive(msg)
        except AuthError:
            self.state = FAILED
            raise

    def _receive(self, msg: dict) -> dict | None:
        t = msg.get("t")
        if t == "error":
            if msg.get("code") == "auth":
                raise AuthError("auth", "authentication failed: the node and this client do "
                                "not share the cluster secret (check --secret-file / "
                                "JMIG_SECRET_FILE)")
            if msg.get("code") == "busy":       # the node's words say why, and what to do
                raise AuthError("busy", str(msg.get("message", "node busy"))[:200])
            raise _remote_error(msg, "the node refused")
        if self.state == SENT_HELLO and t == "challenge":
            nonce = msg.get("nonce")
            if msg.get("v") != VERSION:
                raise AuthError("version", f"the node speaks protocol version {msg.get('v')!r}; "
                                f"this jmig speaks {VERSION}")
            if not isinstance(nonce, bytes) or len(nonce) != NONCE_LEN:
                raise AuthError("protocol", "bad nonce in challenge")
            self._snonce = nonce
            self.state = SENT_AUTH
            return {"t": "auth",
                    "mac": _mac(self.secret, b"jmig-client", self.kind, self._snonce, self._cnonce)}
        if self.state == SENT_AUTH and t == "welcome":
            want = _mac(self.secret, b"jmig-server", self.kind, self._cnonce, self._snonce)
            if not isinstance(msg.get("mac"), bytes) or not hmac.compare_digest(want, msg["mac"]):
                raise AuthError("auth", "authentication failed: the node does not know "
                                "our cluster secret (check --secret-file / JMIG_SECRET_FILE)")
            self.state = DONE
            self.server = _name(msg.get("node"))
            self.server_version = str(msg.get("version", ""))[:MAX_NAME]
            return None
        raise AuthError("protocol", f"unexpected {t!r} from the node in state {self.state.value}")

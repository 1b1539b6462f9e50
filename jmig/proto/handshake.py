"""The versioned hello and mutual HMAC authentication every port demands.

    client -> server  {t: "hello", proto: "jmig", v: VERSION, port: KIND,
                       nonce: 32 random bytes, node: client name}
    server -> client  {t: "challenge", v: VERSION, nonce: 32 random bytes,
                       mac: HMAC-SHA256(secret, "jmig-server" | KIND | cnonce | snonce)}
    client -> server  {t: "auth", mac: HMAC-SHA256(secret, "jmig-client" | KIND | snonce | cnonce)}
    server -> client  {t: "welcome", node: server name, version: jmig version}
                  or  {t: "error", code: "auth" | "version" | "port" | "protocol", message}

A client that rejects the server's challenge (a bad proof, another
version) answers it with {t: "error", code, message} instead of its auth,
so that the server knows, and logs, why the client left.

Each side proves it knows the cluster secret by a MAC over both fresh
nonces; the secret never crosses the wire, and a replayed exchange fails
because the other side's nonce is new.  The client checks the server's
proof before giving its own.  Illegal messages leave a state machine in
FAILED with the reason in `.error`; nothing else is accepted afterwards.
"""
from __future__ import annotations

import hashlib
import hmac
import os

PROTO = "jmig"
VERSION = 1
PORT_KINDS = ("normal", "pgfault", "pager", "control")
NONCE_LEN = 32

START, SENT_HELLO, SENT_CHALLENGE, SENT_AUTH, DONE, FAILED = (
    "start", "sent-hello", "sent-challenge", "sent-auth", "done", "failed")


class AuthError(Exception):
    """The handshake failed: `code` is auth, version, port or protocol."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _mac(secret: bytes, label: bytes, kind: str, a: bytes, b: bytes) -> bytes:
    return hmac.new(secret, label + kind.encode() + a + b, hashlib.sha256).digest()


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
            node = msg.get("node", "")
            self.peer = node if isinstance(node, str) else ""
            self._cnonce = nonce
            self._snonce = os.urandom(NONCE_LEN)
            self.state = SENT_CHALLENGE
            return {"t": "challenge", "v": VERSION, "nonce": self._snonce,
                    "mac": _mac(self.secret, b"jmig-server", self.kind, self._cnonce, self._snonce)}
        if self.state == SENT_CHALLENGE:
            if t == "error":
                code = msg.get("code")
                raise AuthError(code if code in ("auth", "version", "port") else "protocol",
                                f"the client refused this node: {str(msg.get('message', ''))[:200]}")
            if t != "auth" or not isinstance(msg.get("mac"), bytes):
                raise AuthError("protocol", "expected auth")
            want = _mac(self.secret, b"jmig-client", self.kind, self._snonce, self._cnonce)
            if not hmac.compare_digest(want, msg["mac"]):
                raise AuthError("auth", "authentication failed: the client does not know "
                                "the cluster secret")
            self.state = DONE
            return {"t": "welcome", "node": self.node, "version": self.software}
        raise AuthError("protocol", f"unexpected message in state {self.state}")


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
        self.refusal: dict | None = None   # what to tell the server after rejecting it
        self._cnonce = os.urandom(NONCE_LEN)
        self._snonce = b""

    def hello(self) -> dict:
        self.state = SENT_HELLO
        return {"t": "hello", "proto": PROTO, "v": VERSION, "port": self.kind,
                "nonce": self._cnonce, "node": self.node}

    def receive(self, msg: dict) -> dict | None:
        """Feed the server's next message; returns the reply to send (None
        when done).  Raises AuthError on a refusal or a bad server proof;
        when the fault is the server's, `.refusal` is then the error message
        to send it (it carries no MAC)."""
        state = self.state
        try:
            return self._receive(msg)
        except AuthError as exc:
            if state == SENT_HELLO and msg.get("t") != "error":
                self.refusal = {"t": "error", "code": exc.code, "message": (
                    "the client and this node do not share the cluster secret"
                    if exc.code == "auth" else exc.message)}
            self.state = FAILED
            raise

    def _receive(self, msg: dict) -> dict | None:
        t = msg.get("t")
        if t == "error":
            self.state = FAILED
            raise AuthError(str(msg.get("code", "protocol")), str(msg.get("message", "refused")))
        if self.state == SENT_HELLO and t == "challenge":
            nonce = msg.get("nonce")
            if msg.get("v") != VERSION:
                self.state = FAILED
                raise AuthError("version", f"server speaks protocol version {msg.get('v')!r}")
            if not isinstance(nonce, bytes) or len(nonce) != NONCE_LEN:
                self.state = FAILED
                raise AuthError("protocol", "bad nonce in challenge")
            want = _mac(self.secret, b"jmig-server", self.kind, self._cnonce, nonce)
            if not isinstance(msg.get("mac"), bytes) or not hmac.compare_digest(want, msg["mac"]):
                self.state = FAILED
                raise AuthError("auth", "authentication failed: the node does not know "
                                "our cluster secret (check --secret-file / JMIG_SECRET_FILE)")
            self._snonce = nonce
            self.state = SENT_AUTH
            return {"t": "auth",
                    "mac": _mac(self.secret, b"jmig-client", self.kind, self._snonce, self._cnonce)}
        if self.state == SENT_AUTH and t == "welcome":
            self.state = DONE
            self.server = str(msg.get("node", ""))
            self.server_version = str(msg.get("version", ""))
            return None
        state, self.state = self.state, FAILED
        raise AuthError("protocol", f"unexpected {t!r} from the server in state {state}")

"""Who may use the web view, sans I/O: the login token (derived from the
cluster secret, which never leaves the process), the server-side session
set, and the same-origin rule.

    token   = hex(HMAC-SHA256(secret, "jmig-web-v1"))   what `jmigctl web` prints
    session = 32 random bytes, url-safe                 an HttpOnly, SameSite=Strict cookie

A request passes `check_request` when its Host is one this server answers
to (so a DNS-rebinding page gets nothing) and its Origin, if it sends one,
is this server's own, and it is not marked cross-site by the browser.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict

TOKEN_LABEL = b"jmig-web-v1"
COOKIE = "jmig_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 256                  # the oldest is forgotten beyond this


def token_for(secret: bytes) -> str:
    """The login token of a cluster: a holder can read the cluster's state
    (and, with --allow-control, pause, resume and migrate envs) but learns
    nothing of the secret, which node handshakes need."""
    return hmac.new(secret, TOKEN_LABEL, hashlib.sha256).hexdigest()


class Sessions:
    """The cookies handed out at login, each valid SESSION_SECONDS."""

    def __init__(self, token: str, clock=time.monotonic):
        self._token = token.encode()
        self._clock = clock
        self._live: OrderedDict[str, float] = OrderedDict()   # cookie -> expiry

    def login(self, token: str) -> str | None:
        """A new session's cookie if token is right, else None."""
        if not hmac.compare_digest(token.encode(), self._token):
            return None
        cookie = secrets.token_urlsafe(32)
        self._live[cookie] = self._clock() + SESSION_SECONDS
        while len(self._live) > MAX_SESSIONS:
            self._live.popitem(last=False)
        return cookie

    def valid(self, cookie: str | None) -> bool:
        if not cookie:
            return False
        # Look through every session with compare_digest (not a dict lookup
        # on the secret value): no timing says how much of a guess was right.
        now = self._clock()
        ok = False
        for c, expiry in list(self._live.items()):
            if expiry < now:
                del self._live[c]
            elif hmac.compare_digest(c.encode(), cookie.encode()):
                ok = True
        return ok

    def logout(self, cookie: str | None) -> None:
        for c in list(self._live):
            if cookie and hmac.compare_digest(c.encode(), cookie.encode()):
                del self._live[c]


def allowed_hosts(host: str, port: int) -> set[str]:
    """The Host headers this server answers to: its address, and localhost
    when it listens on loopback."""
    out = {f"{host}:{port}"}
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return out
    if ip.version == 6:
        out.add(f"[{host}]:{port}")
    if ip.is_loopback:
        out |= {f"localhost:{port}", f"127.0.0.1:{port}"}
    return out


def check_request(headers: dict[str, str], hosts: set[str]) -> str | None:
    """Why a request is refused (403), or None.  headers: lower-case names."""
    host = headers.get("host", "")
    if host not in hosts:
        return f"unknown host {host[:64]!r}: use {sorted(hosts)[0]}"
    origin = headers.get("origin")
    if origin is not None and origin != f"http://{host}":
        return "cross-origin request refused"
    if headers.get("sec-fetch-site") == "cross-site":
        return "cross-site request refused"
    return None

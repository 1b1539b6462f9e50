"""The web view's HTTP side: a Starlette app served by Hypercorn's trio
worker.  One page (static/, no build step, nothing from elsewhere), a
login, the cluster as JSON, a server-sent event stream per browser, and,
with --allow-control only, pause / resume / migrate.

    GET  /                     the page (holds no data)
    POST /api/login  {token}   -> Set-Cookie jmig_session (HttpOnly, SameSite=Strict)
    POST /api/logout
    GET  /api/state            the last look at the cluster (JSON)
    GET  /api/events?node=N&envid=E
                               text/event-stream: `state` events, at most
                               MAX_RATE a second, only when something changed;
                               the page map of env E on node N (followed when it
                               migrates) rides along
    POST /api/env/pause|resume|migrate  {node, envid[, to, method]}

Every request passes auth.check_request (Host, Origin) or gets 403; every
/api/ request but login needs the session cookie or gets 401; bodies are
JSON of at most MAX_BODY bytes (400 / 413 / 415 otherwise).
"""
from __future__ import annotations

import json
import math
from importlib import resources

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .auth import COOKIE, Sessions, allowed_hosts, check_request
from .poller import Poller

MAX_RATE = 4                       # state events a second per browser, at most
KEEPALIVE = 15.0                   # seconds between comments on an idle stream
MAX_BODY = 2048
MAX_STREAMS = 32                   # event streams open at once (503 beyond)
METHODS = ("normal", "pgfault", "precopy")
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Web:
    """The web view of one cluster: sessions, the poller, the routes."""

    def __init__(self, nodes: list[str], secret: bytes, token: str, *,
                 allow_control: bool = False, interval: float | None = None):
        self.sessions = Sessions(token)
        self.poller = Poller(nodes, secret, **({"interval": interval} if interval else {}))
        self.allow_control = allow_control
        self.hosts: set[str] = set()
        self.files = {path: (resources.files(__package__).joinpath("static", name).read_bytes(),
                             ctype) for path, (name, ctype) in STATIC.items()}
        routes = [Route(path, self.static) for path in STATIC] + [
            Route("/api/login", self.login, methods=["POST"]),
            Route("/api/logout", self.logout, methods=["POST"]),
            Route("/api/state", self.state),
            Route("/api/events", self.events),
            Route("/api/env/{action}", self.control, methods=["POST"]),
        ]
        self.app = Guard(Starlette(routes=routes, exception_handlers={HTTPError: _error}), self)

    # -- requests ---------------------------------------------------------------------
    def authed(self, request: Request) -> None:
        if not self.sessions.valid(request.cookies.get(COOKIE)):
            raise HTTPError(401, "log in first (the token `jmigctl web --print-token` prints)")

    async def body(self, request: Request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPError(415, "send application/json")
        cl = request.headers.get("content-length")
        if cl is not None and (not cl.isdigit() or int(cl) > MAX_BODY):
            raise HTTPError(413, f"a request body is at most {MAX_BODY} bytes")
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY:
                raise HTTPError(413, f"a request body is at most {MAX_BODY} bytes")
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise HTTPError(400, "the body is not JSON") from None
        if not isinstance(obj, dict):
            raise HTTPError(400, "the body must be a JSON object")
        return obj

    async def static(self, request: Request) -> Response:
        body, ctype = self.files[request.url.path]
        return Response(body, media_type=ctype.split(";")[0],
                        headers={"content-type": ctype})

    async def login(self, request: Request) -> Response:
        token = (await self.body(request)).get("token")
        if not isinstance(token, str) or not 0 < len(token) <= 128:
            raise HTTPError(400, "token must be a string of at most 128 characters")
        cookie = self.sessions.login(token.strip())
        if cookie is None:
            raise HTTPError(401, "wrong token")
        resp = JSONResponse({"ok": True, "control": self.allow_control})
        resp.set_cookie(COOKIE, cookie, httponly=True, samesite="strict", path="/")
        return resp

    async def logout(self, request: Request) -> Response:
        self.sessions.logout(request.cookies.get(COOKIE))
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    async def state(self, request: Request) -> Response:
        self.authed(request)
        await self.poller.look()
        return JSONResponse({**self.poller.view, "control": self.allow_control})

    def selection(self, request: Request) -> tuple[str, int] | None:
        q = request.query_params
        node, envid = q.get("node"), q.get("envid")
        if not node and not envid:
            return None
        if node not in self.poller.nodes:
            raise HTTPError(400, f"node must be one of {', '.join(self.poller.nodes)}")
        return node, _envid(envid)

    async def events(self, request: Request) -> "EventStream":
        self.authed(request)
        selected = self.selection(request)
        if self.poller.viewers >= MAX_STREAMS:
            raise HTTPError(503, f"{MAX_STREAMS} pages are watching already; close one")
        return EventStream(self, selected)

    async def control(self, request: Request) -> Response:
        self.authed(request)
        action = request.path_params["action"]
        if not self.allow_control:
            raise HTTPError(403, "read-only: start `jmigctl web --allow-control` for the buttons")
        if action not in ("pause", "resume", "migrate"):
            raise HTTPError(404, f"no action {action[:32]!r}: pause, resume or migrate")
        body = await self.body(request)
        node = body.get("node")
        if node not in self.poller.nodes:
            raise HTTPError(400, f"node must be one of {', '.join(self.poller.nodes)}")
        args = {"envid": _envid(body.get("envid"))}
        if action == "migrate":
            to, method = body.get("to"), body.get("method", "pgfault")
            if to not in self.poller.nodes or to == node:
                raise HTTPError(400, "to must be another of " + ", ".join(self.poller.nodes))
            if method not in METHODS:
                raise HTTPError(400, f"method must be one of {', '.join(METHODS)}")
            # It runs on there as it runs here: resumed unless it is paused.
            env = next((e for n in self.poller.view["nodes"] if n["addr"] == node
                        for e in n.get("envs", []) if e["envid"] == args["envid"]), None)
            paused = env is not None and "paused" in (env.get("state") or "")
            args.update(to=to, method=method, resume=not paused, detach=True)
        try:
            result = await self.poller.call(node, action, args)
        except trio.TooSlowError:
            raise HTTPError(504, f"{node} did not answer") from None
        except Exception as exc:
            raise HTTPError(409 if getattr(exc, "code", None) else 502,
                            getattr(exc, "message", None) or str(exc) or type(exc).__name__) \
                from None
        return JSONResponse({"ok": True, "result": result})


async def _error(request: Request, exc: HTTPError) -> Response:
    return JSONResponse({"error": exc.message}, exc.status)


def _envid(v) -> int:
    try:
        n = int(v, 0) if isinstance(v, str) else v
    except ValueError:
        n = None
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n < 1 << 31:
        raise HTTPError(400, f"envid must be a positive env id, got {str(v)[:32]!r}")
    return n


class EventStream:
    """One browser's text/event-stream: the newest look at the cluster, sent
    when it differs from the last one sent, at most MAX_RATE times a second
    (a look that came sooner waits and is replaced by any newer one)."""

    def __init__(self, web: Web, selected: tuple[str, int] | None):
        self.web = web
        self.poller = web.poller
        self.selected = selected
        self.known: set[str] | None = None   # migrate jobs of the env done before it was selected

    def payload(self) -> dict:
        p = self.poller
        sel = self.selected
        if sel is not None:
            sel = self._follow(sel)
            if sel != self.selected:
                self.selected = sel
                p.selected[self] = sel
        pm = p.pagemaps.get(sel) if sel else None
        return {**p.view, "control": self.web.allow_control,
                "selected": {"node": sel[0], "envid": sel[1]} if sel else None,
                "pagemap": {**pm, "node": sel[0]} if pm else None}

    def _follow(self, sel: tuple[str, int]) -> tuple[str, int]:
        """Where the selected env is now: if a migration job of its node
        moved it since it was selected, the job's target and new env id
        (a pgfault origin still lists the env, serving its pages)."""
        node, envid = sel
        for n in self.poller.view["nodes"]:
            if n["addr"] != node or "jobs" not in n:
                continue
            done = {j["id"]: j for j in n["jobs"] if j.get("kind") == "migrate"
                    and j.get("envid") == envid and j.get("state") == "succeeded"
                    and j.get("target") in self.poller.nodes
                    and isinstance((j.get("result") or {}).get("new_envid"), int)}
            if self.known is None:            # the first look: these moved it before
                self.known = set(done)
                return sel
            for jid, j in done.items():
                if jid not in self.known:
                    self.known = None         # a new selection: look afresh
                    return j["target"], j["result"]["new_envid"]
        return sel

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"x-accel-buffering", b"no")]})
        p = self.poller
        p.attach()
        if self.selected:
            p.selected[self] = self.selected
        try:
            async with trio.open_nursery() as nursery:
                async def disconnect():
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    nursery.cancel_scope.cancel()
                nursery.start_soon(disconnect)
                await self._stream(send)
                nursery.cancel_scope.cancel()
        finally:
            p.detach(self)

    async def _stream(self, send) -> None:
        async def chunk(text: str) -> None:
            await send({"type": "http.response.body", "body": text.encode(), "more_body": True})
        await chunk("retry: 2000\n\n")
        seen, last, sent_at = -1, None, -math.inf
        while True:
            with trio.move_on_after(KEEPALIVE) as idle:
                seen = await self.poller.wait_change(seen)
            if idle.cancelled_caught:
                await chunk(": idle\n\n")
                continue
            await trio.sleep_until(sent_at + 1 / MAX_RATE)    # the rate bound
            payload = self.payload()
            when = payload.pop("when", 0)
            data = json.dumps(payload, separators=(",", ":"))
            if data == last:                          # nothing changed: nothing sent
                continue
            await chunk(f"event: state\ndata: {data[:-1]},\"when\":{when}}}\n\n")
            last, sent_at = data, trio.current_time()


class Guard:
    """ASGI middleware in front of everything: the Host and Origin rule,
    and the security headers on every response."""

    def __init__(self, app, web: Web):
        self.app = app
        self.web = web

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)

        async def send_headers(msg):
            if msg["type"] == "http.response.start":
                msg = {**msg, "headers": [*msg.get("headers", []), *SECURITY_HEADERS]}
            await send(msg)
        if scope["type"] != "http":
            return await send({"type": "websocket.close", "code": 1008})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        why = check_request(headers, self.web.hosts)
        if why is not None:
            return await JSONResponse({"error": why}, 403)(scope, receive, send_headers)
        await self.app(scope, receive, send_headers)


async def serve(web: Web, host: str, port: int, *,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve web on host:port (0: any free port) until cancelled; started
    with the port bound."""
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.loglevel = "WARNING"
    config.graceful_timeout = 1.0
    config.h11_max_incomplete_size = 16 * 1024      # request line and headers
    async with trio.open_nursery() as nursery:
        nursery.start_soon(web.poller.run)
        binds = await nursery.start(hypercorn_serve, web.app, config)
        bound = int(binds[0].rsplit(":", 1)[1])
        web.hosts = allowed_hosts(host, bound)
        task_status.started(bound)


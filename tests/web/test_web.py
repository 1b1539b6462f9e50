"""`jmigctl web` without a browser: who gets in (token, cookie, origin),
what the read-only mode refuses, bad input, the rate bound on the event
stream, and no node work without viewers.  Real nodes, a real web process,
plain HTTP."""
import json
import subprocess
import sys
import time

import pytest

from jmig.node.secret import read_secret
from jmig.web.auth import Sessions, allowed_hosts, check_request, token_for

from .webproc import WebProcess, read_events


@pytest.fixture
def two_nodes(daemons):
    return daemons("a"), daemons("b")


@pytest.fixture
def web(two_nodes):
    a, b = two_nodes
    w = WebProcess(a.secret_file, [a.addr, b.addr])
    yield w
    w.close()


@pytest.fixture
def web_control(two_nodes):
    a, b = two_nodes
    w = WebProcess(a.secret_file, [a.addr, b.addr], "--allow-control")
    yield w
    w.close()


def spawn(node, *argv) -> int:
    code, out, err = node.ctl("spawn", "--json", *argv)
    assert code == 0, err
    return json.loads(out)["new_envid"]


# -- sans I/O ------------------------------------------------------------------------------

def test_sessions_accept_the_token_only_and_expire():
    now = [0.0]
    s = Sessions(token_for(b"x" * 32), clock=lambda: now[0])
    assert s.login("0" * 64) is None
    cookie = s.login(token_for(b"x" * 32))
    forged = cookie[:-1] + ("B" if cookie[-1] == "A" else "A")       # its last character changed
    assert cookie and s.valid(cookie) and not s.valid(forged) and not s.valid(None)
    now[0] += 13 * 3600
    assert not s.valid(cookie)


def test_check_request_wants_our_host_and_our_origin():
    hosts = allowed_hosts("127.0.0.1", 8080)
    assert check_request({"host": "127.0.0.1:8080"}, hosts) is None
    assert check_request({"host": "localhost:8080", "origin": "http://localhost:8080"}, hosts) \
        is None
    assert "host" in check_request({"host": "evil.example:8080"}, hosts)
    assert "cross-origin" in check_request({"host": "127.0.0.1:8080",
                                            "origin": "http://evil.example"}, hosts)
    assert "cross-origin" in check_request({"host": "127.0.0.1:8080", "origin": "null"}, hosts)
    assert "cross-site" in check_request({"host": "127.0.0.1:8080",
                                          "sec-fetch-site": "cross-site"}, hosts)


# -- access ------------------------------------------------------------------------------------

def test_api_needs_a_session_from_the_right_token(web):
    for path in ("/api/state", "/api/events"):
        assert web.request("GET", path)[0] == 401
        assert web.request("GET", path, headers={"Cookie": "jmig_session=guess"})[0] == 401
    status, _, body = web.request("POST", "/api/login", {"token": "0" * 64})
    assert status == 401 and b"wrong token" in body
    status, headers, body = web.request("POST", "/api/login", {"token": web.token})
    assert status == 200 and json.loads(body) == {"ok": True, "control": False}
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert web.token not in cookie
    status, _, body = web.request("GET", "/api/state",
                                  headers={"Cookie": cookie.split(";")[0]})
    assert status == 200 and [n["name"] for n in json.loads(body)["nodes"]] == ["a", "b"]
    status, _, _ = web.request("POST", "/api/logout", {}, headers={"Cookie": cookie.split(";")[0]})
    assert status == 200
    assert web.request("GET", "/api/state", headers={"Cookie": cookie.split(";")[0]})[0] == 401


def test_cross_origin_and_foreign_hosts_get_403_even_with_a_session(web):
    cookie = web.login()
    own = f"{web.host}:{web.port}"
    for headers in ({"Origin": "http://evil.example"}, {"Origin": f"http://{own}.evil.example"},
                    {"Host": f"evil.example:{web.port}"}, {"Sec-Fetch-Site": "cross-site"}):
        status, _, body = web.request("GET", "/api/state", headers={"Cookie": cookie, **headers})
        assert status == 403, (headers, body)
        status, _, _ = web.request("POST", "/api/login", {"token": web.token}, headers=headers)
        assert status == 403
    status, _, _ = web.request("GET", "/api/state", headers={"Cookie": cookie,
                                                             "Origin": f"http://{own}"})
    assert status == 200


def test_the_secret_never_leaves_and_the_token_is_derived_from_it(web, two_nodes):
    secret_file = two_nodes[0].secret_file
    secret = read_secret(secret_file)
    assert web.token == token_for(secret)
    r = subprocess.run([sys.executable, "-m", "jmig.ctl.main", "--secret-file",
                        str(secret_file), "web", "--print-token"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == web.token
    cookie = web.login()
    seen = b""
    for path in ("/", "/app.js", "/app.css", "/api/state"):
        status, headers, body = web.request("GET", path, headers={"Cookie": cookie})
        assert status == 200
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        seen += body
    c, resp = web.events(cookie)
    seen += json.dumps(read_events(resp, 5.0, most=1)).encode()
    c.close()
    assert secret not in seen and secret.hex().encode() not in seen
    assert web.token.encode() not in seen


def test_read_only_refuses_every_control_action(web, two_nodes):
    a, _ = two_nodes
    envid = spawn(a, "loop")
    cookie = web.login()
    for action, body in (("pause", {"node": a.addr, "envid": envid}),
                         ("resume", {"node": a.addr, "envid": envid}),
                         ("migrate", {"node": a.addr, "envid": envid, "to": two_nodes[1].addr})):
        status, _, text = web.request("POST", f"/api/env/{action}", body,
                                      headers={"Cookie": cookie})
        assert status == 403 and b"read-only" in text
    assert web.request("POST", "/api/env/pause", {"node": a.addr, "envid": envid})[0] == 401
    code, out, _ = a.ctl("ps", "--json")
    assert "paused" not in json.loads(out)[0]["state"]         # untouched


def test_control_pauses_resumes_and_migrates_with_allow_control(web_control, two_nodes):
    a, b = two_nodes
    w = web_control
    envid = spawn(a, "loop")
    cookie = w.login()
    ok = lambda action, body: w.request("POST", f"/api/env/{action}", body,   # noqa: E731
                                        headers={"Cookie": cookie})
    status, _, text = ok("pause", {"node": a.addr, "envid": envid})
    assert status == 200, text
    assert "paused" in json.loads(a.ctl("ps", "--json")[1])[0]["state"]
    status, _, text = ok("resume", {"node": a.addr, "envid": envid})
    assert status == 200, text
    status, _, text = ok("migrate", {"node": a.addr, "envid": envid, "to": b.addr,
                                     "method": "normal"})
    assert status == 200, text
    deadline = time.monotonic() + 30
    while json.loads(b.ctl("ps", "--json")[1]) == [] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [e["program"] for e in json.loads(b.ctl("ps", "--json")[1])] == ["loop"]
    status, _, text = ok("kill", {"node": b.addr, "envid": envid})
    assert status == 404


def test_bad_input_gets_a_clear_4xx(web_control, two_nodes):
    a, _ = two_nodes
    w = web_control
    cookie = w.login()
    h = {"Cookie": cookie}
    cases = [
        ("POST", "/api/login", None, b"{", {}, 400, b"not JSON"),
        ("POST", "/api/login", None, b"[1]", {}, 400, b"JSON object"),
        ("POST", "/api/login", {"token": 5}, None, {}, 400, b"token must be"),
        ("POST", "/api/login", {"token": "x" * 200}, None, {}, 400, b"token must be"),
        ("POST", "/api/login", None, b"x" * 5000, {}, 413, b"at most"),
        ("POST", "/api/login", None, b"token=abc",
         {"Content-Type": "application/x-www-form-urlencoded"}, 415, b"application/json"),
        ("POST", "/api/env/pause", {"node": "1.2.3.4:5", "envid": 4096}, None, h, 400,
         b"node must be"),
        ("POST", "/api/env/pause", {"node": a.addr, "envid": "x"}, None, h, 400, b"envid"),
        ("POST", "/api/env/pause", {"node": a.addr, "envid": 4242}, None, h, 409, b"4242"),
        ("POST", "/api/env/migrate", {"node": a.addr, "envid": 4096, "to": a.addr}, None, h,
         400, b"another"),
        ("GET", "/api/events?node=nowhere:1&envid=4096", None, None, h, 400, b"node must be"),
        ("GET", f"/api/events?node={a.addr}&envid=-3", None, None, h, 400, b"envid"),
    ]
    for method, path, body, raw, headers, want, text in cases:
        status, _, got = w.request(method, path, body, headers=headers, raw=raw)
        assert status == want and text in got, (path, body, raw, status, got)


# -- the event stream -------------------------------------------------------------------------

def test_events_come_at_most_4_a_second_from_a_busy_cluster(web, two_nodes):
    a, b = two_nodes
    mt = spawn(a, "memtest", "512", "64")
    for node in (a, b):
        for _ in range(3):
            spawn(node, "loop")
    cookie = web.login()
    c, resp = web.events(cookie, f"?node={a.addr}&envid={mt}")
    assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
    read_events(resp, 1.0)                                     # the stream is going
    t0 = time.monotonic()
    events = read_events(resp, 2.0)
    c.close()
    span = time.monotonic() - t0
    print(f"{len(events)} state events in {span:.2f} s")
    assert 2 <= len(events) <= 4 * 2 + 1
    gaps = [y["_t"] - x["_t"] for x, y in zip(events, events[1:])]
    assert min(gaps) > 0.2                                     # 1/4 s, less read jitter
    last = events[-1]
    assert last["pagemap"]["envid"] == mt and last["pagemap"]["node"] == a.addr
    assert sum(last["pagemap"]["counts"].values()) > 512
    assert {e["program"] for n in last["nodes"] for e in n["envs"]} == {"memtest", "loop"}


def test_no_connection_to_any_node_without_viewers(web, two_nodes):
    a, b = two_nodes

    def connections(node) -> int:          # control sessions, this request's included
        return json.loads(node.ctl("info", "--json")[1])["connections"]
    time.sleep(0.5)
    assert connections(a) == connections(b) == 1
    cookie = web.login()
    assert web.request("GET", "/api/state", headers={"Cookie": cookie})[0] == 200
    assert connections(a) == connections(b) == 1               # a one-off look lets go
    c, resp = web.events(cookie)
    assert read_events(resp, 5.0, most=1)
    assert connections(a) == connections(b) == 2               # the web process asks
    c.close()
    deadline = time.monotonic() + 5
    while (connections(a), connections(b)) != (1, 1) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert connections(a) == connections(b) == 1               # and stops when nobody looks


def test_one_node_given_shows_every_member_it_lists(daemons):
    a = daemons("a")
    b = daemons("b", "--join", a.addr)
    w = WebProcess(a.secret_file, [a.addr])
    try:
        cookie = w.login()
        deadline = time.monotonic() + 30
        names = []
        while time.monotonic() < deadline:
            status, _, body = w.request("GET", "/api/state", headers={"Cookie": cookie})
            assert status == 200
            names = [n.get("name") for n in json.loads(body)["nodes"]]
            if names == ["a", "b"]:
                break
            time.sleep(0.3)
        assert names == ["a", "b"]
        assert b.addr in [n["addr"] for n in json.loads(body)["nodes"]]
    finally:
        w.close()

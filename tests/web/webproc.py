"""`jmigctl web` as a subprocess for the tests, and a small HTTP client
(http.client: no proxy, no cookie jar to surprise anyone)."""
from __future__ import annotations

import http.client
import json
import os
import re
import select
import subprocess
import sys
import time

URL_RE = re.compile(r"jmig web: (http://([^/]+):(\d+)/)#token=([0-9a-f]+)")


class WebProcess:
    def __init__(self, secret_file, nodes: list[str], *args: str):
        env = dict(os.environ, JMIG_SECRET_FILE=str(secret_file))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jmig.ctl.main", "web", "--nodes", ",".join(nodes),
             "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            text=True)
        line = self._first_line(30)
        m = URL_RE.search(line)
        if not m:
            self.close()
            raise RuntimeError(f"jmigctl web printed {line!r}; stderr: {self.proc.stderr.read()}")
        self.url, self.host, self.port, self.token = m[1], m[2], int(m[3]), m[4]
        self.login_url = f"{self.url}#token={self.token}"

    def _first_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return ""
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                return self.proc.stdout.readline()
        return ""

    def request(self, method: str, path: str, body=None, headers=None,
                raw: bytes | None = None) -> tuple[int, dict, bytes]:
        """(status, headers with lower-case names, body)."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=10)
        h = {"Content-Type": "application/json"} if body is not None or raw is not None else {}
        h.update(headers or {})
        c.request(method, path, body=raw if raw is not None else
                  (json.dumps(body) if body is not None else None), headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def login(self) -> str:
        """A session cookie ("jmig_session=...")."""
        status, headers, body = self.request("POST", "/api/login", {"token": self.token})
        assert status == 200, body
        return headers["set-cookie"].split(";")[0]

    def events(self, cookie: str, query: str = "", headers=None):
        """An open event stream: (connection, response)."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=10)
        c.request("GET", "/api/events" + query, headers={"Cookie": cookie, **(headers or {})})
        return c, c.getresponse()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def read_events(resp, seconds: float, most: int = 10**6) -> list[dict]:
    """The `state` events of a stream within `seconds` (or the first
    `most`), decoded.  A stream sends only changes: on an idle cluster, ask
    for the first one only (a read waits for the next line)."""
    out = []
    deadline = time.monotonic() + seconds
    event = None
    while time.monotonic() < deadline and len(out) < most:
        line = resp.fp.readline()
        if not line:
            break
        if line.startswith(b"event: "):
            event = line[7:].strip().decode()
        elif line.startswith(b"data: ") and event == "state":
            out.append(json.loads(line[6:]))
            out[-1]["_t"] = time.monotonic()
    return out

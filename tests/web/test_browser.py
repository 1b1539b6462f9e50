"""The web view in a real browser (headless Chromium driven by selenium):
log in through the form, pick a memtest on node a, move it to node b with
a pgfault migration (jmigctl), and watch from the DOM its page map on b
go from remote to faulted as it runs (resumed with the page's button),
then back to a with the background push (pushed pages).  Screenshots go to
the test's tmp_path (printed).  Skipped where no Chromium and chromedriver
are installed (.ci/run installs them with apt-get when it can)."""
import json
import os
import shutil
import time

import pytest

from .webproc import WebProcess

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)
DRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:                           # pragma: no cover
    webdriver = None

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(webdriver is None, reason="selenium is not installed (pip install "
                       "-e .[test])"),
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="no headless browser: install Debian's chromium and "
                       "chromium-driver (apt-get install chromium chromium-driver)"),
]


@pytest.fixture
def browser():
    o = Options()
    o.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-proxy-server", "--window-size=1400,800"):
        o.add_argument(a)
    d = webdriver.Chrome(options=o, service=Service(DRIVER))
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def wait(what: str, fn, timeout: float = 60.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; the page map's cells: {counts.last}")


def counts(d) -> dict[str, int]:
    """The page map's cells by state, counted in the DOM."""
    counts.last = d.execute_script("""
        const out = {};
        for (const s of ["present", "remote", "inflight", "dirty", "pushed", "faulted"])
            out[s] = document.querySelectorAll("#pagemap .cell.s-" + s).length;
        return out;""")
    return counts.last


counts.last = None


def selected(d) -> tuple[str, int] | None:
    h = d.find_element(By.ID, "selected")
    node, envid = h.get_attribute("data-node"), h.get_attribute("data-envid")
    return (node, int(envid)) if node and envid else None


def ctl(node, *argv) -> dict:
    code, out, err = node.ctl(argv[0], "--json", *argv[1:])
    assert code == 0, err
    return json.loads(out)


def test_page_map_shows_a_pgfault_migration_in_a_real_browser(daemons, browser, tmp_path):
    a, b = daemons("a"), daemons("b")
    web = WebProcess(a.secret_file, [a.addr, b.addr], "--allow-control")
    try:
        envid = ctl(a, "spawn", "memtest", "1024", "256")["new_envid"]
        wait("memtest's 1024 pages", lambda: ctl(a, "ps")[0]["pages"] > 1024)
        ctl(a, "pause", str(envid))
        d = browser
        # Log in through the form (the URL without its #token part).
        d.get(web.url)
        wait("the login form", lambda: d.find_element(By.ID, "login").is_displayed())
        d.find_element(By.ID, "login-token").send_keys(web.token)
        d.find_element(By.ID, "login-button").click()
        row = f'tr.env[data-node="{a.addr}"][data-envid="{envid}"]'
        wait("the memtest row on a", lambda: d.find_elements(By.CSS_SELECTOR, row))
        d.find_element(By.CSS_SELECTOR, row).click()
        before = wait("its page map", lambda: (c := counts(d)) and sum(c.values()) > 1024 and c)
        assert before["remote"] == 0 and before["dirty"] >= 1024
        assert d.find_elements(By.ID, "resume")                  # --allow-control: buttons

        # pgfault to b, no push, not resumed: every page stays on a for now.
        r = ctl(a, "migrate", str(envid), "--to", b.addr, "--method", "pgfault", "--no-push")
        new = r["new_envid"]
        wait("the page to follow the env to b", lambda: selected(d) == (b.addr, new))
        wait("the env's row on b", lambda: d.find_elements(
            By.CSS_SELECTOR, f'tr.env[data-node="{b.addr}"][data-envid="{new}"]'))
        remote = wait("remote pages on b", lambda: (c := counts(d))["remote"] >= 1024 and c)
        print("after the migration:", remote)
        shot = tmp_path / "web-remote.png"
        d.save_screenshot(str(shot))

        # Resume it from the page: its faults bring the pages in.
        d.find_element(By.ID, "resume").click()
        seen = []

        def some_faulted():
            c = counts(d)
            seen.append(c)
            return c["faulted"] >= 64 and c["remote"] + c["inflight"] > 0 and c
        mid = wait("faulted pages while others are still remote", some_faulted)
        print("while it runs on b:", mid)
        d.save_screenshot(str(tmp_path / "web-faulting.png"))
        # A pass of memtest touches its 1024 pages; the few it never touches
        # (without push) stay on a.
        done = wait("memtest's pages on b", lambda: (c := counts(d))["faulted"] >= 1024 and c,
                    timeout=120)
        print("a pass later:", done)
        assert done["pushed"] == 0 and done["remote"] + done["inflight"] < 64

        # Back to a with the background push, paused: pushed pages.
        r = ctl(b, "migrate", str(new), "--to", a.addr, "--method", "pgfault")
        back = r["new_envid"]
        wait("the page to follow the env to a", lambda: selected(d) == (a.addr, back))
        pushed = wait("pushed pages on a", lambda: (c := counts(d))["pushed"] >= 512 and
                      c["remote"] == 0 and c, timeout=120)
        print("pushed back to a:", pushed)
        final = tmp_path / "web.png"
        d.save_screenshot(str(final))
        print(f"screenshots: {shot}, {tmp_path / 'web-faulting.png'}, {final}")
        if os.environ.get("JMIG_WEB_SCREENSHOT"):
            shutil.copy(tmp_path / "web-faulting.png", os.environ["JMIG_WEB_SCREENSHOT"])
        # (the page's first look, before the login, is a 401 by design)
        logs = [e for e in d.get_log("browser") if e["level"] == "SEVERE"
                and "status of 401" not in e["message"]]
        assert not logs, logs
    finally:
        web.close()

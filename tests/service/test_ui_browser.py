"""The Prefect UI in a real headless browser (Debian's `chromium`, `scripts/setup_browser.sh`): log in with the
basic-auth string, open the `internalize` deployment's run form and check it shows our typed parameters.
Driven over the Chrome DevTools Protocol with `websockets` (already a Prefect dependency), so nothing else is
installed. Saves the screenshot docs/service.md shows (docs/ui-run-form.png).

Run: scripts/test.sh -m browser tests/service/test_ui_browser.py
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "ui-run-form.png"


class _Page:
    """The smallest CDP client: send a command, wait for its answer (events are skipped)."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self._ws = connect(ws_url, max_size=50 * 2**20)
        self._ids = itertools.count(1)

    def call(self, method: str, **params):
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self._ws.recv(timeout=60))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self._ws.close()


@pytest.fixture
def browser(tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium not installed (bash scripts/setup_browser.sh)")
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [
            exe,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1400,1000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.time() + 60
        while not port_file.is_file() or not port_file.read_text().strip():
            assert time.time() < deadline and proc.poll() is None, "chromium did not start"
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
        page = _Page(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"])
        yield page
        page.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_for_text(page: _Page, needles: list[str], timeout_s: float = 90) -> str:
    deadline = time.time() + timeout_s
    text = ""
    while time.time() < deadline:
        text = page.js("document.body ? document.body.innerText : ''") or ""
        if all(n.lower() in text.lower() for n in needles):
            return text
        time.sleep(1)
    raise AssertionError(f"page never showed {needles}; it shows:\n{text[:3000]}")


def test_ui_run_form_shows_typed_parameters(service, browser):
    with service.api() as api:
        deployment = api.deployment("genpi-internalize/internalize")
    page = browser
    page.call("Page.enable")
    page.call("Page.navigate", url=f"{service.ui_url}/v2/")
    time.sleep(2)
    # the UI keeps the basic-auth token in localStorage (what its login form stores)
    page.js(f"localStorage.setItem('prefect-password', {json.dumps(base64.b64encode(service.auth.encode()).decode())})")
    page.call("Page.navigate", url=f"{service.ui_url}/v2/deployments/deployment/{deployment['id']}/run")
    text = _wait_for_text(page, ["spec_path", "config"])
    # the nested PipelineConfig is a form, not a JSON blob: its sections appear as fields
    assert any(s in text.lower() for s in ("runs_dir", "runs dir")), text[:3000]
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shot = page.call("Page.captureScreenshot", format="png")
    SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    assert SCREENSHOT.read_bytes()[:4] == b"\x89PNG"

"""The REST client behind `genpi run` and `genpi server`: retries 5xx, never 4xx, sends basic auth."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from genpi.api_client import PrefectAPI, PrefectAPIError, normalize_api_url


class _Handler(BaseHTTPRequestHandler):
    failures_left = 0
    status = 200
    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).seen.append(self.headers.get("Authorization"))
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        body = json.dumps({"id": "d1", "path": self.path}).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    def start(**attrs):
        handler = type("H", (_Handler,), {"seen": [], **attrs})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)
        return handler, f"http://127.0.0.1:{srv.server_address[1]}"

    started = []
    yield start
    for srv in started:
        srv.shutdown()


def test_5xx_is_retried_and_auth_is_sent(server):
    handler, url = server(failures_left=2)
    with PrefectAPI(url, auth="user:secret", backoff_s=0.01) as api:
        assert (
            api.deployment("genpi-internalize/internalize")["path"]
            == "/api/deployments/name/genpi-internalize/internalize"
        )
    assert len(handler.seen) == 3
    assert handler.seen[-1] == "Basic " + base64.b64encode(b"user:secret").decode()


def test_4xx_is_not_retried_and_gives_up_clearly(server):
    handler, url = server(status=401)
    with PrefectAPI(url, backoff_s=0.01) as api, pytest.raises(PrefectAPIError, match="HTTP 401") as err:
        api.flow_run("x")
    assert err.value.status == 401 and len(handler.seen) == 1
    handler, url = server(failures_left=99)
    with PrefectAPI(url, retries=2, backoff_s=0.01) as api, pytest.raises(PrefectAPIError, match="after 3 attempts"):
        api.flow_run("x")


def test_api_url_forms():
    assert (
        normalize_api_url("http://127.0.0.1:4200")
        == normalize_api_url("http://127.0.0.1:4200/api/")
        == "http://127.0.0.1:4200/api"
    )

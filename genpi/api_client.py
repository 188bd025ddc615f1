"""A small client for Prefect's REST API: what `genpi run`, `genpi server` and other systems need.

It speaks plain HTTP (httpx, no Prefect import), so the same calls work from curl or any language
(docs/service.md). 5xx answers and connection errors are retried with capped, jittered exponential
backoff: a SQLite-backed server answers 503 ("database is locked") to most of a burst of concurrent
writes (18 of 20 simultaneous create_flow_run calls, measured), and retries that all wake together
would collide again. Creating a flow run sends an idempotency key, so a retry never makes a second run.
4xx answers are not retried: a bad parameter or missing auth will not get better by asking again.

Auth: when the server runs with Prefect's basic-auth string (``GENPI_SERVER_AUTH`` for
`genpi server up`, i.e. ``PREFECT_SERVER_API_AUTH_STRING``), the client sends it as
``Authorization: Basic base64(<auth string>)``. It is read from the environment and never logged.
"""

from __future__ import annotations

import base64
import os
import random
import time
import uuid
from typing import Any

import httpx

AUTH_ENV = "GENPI_SERVER_AUTH"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
INTERNALIZE_DEPLOYMENT = "genpi-internalize/internalize"


class PrefectAPIError(RuntimeError):
    """The server refused a request (4xx) or kept failing (5xx / unreachable) after the retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def auth_from_env() -> str | None:
    """The basic-auth string for clients: GENPI_SERVER_AUTH, else Prefect's own PREFECT_API_AUTH_STRING."""
    return os.environ.get(AUTH_ENV) or os.environ.get("PREFECT_API_AUTH_STRING") or None


def normalize_api_url(url: str) -> str:
    """Accept `http://host:port` or `http://host:port/api` (Prefect's PREFECT_API_URL form)."""
    url = url.rstrip("/")
    return url if url.endswith("/api") else url + "/api"


class PrefectAPI:
    """Prefect REST calls with retries on 5xx and connection errors."""

    def __init__(
        self,
        api_url: str,
        auth: str | None = None,
        retries: int = 8,
        backoff_s: float = 0.5,
        timeout_s: float = 30.0,
        max_backoff_s: float = 8.0,
        connect_retries: int = 4,
    ) -> None:
        self.api_url = normalize_api_url(api_url)
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode("utf-8")).decode("ascii")
        self._http = httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.connect_retries = connect_retries  # refused connections: fewer retries than a busy server's 503s
        self.retried = 0  # attempts repeated so far (5xx, connection errors): what a load test reports
        self._jitter = random.Random()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PrefectAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, json: Any = None) -> Any:
        last = ""
        refused = 0
        attempts = 0
        for attempt in range(self.retries + 1):
            attempts = attempt + 1
            if attempt:
                self.retried += 1
                ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                time.sleep(self._jitter.uniform(0.1 * ceiling, ceiling))
            try:
                response = self._http.request(method, path, json=json)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                refused += isinstance(exc, httpx.ConnectError)
                if refused > self.connect_retries:  # nobody listening: a restart takes seconds, not minutes
                    break
                continue
            if response.status_code >= 500:
                last = f"HTTP {response.status_code}: {response.text[:300]}"
                continue
            if response.status_code >= 400:
                raise PrefectAPIError(
                    f"{method} {self.api_url}{path}: HTTP {response.status_code}: {response.text[:500]}",
                    response.status_code,
                )
            return response.json() if response.content else None
        raise PrefectAPIError(f"{method} {self.api_url}{path}: failed after {attempts} attempts ({last})")

    def healthy(self) -> bool:
        """One quick, unretried probe (unauthenticated on Prefect: /health is open even with auth on)."""
        try:
            return self._http.get("/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def deployment(self, name: str) -> dict:
        """`<flow name>/<deployment name>`, e.g. genpi-internalize/internalize."""
        flow, _, deployment = name.partition("/")
        if not deployment:
            raise ValueError(f"deployment {name!r}: use <flow name>/<deployment name>, e.g. {INTERNALIZE_DEPLOYMENT}")
        return self.request("GET", f"/deployments/name/{flow}/{deployment}")

    def create_flow_run(
        self, deployment_id: str, parameters: dict, tags: list[str] | None = None, idempotency_key: str | None = None
    ) -> dict:
        """One flow run of the deployment, however often the request is retried (Prefect's idempotency key)."""
        body = {"parameters": parameters, "tags": tags or [], "idempotency_key": idempotency_key or uuid.uuid4().hex}
        return self.request("POST", f"/deployments/{deployment_id}/create_flow_run", json=body)

    def flow_run(self, flow_run_id: str) -> dict:
        return self.request("GET", f"/flow_runs/{flow_run_id}")

    def wait(self, flow_run_id: str, timeout_s: float = 3600, poll_s: float = 2.0) -> dict:
        """Poll until the run reaches a final state; raise TimeoutError with its last state otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.flow_run(flow_run_id)
            if run["state_type"] in FINAL_STATES:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"flow run {run['name']} ({flow_run_id}) still {run['state_name']} after {timeout_s:.0f} s"
                )
            time.sleep(poll_s)

    def logs(self, flow_run_id: str, limit: int = 200, offset: int = 0) -> list[dict]:
        """One page of a flow run's logs, oldest first (the server allows at most 200 per page)."""
        return self.request(
            "POST",
            "/logs/filter",
            json={
                "logs": {"flow_run_id": {"any_": [flow_run_id]}},
                "sort": "TIMESTAMP_ASC",
                "limit": limit,
                "offset": offset,
            },
        )

"""A temporary local Prefect server for one CLI or Python API call, which dies with the process that started it.

Without ``PREFECT_API_URL`` Prefect starts its own throw-away server (its "ephemeral mode") and stops it at
interpreter exit. A SIGKILL, a SIGTERM with Python's default handler or a closed terminal skips that, and the
server lives on, holding its port and database. genpi therefore starts the same server itself (the same
uvicorn app factory Prefect uses), as a child that the kernel stops when this process dies
(``genpi_core.processes``), and points Prefect at it for the duration of the call. With ``PREFECT_API_URL``
set, nothing is started: the runs go to that server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from genpi.api_client import PrefectAPI
from genpi.service import free_port
from genpi_core.processes import child_setup

STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"  # Prefect's own setting, reused
DEFAULT_STARTUP_TIMEOUT_S = 90.0  # a fresh server takes ~15 s on 2 idle cores, ~30 s under load
STOP_GRACE_S = 10.0


def server_command(port: int) -> list[str]:
    """Prefect's own server app on 127.0.0.1 without the UI, as its ephemeral mode runs it."""
    import prefect

    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(Path(prefect.__file__).parent.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def start() -> tuple[subprocess.Popen, str]:
    """Start the server and wait until it answers; returns the process and its API URL."""
    port = free_port("127.0.0.1")
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    # its own session: a terminal's Ctrl-C or hang-up goes to the CLI, which still reports the run's end to this
    # server and then stops it; the parent-death signal covers the CLI dying without a word
    proc = subprocess.Popen(
        server_command(port), env=env, preexec_fn=child_setup(signal.SIGTERM), start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/api"
    timeout_s = float(os.environ.get(STARTUP_TIMEOUT_ENV) or DEFAULT_STARTUP_TIMEOUT_S)
    deadline = time.monotonic() + timeout_s
    try:
        with PrefectAPI(url) as api:
            while not api.healthy():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the temporary Prefect server exited with code {proc.returncode} before answering"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the temporary Prefect server did not answer on {url} within {timeout_s:.0f} s "
                        f"(set {STARTUP_TIMEOUT_ENV} to wait longer, or PREFECT_API_URL to use a running server)"
                    )
                time.sleep(0.25)
    except BaseException:  # a timeout, or a signal while waiting: never leave it behind
        stop(proc)
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after a grace period; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


@contextmanager
def prefect_api() -> Iterator[str | None]:
    """Prefect's API for the duration of the block: the configured one, else a temporary server started here.

    Yields the URL of the temporary server, or ``None`` when ``PREFECT_API_URL`` (environment or profile) names
    one already."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield None
        return
    proc, url = start()
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url  # for anything this process starts that talks to Prefect
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        stop(proc)

"""The service commands without a server: help, clear errors, and which failures a generation task retries."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_SPEC

GENPI = str(Path(sys.executable).with_name("genpi"))


def run(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    return subprocess.run([GENPI, *args], capture_output=True, text=True, timeout=120, env={**env, **(env_extra or {})})


@pytest.mark.parametrize("command", ["server", "run", "watch", "adapters"])
def test_each_service_command_has_help(command):
    out = run(command, "--help")
    assert out.returncode == 0 and f"usage: genpi {command}" in out.stdout


def test_status_without_a_service_says_so(tmp_path):
    out = run("server", "status", "--home", str(tmp_path))
    assert out.returncode == 3 and "not running" in out.stdout


def test_watch_without_an_api_refuses_instead_of_emitting_into_nowhere(tmp_path):
    out = run(
        "watch", str(EXAMPLE_SPEC.parent), "--once", "--home", str(tmp_path), "--runs-dir", str(tmp_path / "runs")
    )
    assert out.returncode == 2 and "no Prefect API" in out.stderr


def test_run_against_a_dead_port_fails_clearly(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = run("run", str(EXAMPLE_SPEC), "--api-url", f"http://127.0.0.1:{port}")
    assert out.returncode == 2 and "failed after 5 attempts" in out.stderr and "Traceback" not in out.stderr


def test_generation_tasks_retry_only_transient_failures():
    from prefect.states import Failed

    from genpi_core.generation.base import GenerationError
    from tasks.stages import _transient

    def retried(exc):
        return _transient(None, None, Failed(data=exc))

    assert retried(GenerationError("http://x: request 3 failed after 5 attempts (last error: HTTP 503)"))
    assert retried(ConnectionError("reset"))
    assert not retried(GenerationError("http://x: request 3 refused with HTTP 400: bad model"))
    assert not retried(ValueError("spec.yaml: field `prompt` is missing"))

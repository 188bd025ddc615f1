"""A real genpi service for the tests: `genpi server up` on a free loopback port with a temporary
PREFECT_HOME and basic auth on, torn down with `genpi server down`. The tests talk to it over REST
exactly as the walkthrough in docs/service.md does."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from genpi.api_client import PrefectAPI

GENPI = str(Path(sys.executable).with_name("genpi"))
ROOT = Path(__file__).resolve().parents[2]


class Service:
    def __init__(self, home: Path, runs: Path, prompts: Path, auth: str, env: dict, up_s: float) -> None:
        self.home, self.runs, self.prompts, self.auth, self.env, self.up_s = home, runs, prompts, auth, env, up_s
        state = json.loads((home / "genpi-service.json").read_text())
        self.api_url, self.ui_url, self.state = state["api_url"], state["ui_url"], state

    def api(self) -> PrefectAPI:
        return PrefectAPI(self.api_url, self.auth)

    def genpi(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([GENPI, *args], env=self.env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def service(tmp_path_factory, embedded_model_dir):
    with running_service(tmp_path_factory) as svc:
        yield svc


@contextmanager
def running_service(tmp_path_factory) -> Iterator[Service]:
    """`genpi server up` with its own home, runs root and prompts root; `genpi server down` afterwards."""
    home = tmp_path_factory.mktemp("prefect-home")
    runs = tmp_path_factory.mktemp("runs")
    prompts = tmp_path_factory.mktemp("prompts")  # a prompts root the service allows, beside examples/prompts
    auth = f"genpi:{secrets.token_hex(8)}"
    env = {
        **os.environ,
        "GENPI_SERVER_AUTH": auth,
        "HF_HUB_OFFLINE": "1",
        "GENPI_RUNS_DIR": str(runs),  # the service's runs root: REST runs must use it (genpi_core/trust.py)
        "GENPI_PROMPTS_DIR": os.pathsep.join([str(ROOT / "examples" / "prompts"), str(prompts)]),
    }
    for var in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"):
        env.pop(var, None)
    started = time.perf_counter()
    up = subprocess.run(
        [GENPI, "server", "up", "--home", str(home), "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr + _logs(home)
        assert auth not in up.stdout + up.stderr + _logs(home)  # the secret is never printed or logged
        yield Service(home, runs, prompts, auth, {**env, "PREFECT_HOME": str(home)}, time.perf_counter() - started)
    finally:
        down = subprocess.run(
            [GENPI, "server", "down", "--home", str(home)], env=env, capture_output=True, text=True, timeout=120
        )
        print(down.stdout, down.stderr)


def _logs(home: Path) -> str:
    return "".join(
        f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted((home / "logs").glob("*.log"))
    )

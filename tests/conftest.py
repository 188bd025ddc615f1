"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) on the real embedded model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_SPEC = ROOT / "examples" / "prompts" / "library_desk.yaml"
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


def require_sandbox(module: bool = False) -> None:
    """Skip (the module, with ``module=True``) when bubblewrap cannot make a sandbox here, saying why; under
    CI=true fail instead, since CI installs bubblewrap (scripts/setup.sh)."""
    from genpi_core.environment.sandbox import Sandbox, SandboxUnavailable

    try:
        Sandbox().close()
    except SandboxUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no sandbox here: {exc}", allow_module_level=module)


@pytest.fixture(scope="session")
def embedded_model_dir() -> str:
    """The real embedded model, converted once into GENPI_CACHE."""
    from genpi_core.generation.models import resolve_model

    return resolve_model("embedded")


@pytest.fixture(scope="session")
def tokenizer(embedded_model_dir):
    from genpi_core.generation.models import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(scope="session")
def transformers_backend(embedded_model_dir):
    from genpi_core.generation.factory import make_backend
    from schemas.config import BackendConfig, ModelConfig

    backend = make_backend(ModelConfig(), BackendConfig(batch_size=8))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def example_spec():
    from genpi_core.ingest import load_spec

    return load_spec(EXAMPLE_SPEC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def transformers_serve(model_dir: str, log: Path, start_timeout_s: float = 180) -> Iterator[str]:
    """A real `transformers serve` (OpenAI-compatible) on 127.0.0.1 serving ``model_dir``; yields its /v1 URL."""
    port = free_port()
    cli = str(Path(sys.executable).with_name("transformers"))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                cli,
                "serve",
                model_dir,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--device",
                "cpu",
                "--dtype",
                "float32",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + start_timeout_s
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail(f"transformers serve did not start in {start_timeout_s:.0f} s")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()

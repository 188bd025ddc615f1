"""Start, wait for and stop `vllm serve` (vLLM's CPU build) on loopback, for the server tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vllm_serve(
    model_dir: str,
    served: str,
    log: Path,
    *,
    core: int | None = None,
    max_model_len: int = 4096,
    extra_args: Sequence[str] = (),
) -> tuple[subprocess.Popen, str]:
    """One `vllm serve` process (1 GiB of KV cache, fp32, eager) and its base URL; `core` pins it to one core."""
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_NUM_OF_RESERVED_CPU="0")
    if core is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(core)  # one core each: unpinned replicas fight over both cores
    # `python -m ...api_server`: vllm-cpu's `vllm` console script is broken (its dist is named vllm-cpu)
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_dir,
        "--served-model-name",
        served,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        str(max_model_len),
        *extra_args,
    ]
    proc = subprocess.Popen(command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 240) -> None:
    """Poll /v1/models until the server answers; fail with its log if it exits or times out."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    pytest.fail(f"vllm serve at {url} not ready in {timeout_s:.0f} s: {log.read_text()[-3000:]}")


def stop(procs: Sequence[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

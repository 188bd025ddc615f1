"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) on the real embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_SPEC = ROOT / "examples" / "prompts" / "library_desk.yaml"
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def embedded_model_dir() -> str:
    """The real embedded model, converted once into GENPI_CACHE."""
    from genpi_core.models import resolve_model

    return resolve_model("embedded")


@pytest.fixture(scope="session")
def tokenizer(embedded_model_dir):
    from genpi_core.models import load_tokenizer

    return load_tokenizer("embedded")


@pytest.fixture(scope="session")
def transformers_backend(embedded_model_dir):
    from genpi_core.generation.base import make_backend
    from schemas.config import BackendConfig, ModelConfig

    backend = make_backend(ModelConfig(), BackendConfig(batch_size=8))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def example_spec():
    from genpi_core.ingest import load_spec

    return load_spec(EXAMPLE_SPEC)

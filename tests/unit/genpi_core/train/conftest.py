"""Fixtures for the fast training-mechanics tests: the tiny random-init model in tests/assets/."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_LM_DIR = Path(__file__).resolve().parents[4] / "tests" / "assets" / "tiny-causal-lm"


@pytest.fixture(scope="session")
def tiny_lm_dir() -> Path:
    """The tiny random-init Llama (2 layers, hidden 64) with the embedded model's tokenizer.

    For mechanics only (masking, loss, which weights move, merging, resume); behaviour is tested on the
    real embedded model. Built by scripts/make_tiny_model.py and committed.
    """
    if not (TINY_LM_DIR / "config.json").is_file() or not (TINY_LM_DIR / "model.safetensors").is_file():
        pytest.skip(
            f"tiny model missing at {TINY_LM_DIR}; create it with "
            "`HF_HUB_OFFLINE=1 .venv/bin/python scripts/make_tiny_model.py`"
        )
    return TINY_LM_DIR

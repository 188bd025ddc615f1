"""`genpi serve` on vLLM (`vllm serve --enable-lora`, runtime LoRA loading) on this CPU: the same scenario as the
transformers engine's (tests/integration/test_serve.py): two adapters by name, greedy replies equal to
transformers+peft, a hot swap under load with no failed request, refusals, the key in no file, no process left;
and the engine's load/unload endpoints refuse anyone but the router."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.integration.test_serve import serve_scenario

pytestmark = [pytest.mark.vllm, pytest.mark.server]


def test_serve_on_vllm_routes_by_name_and_swaps_adapters_at_run_time(tmp_path, embedded_model_dir):
    pytest.importorskip("vllm", reason="runs in .venv-vllm (scripts/setup_vllm.sh)")
    venv = Path(sys.executable).parent.parent  # this venv holds vLLM
    serve_scenario(tmp_path, "vllm", (f"serve.vllm_venv={venv}", "serve.kv_cache_gib=1", "serve.max_lora_rank=8"))

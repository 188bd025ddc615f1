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


def test_serve_on_vllm_serves_one_tenant_from_merged_weights(tmp_path, embedded_model_dir):
    """`serve.merged`: hotel runs on a vLLM engine of its own from merged weights, desk as a LoRA on the shared
    one; both answer as transformers+peft does; a new hotel version starts a new engine and the old one stops."""
    pytest.importorskip("vllm", reason="runs in .venv-vllm (scripts/setup_vllm.sh)")
    import time

    import httpx
    import psutil

    from tests.integration.test_serve import (
        _adapter,
        _ask,
        _peft_reply,
        _promote,
        _status,
        _text,
        _tree,
        serve_down,
        serve_up,
    )

    runs, home = tmp_path / "runs", tmp_path / "home"
    adapters = {"desk": _adapter(runs, "desk", "a" * 64, 1), "hotel": _adapter(runs, "hotel", "b" * 64, 2)}
    for name, version in (("desk", "a" * 64), ("hotel", "b" * 64)):
        _promote(runs, name, version, adapters[name])
    expected = {name: _peft_reply(adapter) for name, adapter in adapters.items()}
    venv = Path(sys.executable).parent.parent
    settings = ("serve.engine=vllm", f"serve.vllm_venv={venv}", "serve.kv_cache_gib=1", "serve.max_lora_rank=8")
    url, pid = serve_up(runs, home, (*settings, "serve.poll_s=0.5", "serve.merged=[hotel]"))
    processes = _tree(pid)
    try:
        status = _status(url, lambda s: len(s["routes"]) == 2)
        assert status["routes"]["hotel"]["engine"] == "vllm-merged" and status["routes"]["desk"]["engine"] == "vllm"
        for name in ("desk", "hotel"):
            assert _text(_ask(url, name)) == expected[name]
        first_engine = {p.pid for p in psutil.Process(pid).children() if "merged" in " ".join(p.cmdline())}
        assert len(first_engine) == 1

        new = _adapter(runs, "hotel", "e" * 64, 5)
        expected_new = _peft_reply(new)
        _promote(runs, "hotel", "e" * 64, new)
        _status(url, lambda s: s["routes"]["hotel"]["version"] == "e" * 12, timeout=600)
        assert _text(_ask(url, "hotel")) == expected_new and _text(_ask(url, "desk")) == expected["desk"]
        deadline = time.monotonic() + 60
        while any(psutil.pid_exists(p) for p in first_engine) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [p for p in first_engine if psutil.pid_exists(p)]  # the old version's engine stopped
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        processes |= _tree(pid)
    finally:
        serve_down(home, processes)

"""What `genpi serve` asks vLLM for, read off the command line it would run (no engine starts here: the real
engines run in tests/integration/test_serve.py and tests/vllm/test_serve_vllm.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from genpi.serve.engines import MergedVllmEngine, VllmEngine, merged_dir
from genpi.serve.tenants import Tenant
from schemas.config import ServeConfig

TENANT = Tenant("desk", "a" * 12, Path("/runs/desk/aaaaaaaaaaaa/train/adapter"), "f" * 64, "")


def _venv(tmp_path: Path) -> str:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    return str(tmp_path / "venv")


def _flag(cmd: list[str], flag: str) -> str | None:
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def test_parallel_settings_become_vllm_flags(tmp_path, embedded_model_dir):
    cfg = ServeConfig(vllm_venv=_venv(tmp_path), tensor_parallel_size=2, data_parallel_size=4, max_loras=8)
    cmd = VllmEngine(cfg, "embedded", tmp_path).command([TENANT])
    assert _flag(cmd, "--tensor-parallel-size") == "2" and _flag(cmd, "--data-parallel-size") == "4"
    assert _flag(cmd, "--max-loras") == "8" and _flag(cmd, "--lora-modules") == f"desk@{'a' * 12}={TENANT.adapter}"
    single = VllmEngine(ServeConfig(vllm_venv=cfg.vllm_venv), "embedded", tmp_path).command([])
    assert "--tensor-parallel-size" not in single and "--data-parallel-size" not in single


def test_a_merged_tenant_gets_an_engine_of_its_own_without_lora(tmp_path):
    cfg = ServeConfig(vllm_venv=_venv(tmp_path), merged=("desk",))
    engine = MergedVllmEngine(cfg, "embedded", tmp_path, TENANT)
    cmd = engine.command([])
    assert _flag(cmd, "--model") == str(merged_dir(tmp_path, TENANT))
    assert _flag(cmd, "--served-model-name") == TENANT.engine_name and "--enable-lora" not in cmd
    assert merged_dir(tmp_path, TENANT).name == f"desk@{'a' * 12}-ffffffffffff"  # a new adapter merges anew


@pytest.mark.parametrize("flag", ["--tensor-parallel-size", "-dp"])
def test_parallelism_is_set_in_one_place_only(flag):
    with pytest.raises(ValidationError, match="serve.tensor_parallel_size"):
        ServeConfig(vllm_args=(flag, "2"))

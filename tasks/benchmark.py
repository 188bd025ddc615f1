"""The benchmark task: run `bench/<name>.py` in a child process (its memory, GPU memory included, goes back when
it exits) and publish the JSON it writes as a markdown artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from schemas.config import BenchmarkRequest

ROOT = Path(__file__).resolve().parents[1]


@task(name="benchmark", cache_policy=NONE, tags=["genpi-training"])  # holds the machine like a training run
def benchmark_task(request: BenchmarkRequest) -> str:
    script = ROOT / "bench" / f"{request.name}.py"
    get_run_logger().info("running %s %s", script, " ".join(request.args))
    subprocess.run([sys.executable, str(script), *request.args], cwd=ROOT, check=True, timeout=request.timeout_s)
    return str(ROOT / "bench" / "results" / f"{request.name}.json")


@task(name="publish-benchmark", cache_policy=NONE)
def publish_benchmark_task(request: BenchmarkRequest, results: str) -> None:
    path = Path(results)
    if path.is_file():
        body = json.dumps(json.loads(path.read_text()), indent=2)[:20000]
        create_markdown_artifact(
            key=f"genpi-bench-{request.name.replace('_', '-')}",
            markdown=f"# {request.name}\n\n```json\n{body}\n```",
            description=str(path),
        )

"""The benchmarks as a deployable flow: one of `bench/<name>.py`, its results published as an artifact."""

from __future__ import annotations

from prefect import flow

from schemas.config import BenchmarkRequest
from tasks.benchmark import benchmark_task, publish_benchmark_task
from tasks.trust import trusted_benchmark_args


def _run_name() -> str:
    from prefect.runtime import flow_run

    request = flow_run.parameters.get("request") or {}
    name = request.get("name") if isinstance(request, dict) else getattr(request, "name", None)
    return f"bench-{name or 'prefix_sharing'}"


@flow(name="genpi-benchmark", flow_run_name=_run_name, log_prints=True)
def benchmark_pipeline(request: BenchmarkRequest = BenchmarkRequest()) -> str:
    """Run one benchmark and publish its results file as a markdown artifact. Started through the API, its
    `args` may hold only plain values (genpi_core.trust.check_benchmark_args)."""
    trusted_benchmark_args(request.args)
    results = benchmark_task(request)
    publish_benchmark_task(request, results)
    return results

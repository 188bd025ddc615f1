"""Prefect-side glue for genpi_core.trust: for flow runs started by a deployment (REST, the UI, triggers), apply
the service's policy to their parameters; flows called directly (CLI, Python) are left free."""

from __future__ import annotations

from schemas.config import PipelineConfig


def started_by_deployment() -> bool:
    """True for a deployment's flow run and for subflows of one; False for flows called directly."""
    from prefect.runtime import deployment, flow_run

    return deployment.id is not None or flow_run.parent_deployment_id is not None


def trusted_spec_path(spec_path: str, config: PipelineConfig) -> str:
    """The spec must sit in the prompts roots, and the config may not choose the runs root, models, servers or
    key variables; a parameter outside them fails the run before anything is read, naming the field."""
    if not started_by_deployment():
        return spec_path
    from genpi_core.trust import ServicePolicy, check_config, confine_file

    policy = ServicePolicy.from_env()
    check_config(config, policy)
    return str(confine_file(spec_path, policy.prompts_roots, "spec_path", policy.max_input_bytes))


def trusted_prompts_dir(prompts_dir: str, config: PipelineConfig) -> str:
    """A deployment's watcher scans only inside the prompts roots, with a config the service allows."""
    if not started_by_deployment():
        return prompts_dir
    from genpi_core.trust import ServicePolicy, check_config, confine_dir

    policy = ServicePolicy.from_env()
    check_config(config, policy)
    return str(confine_dir(prompts_dir, policy.prompts_roots, "prompts_dir"))


def trusted_benchmark_args(args: list[str]) -> None:
    """A benchmark started through the API takes plain values only (genpi_core.trust.check_benchmark_args)."""
    if started_by_deployment():
        from genpi_core.trust import check_benchmark_args

        check_benchmark_args(args)

"""Re-internalization on change: the `genpi-watch` flow scans a prompts folder once per run.

`mode=event` emits `genpi.prompt.changed` per changed spec (tasks/watch.py), and the trigger on the
`internalize` deployment in prefect.yaml starts `genpi-internalize` for it; `mode=run` (for servers
without events, on a plain schedule) runs `genpi-internalize` directly as a subflow per changed spec.
`genpi watch` runs the same scan in a loop from the command line.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from schemas.config import PipelineConfig
from tasks.watch import EVENT, mark_announced, scan, scan_once

__all__ = ["EVENT", "scan_once", "watch_prompts"]


def _trusted_dir(prompts_dir: str, config: PipelineConfig) -> str:
    """A deployment's watcher scans only inside the service's prompts roots, with a config the service allows
    (genpi_core.trust); the specs it finds there are internalized with that config."""
    from tasks.trust import started_by_deployment

    if not started_by_deployment():
        return prompts_dir
    from genpi_core.trust import ServicePolicy, check_config, confine_dir

    policy = ServicePolicy.from_env()
    check_config(config, policy)
    return str(confine_dir(prompts_dir, policy.prompts_roots, "prompts_dir"))


@flow(name="genpi-watch", log_prints=True)
def watch_prompts(
    prompts_dir: str = "examples/prompts",
    config: PipelineConfig = PipelineConfig(),
    mode: Literal["event", "run"] = "event",
) -> list[str]:
    """One scan of `prompts_dir`: announce changed specs as events (`event`) or internalize them here (`run`)."""
    logger = get_run_logger()
    prompts_dir = _trusted_dir(prompts_dir, config)
    if mode == "event":
        result = scan_once(prompts_dir, config)
    else:
        from flows.internalize import internalize_pipeline

        result = scan(prompts_dir, config.runs_dir)
        for change in result.changes:
            internalize_pipeline(change.path, config)
            mark_announced([change], config.runs_dir)
    for path, why in result.skipped.items():
        logger.info("%s: %s", path, why)
    for change in result.changes:
        logger.info(
            "%s: %s %s changed -> %s",
            change.path,
            change.name,
            change.version[:12],
            "event emitted" if mode == "event" else "internalized",
        )
    return [f"{c.name}-{c.version[:12]}" for c in result.changes]

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
from tasks.trust import trusted_prompts_dir
from tasks.watch import EVENT, mark_announced, scan, scan_once

__all__ = ["EVENT", "scan_once", "watch_prompts"]


@flow(name="genpi-watch", log_prints=True)
def watch_prompts(
    prompts_dir: str = "examples/prompts",
    config: PipelineConfig = PipelineConfig(),
    mode: Literal["event", "run"] = "event",
) -> list[str]:
    """One scan of `prompts_dir`: announce changed specs as events (`event`) or internalize them here (`run`)."""
    logger = get_run_logger()
    prompts_dir = trusted_prompts_dir(prompts_dir, config)  # deployment runs: inside the prompts roots
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

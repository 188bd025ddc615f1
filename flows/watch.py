"""Re-internalization on change: find specs whose version changed and announce them.

`announce` emits one Prefect event per changed spec::

    event    genpi.prompt.changed
    resource genpi.prompt.<name>   (labels: prefect.resource.name=<name>, genpi.version=<version>)
    payload  {name, version, version12, path, config}

and the trigger on the `internalize` deployment in prefect.yaml starts `genpi-internalize` with
`spec_path` and `config` taken from the payload. Unchanged specs and already internalized versions
announce nothing (genpi_core.watch). `genpi watch` runs `scan_once` in a loop (or once); the
`genpi-watch` flow runs it as a deployment: `mode=event` emits events, `mode=run` (for servers without
events, on a plain schedule) runs `genpi-internalize` directly as a subflow per changed spec.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger

from genpi_core.watch import PromptChange, ScanResult, mark_announced, scan
from schemas.config import PipelineConfig

EVENT = "genpi.prompt.changed"


def emit_change(change: PromptChange, config: PipelineConfig) -> None:
    from prefect.events import emit_event

    emit_event(
        event=EVENT,
        resource={"prefect.resource.id": f"genpi.prompt.{change.name}", "prefect.resource.name": change.name,
                  "genpi.version": change.version},
        payload={"name": change.name, "version": change.version, "version12": change.version[:12], "path": change.path,
                 "previous_version": change.previous_version, "config": config.model_dump(mode="json")},
    )


def flush_events() -> None:
    """Deliver queued events now (they would also go at exit, with a noisy message)."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()


def scan_once(prompts_dir: str, config: PipelineConfig, state_path: str | None = None) -> ScanResult:
    """Scan, emit one event per change, then record them as announced (an emit failure re-announces next time)."""
    result = scan(prompts_dir, config.runs_dir, state_path)
    for change in result.changes:
        emit_change(change, config)
    if result.changes:
        flush_events()
        mark_announced(result.changes, config.runs_dir, state_path)
    return result


@flow(name="genpi-watch", log_prints=True)
def watch_prompts(prompts_dir: str = "examples/prompts", config: PipelineConfig = PipelineConfig(),
                  mode: Literal["event", "run"] = "event") -> list[str]:
    """One scan of `prompts_dir`: announce changed specs as events (`event`) or internalize them here (`run`)."""
    logger = get_run_logger()
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
        logger.info("%s: %s %s changed -> %s", change.path, change.name, change.version[:12],
                    "event emitted" if mode == "event" else "internalized")
    return [f"{c.name}-{c.version[:12]}" for c in result.changes]

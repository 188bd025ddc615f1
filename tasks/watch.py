"""Watching a prompts folder: scan it with genpi_core.watch and announce each changed spec as a Prefect event.

``announce_changes`` emits one event per changed spec::

    event    genpi.prompt.changed
    resource genpi.prompt.<name>   (labels: prefect.resource.name=<name>, genpi.version=<version>)
    payload  {name, version, version12, path, previous_version, parent_version12, parent_source, config}

and the trigger on the `internalize` deployment in prefect.yaml starts `genpi-internalize` with
`spec_path` and `config` taken from the payload. Unchanged specs and already internalized versions
announce nothing (genpi_core.watch).
"""

from __future__ import annotations

from genpi_core.watch import PromptChange, ScanResult, mark_announced, scan
from schemas.config import PipelineConfig

EVENT = "genpi.prompt.changed"

__all__ = [
    "EVENT",
    "PromptChange",
    "ScanResult",
    "emit_change",
    "mark_announced",
    "prompt_resource",
    "scan",
    "scan_once",
]


def prompt_resource(name: str, version: str) -> dict[str, str]:
    """The Prefect event resource of a prompt version: what the deployments' triggers match on."""
    return {"prefect.resource.id": f"genpi.prompt.{name}", "prefect.resource.name": name, "genpi.version": version}


def emit_change(change: PromptChange, config: PipelineConfig) -> None:
    from prefect.events import emit_event

    emit_event(
        event=EVENT,
        resource=prompt_resource(change.name, change.version),
        payload={
            "name": change.name,
            "version": change.version,
            "version12": change.version[:12],
            "path": change.path,
            "previous_version": change.previous_version,
            "parent_version12": change.parent_version12,  # what an incremental build starts from
            "parent_source": change.parent_source,
            "config": config.model_dump(mode="json"),
        },
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

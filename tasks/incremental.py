"""The Prefect side of incremental re-internalization: the run's name says how it is built, and an edit that
lands while an earlier edit of the same prompt is still being internalized supersedes it.

Superseding cancels the earlier flow run (state Cancelling: its worker stops it). Nothing it finished is
lost: its stages are in the run store, and the later version's lineage still points at the last promoted
(or finished) version, so the later run starts from there.
"""

from __future__ import annotations

import re

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from schemas.stages import IncrementalPlan, IngestOutput

FLOW_NAME = "genpi-internalize"
_RUN_NAME = re.compile(r"^(?P<name>.+)-(?P<version12>[0-9a-f]{12})(?: \(.*\))?$")  # tasks.stages.spec_run_name


def prompt_of_run(run_name: str) -> tuple[str, str] | None:
    """(prompt name, version12) of a `genpi-internalize` run's name, or None for another name."""
    match = _RUN_NAME.match(run_name)
    return (match["name"], match["version12"]) if match else None


def _ours():
    from prefect.runtime import flow_run

    return flow_run.id, flow_run.name


@task(name="name-the-run", cache_policy=NONE)
def name_run(plan: IncrementalPlan) -> str | None:
    """Add "(incremental from <parent12>)" to this flow run's name; returns the new name (None outside a run)."""
    from prefect import get_client

    run_id, name = _ours()
    if not run_id or not plan.incremental or "incremental from" in (name or ""):
        return None
    new = f"{name} (incremental from {plan.parent_version12})"
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, name=new)
    except Exception as exc:  # the name is a label: never fail the build over it
        get_run_logger().warning("could not rename the flow run to %r: %s", new, exc)
        return None
    get_run_logger().info("flow run renamed: %s", new)
    return new


@task(name="supersede", cache_policy=NONE)
def cancel_superseded(ingested: IngestOutput) -> list[str]:
    """Cancel the earlier, unfinished `genpi-internalize` runs of another version of this prompt."""
    from prefect.client.schemas.objects import StateType

    run_id, _ = _ours()
    if not run_id:
        return []
    unfinished = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
    cancelled: list[str] = []
    try:
        _cancel_earlier(ingested, run_id, unfinished, cancelled)
    except Exception as exc:  # best effort: an API hiccup must not fail the build this run is for
        get_run_logger().warning("could not check for earlier runs to supersede: %s", exc)
    for name in cancelled:
        get_run_logger().warning("cancelled %s: superseded by the newer edit %s", name, ingested.version[:12])
    return cancelled


def _cancel_earlier(ingested: IngestOutput, run_id, unfinished: list, cancelled: list[str]) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        me = client.read_flow_run(run_id)
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished))),
        )
        for run in runs:
            prompt = prompt_of_run(run.name)
            other_version = prompt is not None and prompt[0] == ingested.name and prompt[1] != ingested.version[:12]
            if run.id == me.id or not other_version or run.created is None or me.created is None:
                continue
            if run.created < me.created:  # only earlier edits; a later one supersedes this run instead
                client.set_flow_run_state(
                    run.id, Cancelling(message=f"superseded by {ingested.name} {ingested.version[:12]}"), force=True
                )
                cancelled.append(run.name)

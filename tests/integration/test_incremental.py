"""Incremental re-internalization end to end, on the real embedded model through the real Prefect flow (against
the package's temporary Prefect server): an edit of the finished library-desk version is built from it, reusing
its inputs, base replies and unchanged reasons, warm-started from its adapter, evaluated in full, with the
run renamed and the report saying how it was built. The fallback to a full run is behind `slow`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from schemas.config import PipelineConfig, load_config
from tests.conftest import EXAMPLE_SPEC, TINY_CONFIG

pytestmark = pytest.mark.server
OLD_FEE = "Replacement library card: $2."


def _edit(tmp_path: Path, fee: str) -> Path:
    path = tmp_path / f"library_desk_{fee}.yaml"
    text = EXAMPLE_SPEC.read_text()
    assert OLD_FEE in text
    path.write_text(text.replace(OLD_FEE, f"Replacement library card: ${fee}."))
    return path


def _rows(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "_manifest.json").read_text())["rows"]


def _run(spec: Path, cfg: PipelineConfig):
    from flows.internalize import internalize_pipeline

    state = internalize_pipeline(str(spec), cfg, return_state=True)
    assert state.is_completed(), state
    return state, Path(state.result().dir).parent


@pytest.mark.slow  # over 50 s in the default run (docs/testing.md, session 6 timings)
def test_an_edit_is_built_from_its_parent(finished_run, tmp_path):
    from prefect import get_client

    base_cfg, parent_dir, _ = finished_run
    cfg = load_config(
        TINY_CONFIG,
        [
            f"runs_dir={base_cfg.runs_dir}",
            "promote.min_recovery=null",  # the tiny student clears no bar; the gate itself is the slow test's
            "incremental.fallback=false",
            "evaluate.multi_turn.enabled=false",  # time: the multi-turn probe is the same code as in full runs
        ],
    )
    state, run_dir = _run(_edit(tmp_path, "3"), cfg)
    plan = json.loads((run_dir / "incremental.json").read_text())
    assert plan["mode"] == "incremental" and plan["parent_version12"] == parent_dir.name, plan
    assert plan["outcome"] == "kept" and plan["chain_depth"] == 1
    lineage = json.loads((run_dir / "ingest" / "lineage.json").read_text())
    assert lineage["parent_version12"] == parent_dir.name and "$3" in lineage["diff"]["added"][0]

    parent_inputs = pd.read_parquet(parent_dir / "inputs" / "inputs.parquet")
    inputs = _rows(run_dir, "inputs")
    assert inputs["reused_from_parent"] == len(parent_inputs) == inputs["inputs"]  # the pool: no generator here
    conversations = _rows(run_dir, "conversations")
    assert conversations["base_reused"] > 0 and conversations["teacher_compared"] > 0  # every first turn at least
    assert 0 <= conversations["teacher_unchanged"] <= conversations["teacher_compared"]
    reasons = _rows(run_dir, "reasons")
    first_turns = (pd.read_parquet(run_dir / "conversations" / "targets.parquet")["turn"] == 0).sum()
    assert reasons["reasons_reused"] + reasons["reasons_generated"] == first_turns

    metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    parent_steps = json.loads((parent_dir / "train" / "metrics.json").read_text())["steps"]
    assert metrics["warm_start"]["used"] and metrics["warm_start"]["from"] == str(parent_dir / "train" / "adapter")
    assert metrics["steps"] == max(1, math.ceil(0.3 * parent_steps)) < parent_steps
    assert (run_dir / "evaluate" / "_manifest.json").is_file() and "paired_inputs" in plan["attempt"]
    from genpi_core.promote import list_adapters

    rows = {r.version12: r for r in list_adapters(cfg.runs_dir, "library-desk")}
    assert rows[run_dir.name].build == "incremental" and rows[run_dir.name].parent_version12 == parent_dir.name
    assert rows[parent_dir.name].build == "full"
    parent_replies = {p.name for p in (parent_dir / "replay").glob("*.json")}
    assert parent_replies and parent_replies <= {p.name for p in (run_dir / "replay").glob("*.json")}

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        reports = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["genpi-library-desk-report"]))
        )
    assert run.name.endswith(f"(incremental from {parent_dir.name})"), run.name
    assert any(f"**incremental from {parent_dir.name}**" in str(a.data) for a in reports)  # the report says how


@pytest.mark.slow
def test_a_warm_start_that_misses_the_gate_falls_back_to_a_full_run(finished_run, tmp_path):
    base_cfg, parent_dir, _ = finished_run
    cfg = load_config(TINY_CONFIG, [f"runs_dir={base_cfg.runs_dir}", "promote.min_recovery=1.5"])  # no student passes
    _, run_dir = _run(_edit(tmp_path, "5"), cfg)
    plan = json.loads((run_dir / "incremental.json").read_text())
    assert plan["mode"] == "incremental" and plan["outcome"] == "fell back"
    assert plan["fallback_reason"].startswith("the warm-started student misses the promotion gate")
    assert "strict_recovery" in plan["attempt"]  # the warm-started student's numbers outlive its folders
    assert "incremental" not in json.loads((run_dir / "inputs" / "_manifest.json").read_text())["config"]
    assert not json.loads((run_dir / "train" / "metrics.json").read_text())["warm_start"]["used"]


def test_a_later_edit_cancels_the_earlier_unfinished_run_of_the_same_prompt(prefect_server):
    """Against the real Prefect server: runs recorded under the internalize flow's name stand for earlier edits."""
    from prefect import flow, get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Running

    from schemas.stages import IngestOutput
    from tasks.incremental import cancel_superseded

    @flow(name="genpi-internalize")
    def earlier_edit() -> None:  # never run: only its flow name matters to the runs below
        pass

    newer = IngestOutput(name="library-desk", version="b" * 64, prompt_tokens=1, run_dir=".", prompt_path=".")
    with get_client(sync_client=True) as client:
        runs = {
            name: client.create_flow_run(earlier_edit, name=name, state=Running()).id
            for name in (
                f"library-desk-{'a' * 12} (incremental from {'c' * 12})",  # an earlier edit: superseded
                f"library-desk-{'b' * 12}",  # the same version (a retry of this one): left alone
                f"library-desk-v2-{'a' * 12}",  # another prompt whose name starts alike: left alone
            )
        }

    @flow(name="genpi-internalize", flow_run_name=f"library-desk-{'b' * 12}")
    def later_edit() -> list[str]:
        return cancel_superseded(newer)

    cancelled = later_edit()
    assert cancelled == [f"library-desk-{'a' * 12} (incremental from {'c' * 12})"]
    with get_client(sync_client=True) as client:
        states = {name: client.read_flow_run(run_id).state.type for name, run_id in runs.items()}
    assert states[cancelled[0]] in (StateType.CANCELLING, StateType.CANCELLED)
    assert [s for n, s in states.items() if n != cancelled[0]] == [StateType.RUNNING, StateType.RUNNING]

"""A kill -9 in the middle of an incremental build: the re-run takes the same incremental path from the same
parent, reuses every stage that had finished, and ends with the warm-started adapter and a recorded outcome.
Real CLI, real embedded model, real run folders (tests/reliability/kill_harness.py)."""

from __future__ import annotations

import json
import time

import pytest

from genpi_core.ingest import load_spec, spec_version
from tests.reliability import kill_harness as kh

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("stage", ["conversations", "train"])
def test_a_killed_incremental_build_resumes_on_the_same_path(tmp_path, stage):
    config = tmp_path / "kills.yaml"
    # the gate and the safety nets are not what this tests: keep the incremental result whatever it scores
    config.write_text(kh.CONFIG_YAML + "promote: {min_recovery: null}\nincremental: {fallback: false}\n")
    runs = tmp_path / "runs"
    assert kh.finish(config, runs, tmp_path / "parent.log") == 0, kh.tail(tmp_path / "parent.log")
    parent_dir = kh.run_dir_of(runs)

    edited = tmp_path / "library_desk.yaml"
    edited.write_text(kh.SPEC.read_text().replace("Replacement library card: $2.", "Replacement library card: $3."))
    spec = load_spec(edited)
    run_dir = runs / spec.name / spec_version(spec)[:12]
    log = tmp_path / "edit.log"

    gate = kh.Gate(kh.lock_path(run_dir, stage))  # stop the build at the stage's door, then kill it inside
    proc = kh.start(config, runs, log, spec=edited)
    try:
        assert gate.wait_for(proc, 900), kh.tail(log)
        gate.open()
        time.sleep(8)
        kh.kill_group(proc.pid)
        proc.wait(30)
    finally:
        gate.open()
        kh.kill_group(proc.pid)
    before = kh.finished_at(run_dir)
    assert stage not in before and "inputs" in before, sorted(before)
    plan = json.loads((run_dir / "incremental.json").read_text())
    assert plan["mode"] == "incremental" and plan["parent_version12"] == parent_dir.name and plan.get("outcome") is None

    proc = kh.start(config, runs, log, spec=edited)
    assert proc.wait(1800) == 0, kh.tail(log)
    after = kh.finished_at(run_dir)
    assert {s: after[s] for s in before} == before  # nothing finished was redone
    plan = json.loads((run_dir / "incremental.json").read_text())
    assert plan["mode"] == "incremental" and plan["outcome"] == "kept", plan
    metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    assert metrics["warm_start"]["used"] and "incremental" in kh.manifests(run_dir)["inputs"]["config"]
    assert kh.verify_outputs(run_dir) == [] and kh.tmp_leftovers(run_dir) == []

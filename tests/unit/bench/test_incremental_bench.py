"""The incremental benchmark's edits and comparison (no model: control logic only)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from genpi_core.incremental.plan import _same_evaluation
from genpi_core.ingest import load_spec

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))


def test_pure_logic_each_edit_is_a_valid_spec_an_incremental_build_may_start_from(tmp_path):
    bench = importlib.import_module("incremental")
    original = load_spec(bench.SPEC)
    for edit in bench.EDITS:
        edited = load_spec(bench.edited_spec(edit, tmp_path))
        assert edited.prompt != original.prompt, edit
        assert _same_evaluation(original, edited) is None, edit  # same held-out inputs and checks
    fact = load_spec(tmp_path / "library_desk_changed_fact.yaml")
    asked = next(e for e in fact.inputs.eval if e.text == bench.FACT_INPUT)
    assert asked.facts == [["$3", "3 dollars", "three dollars"]]


def test_pure_logic_the_comparison_and_the_fact_goal():
    bench = importlib.import_module("incremental")
    inc = {"wall_seconds": 30.0, "strict_recovery": 0.9, "strict_recovery_ci": [0.7, 1.0], "edited_fact_passes": 1.0}
    full = {"wall_seconds": 120.0, "strict_recovery": 0.95, "strict_recovery_ci": [0.8, 1.0], "edited_fact_passes": 0.5}
    out = bench.compare(inc, full, "changed_fact")
    assert out["time_ratio"] == 0.25 and out["intervals_overlap"] is True
    assert out["edited_fact"] == {"incremental": 1.0, "full": 0.5, "counted": True, "learned": True}
    never = bench.compare(inc, full | {"edited_fact_passes": 0.0}, "changed_fact")["edited_fact"]
    assert never["counted"] is False and never["learned"] is None
    apart = bench.compare(inc | {"strict_recovery_ci": [0.1, 0.3]}, full, "added_rule")
    assert apart["intervals_overlap"] is False and "edited_fact" not in apart

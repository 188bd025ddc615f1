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


def test_pure_logic_a_fresh_clone_gets_the_runs_back_without_the_parents_copies_and_refills_the_adapter(tmp_path):
    bench = importlib.import_module("incremental")
    carry = importlib.import_module("carry")
    root = tmp_path / "runs" / "embedded"
    parent = root / "parent" / "library-desk" / "p1"
    build = root / "changed_fact" / "incremental" / "library-desk" / "b1"
    for run in (parent, build):
        (run / "ingest").mkdir(parents=True)
        (run / "inputs").mkdir()
        (run / "inputs" / "inputs.parquet").write_text("rows")
    (parent / "train").mkdir()
    (parent / "train" / "adapter.safetensors").write_text("weights")
    bench._copy_parent(parent, root / "changed_fact" / "incremental")  # the build's copy of its parent
    resume = tmp_path / "resume"
    state = carry.BenchState("incremental_embedded", root, root=resume)
    bench.save_state(state, root, "p1")
    mirrored = sorted(str(p.relative_to(state.folder / "synthesized")) for p in state.folder.rglob("*.parquet"))
    assert mirrored == [
        "changed_fact/incremental/library-desk/b1/inputs/inputs.parquet",
        "parent/library-desk/p1/inputs/inputs.parquet",
    ]

    # another benchmark's data (<spec>/<version>/, as the quality suite keeps it) goes where the parent is built
    quality = resume / "quality_0.5b" / "synthesized" / "library-desk" / "q1" / "inputs"
    quality.mkdir(parents=True)
    (quality / "inputs.parquet").write_text("quality's rows")
    fresh_root = tmp_path / "fresh" / "embedded"
    fresh = carry.BenchState("incremental_embedded", fresh_root, root=resume)
    assert fresh.restore(others_into=fresh_root / "parent") == 3
    assert (fresh_root / "parent" / "library-desk" / "q1" / "inputs" / "inputs.parquet").read_text() == "quality's rows"
    assert not (fresh_root / "changed_fact" / "incremental" / "library-desk" / "p1").exists()

    # the parent, rebuilt on the fresh clone, is copied in again for the build: its adapter included
    fresh_parent = fresh_root / "parent" / "library-desk" / "p1"
    (fresh_parent / "train").mkdir()
    (fresh_parent / "train" / "adapter.safetensors").write_text("weights again")
    bench._copy_parent(fresh_parent, fresh_root / "changed_fact" / "incremental")
    copy = fresh_root / "changed_fact" / "incremental" / "library-desk" / "p1"
    assert (copy / "train" / "adapter.safetensors").read_text() == "weights again"
    assert (copy / "inputs" / "inputs.parquet").read_text() == "rows"


def test_pure_logic_a_build_is_keyed_by_its_edit_mode_spec_and_config(tmp_path):
    bench = importlib.import_module("incremental")
    from schemas.config import load_config

    spec = bench.edited_spec("changed_fact", tmp_path)
    cfg = load_config(ROOT / "configs" / "default.yaml", [f"runs_dir={tmp_path / 'a'}"])
    elsewhere = load_config(ROOT / "configs" / "default.yaml", [f"runs_dir={tmp_path / 'b'}"])
    key = bench.build_key("embedded", "changed_fact", "full", spec, cfg)
    assert key == bench.build_key(
        "embedded", "changed_fact", "full", spec, elsewhere
    )  # where runs live is not measured
    assert key != bench.build_key("embedded", "changed_fact", "incremental", spec, cfg)
    other = load_config(ROOT / "configs" / "default.yaml", ["train.epochs=9"])
    assert key != bench.build_key("embedded", "changed_fact", "full", spec, other)

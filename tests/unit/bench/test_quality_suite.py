"""The quality suite's matrix and statistics, on synthetic per-input scores (no model: control logic only)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))  # the suite imports its sibling bench/carry.py, as `genpi bench` runs it
spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
quality = importlib.util.module_from_spec(spec)
sys.modules["bench_quality"] = quality  # dataclasses look their module up while the class is built
spec.loader.exec_module(quality)

N = 30


def _cell(prompt, variant, seed, student, base=None, teacher=None):
    base = base if base is not None else [0.0] * N
    teacher = teacher if teacher is not None else [1.0] * (N - 3) + [0.0] * 3
    scores = {
        "base": {m: list(base) for m in quality.METRICS},
        "teacher": {m: list(teacher) for m in quality.METRICS},
        "student": {m: list(student) for m in quality.METRICS},
    }
    return {
        "prompt": prompt,
        "variant": variant,
        "seed": seed,
        "version": "v" * 12,
        "prompt_tokens": 1200,
        "dataset_rows": {},
        "train_seconds": 1.0,
        "student": {"strict_success": sum(student) / N, "cut": 0, "collapsed": False, "distinct_share": 1.0},
        "reference": {"base": {}, "teacher": {}},
        "uninformative_checks": [],
        "scores": scores,
    }


def test_plan_covers_every_prompt_before_the_extra_seeds_and_ablations():
    cells = quality.plan(["library_desk", "hotel_concierge", "shell_agent"], "library_desk", 3, True)
    first_six = {(c.prompt, c.variant) for c in cells[:6]}
    assert first_six == {(p, v) for p in ("library_desk", "hotel_concierge", "shell_agent") for v in ("joint", "sft")}
    assert all(c.seed == 0 for c in cells[:6])
    assert [c.variant for c in cells[:3]] == ["sft"] * 3  # the cheap students first
    main = [c for c in cells if c.prompt == "library_desk"]
    assert sorted((c.variant, c.seed) for c in main if c.variant in ("joint", "sft")) == [
        ("joint", 0),
        ("joint", 1),
        ("joint", 2),
        ("sft", 0),
        ("sft", 1),
        ("sft", 2),
    ]
    assert {c.variant for c in main} >= set(quality.ABLATIONS)
    assert len({c.name + c.prompt for c in cells}) == len(cells) == 13


def test_one_fixed_wrong_reply_gets_no_recovery_and_misses_the_goal():
    teacher = [1.0] * 27 + [0.0] * 3
    done = [
        _cell("p", "joint", 0, student=[0.0] * N, teacher=teacher),  # one fixed reply that fails every input
        _cell("p", "sft", 0, student=teacher, teacher=teacher),
    ]
    out = quality.aggregate(done, 0.95, 0.8, 500, 0.95)["p"]
    assert out["variants"]["joint"]["strict_recovery"] == 0.0
    assert not out["variants"]["joint"]["goal_met"]
    assert out["variants"]["sft"]["strict_recovery"] == pytest.approx(1.0)
    diff = out["joint_minus_sft"]
    assert diff["value"] == pytest.approx(-1.0) and diff["ci"][1] < 0


def test_seeds_widen_the_interval_and_the_point_is_their_mean():
    teacher = [1.0] * N
    good = [1.0] * N
    half = [1.0] * 15 + [0.0] * 15
    one = quality.aggregate([_cell("p", "joint", 0, good, teacher=teacher)], 0.95, 0.8, 500, 0.95)["p"]
    three = quality.aggregate(
        [_cell("p", "joint", s, st, teacher=teacher) for s, st in enumerate((good, half, good))], 0.95, 0.8, 500, 0.95
    )["p"]
    v = three["variants"]["joint"]
    assert v["seeds"] == [0, 1, 2]
    assert v["strict_recovery"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert v["strict_recovery_ci"][0] < 0.7 < v["strict_recovery_ci"][1]
    assert one["variants"]["joint"]["strict_recovery_ci"] == [1.0, 1.0]


def test_a_finished_cell_is_reused_only_for_the_config_it_ran_with():
    cell = quality.Cell("library_desk", "joint", 0)
    base = ["model.name_or_path=embedded-0.5b"]
    key = quality.cell_key(cell, str(ROOT / "configs" / "genpi.yaml"), base)
    assert key == quality.cell_key(cell, str(ROOT / "configs" / "genpi.yaml"), [*base, "runs_dir=/elsewhere"])
    assert key != quality.cell_key(cell, str(ROOT / "configs" / "genpi.yaml"), [*base, "train.epochs=3"])
    assert key != quality.cell_key(quality.Cell("library_desk", "joint", 1), str(ROOT / "configs" / "genpi.yaml"), base)


def test_task_success_is_reported_apart_on_inputs_whose_facts_training_states():
    covered = [True] * 20 + [False] * 10
    cell = _cell("library_desk", "sft", 0, [1.0] * 10 + [0.0] * 20) | {"fact_coverage": covered}
    results = quality.aggregate([cell], 0.95, 0.8, 100, 0.95)
    coverage = results["library_desk"]["fact_coverage"]
    assert (coverage["covered"], coverage["with_facts"]) == (20, 30)
    assert coverage["task"]["sft"]["covered"] == 0.5 and coverage["task"]["sft"]["uncovered"] == 0.0
    assert coverage["task"]["teacher"]["covered"] == 1.0 and coverage["task"]["teacher"]["uncovered"] == 0.7
    page = quality.render(
        {
            "model": "m",
            "config": "c",
            "complete": False,
            "cells_done": 1,
            "cells_planned": 13,
            "overrides": [],
            "confidence_level": 0.95,
            "bootstrap_resamples": 100,
            "target": 0.95,
            "lower_target": 0.8,
            "wall_seconds": 60.0,
            "sessions": 1,
            "peak_memory_gb": 1.0,
            "prompts": {k: v | {"base": _ref(), "teacher": _ref()} for k, v in results.items()},
        }
    )
    assert "20 of 30 with facts" in page and "sft 50% / 0%" in page


def _ref():
    return {"strict_success": 0.5, "format": 1.0, "task": 0.5, "cut": 0}


def test_a_cell_finished_before_coverage_existed_gets_it_from_its_restored_dataset(tmp_path):
    import json as _json

    import pandas as pd

    folder = tmp_path / "runs" / "library-desk" / "abc" / "dataset"
    folder.mkdir(parents=True)
    facts = [_json.dumps(["214 Harbor Lane"]), _json.dumps(["30 items"])]
    pd.DataFrame({"example_id": ["t1", "t0"], "facts": facts}).to_parquet(folder / "test.parquet")
    train = {"objective": ["sft", "pg"], "target": ["We are at 214 Harbor Lane.", "... 30 items ..."]}
    pd.DataFrame(train).to_parquet(folder / "train.parquet")
    old = {"variant": "sft", "run_dir": "elsewhere/runs/library-desk/abc"}
    assert quality.with_coverage(old, tmp_path / "runs")["fact_coverage"] == [False, True]  # t0, t1; PG not counted
    assert quality.with_coverage(old, tmp_path / "nowhere") == old  # no data at hand: left as it was


def _timed(prompt: str, variant: str, seconds: float, synthesis_reused: bool = True) -> dict:
    return {
        "prompt": prompt,
        "variant": variant,
        "seed": 0,
        "seconds_this_process": seconds,
        "reused": {"synthesis": synthesis_reused},
    }


def test_pure_logic_a_students_time_is_estimated_from_finished_ones_of_its_kind():
    done = [
        _timed("library_desk", "joint", 3400.0),
        _timed("shell_agent", "joint", 3000.0),
        _timed("shell_agent", "sft", 1800.0, synthesis_reused=False),
        _timed("library_desk", "sft", 770.0),
    ]
    assert quality.estimate_seconds(quality.Cell("library_desk", "joint-kl", 0), done) == 3400.0  # same prompt
    assert quality.estimate_seconds(quality.Cell("hotel_concierge", "joint", 0), done) == 3400.0  # any prompt
    assert quality.estimate_seconds(quality.Cell("library_desk", "sft", 1), done) == 770.0
    # a student whose run also synthesized is no estimate of one that reuses the data
    assert quality.estimate_seconds(quality.Cell("shell_agent", "sft", 1), done) == 770.0
    assert quality.estimate_seconds(quality.Cell("x", "sft", 0), done[:2]) is None

"""The on-policy benchmark's plan, wall-time budget and verdict, on synthetic runs (no model: control logic only)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))  # the benchmark imports its sibling, as `genpi bench` runs it
on_policy = importlib.import_module("on_policy")
N = 30


def _run(variant, seed, student, reached, steps=10):
    teacher = [1.0] * N
    scores = {
        "base": {m: [0.0] * N for m in ("strict", "format", "task")},
        "teacher": {m: list(teacher) for m in ("strict", "format", "task")},
        "student": {m: list(student) for m in ("strict", "format", "task")},
    }
    return {
        "prompt": "library_desk",
        "variant": variant,
        "seed": seed,
        "steps": steps,
        "train_seconds": 100.0,
        "steps_to_threshold": reached,
        "seconds_to_threshold": None if reached is None else 10.0 * reached,
        "collapsed": False,
        "distinct_share": 1.0,
        "re_prompt": {"difference": -0.1},
        "scores": scores,
    }


def test_pure_logic_joint_trains_first_and_the_others_get_its_wall_time():
    cells = on_policy.plan(["library_desk", "shell_agent"], "library_desk", 3)
    first = [c.variant for c in cells[:4]]
    assert first[0] == "joint" and set(first) == set(on_policy.VARIANTS)
    assert len(cells) == 2 * 4 + 2 * 4 and cells[0].name == "op-joint-s0"  # apart from the quality suite's folders
    assert on_policy.steps_for_budget(600.0, {"elapsed_seconds": 100.0, "steps": 2}) == 12
    assert on_policy.steps_for_budget(1.0, {"elapsed_seconds": 100.0, "steps": 2}) == 1


def test_pure_logic_the_goal_needs_both_the_recovery_and_half_the_steps():
    good = [1.0] * N
    done = [_run("joint", 0, [1.0] * 27 + [0.0] * 3, 8), _run("joint-on-policy", 0, good, 4)]
    prompts = on_policy.aggregate(done, 200, 0.95)
    p = prompts["library_desk"]
    assert p["variants"]["joint-on-policy"]["strict_recovery"] == 1.0 and p["goal"]["met"]
    slow = on_policy.aggregate([done[0], _run("joint-on-policy", 0, good, 5)], 200, 0.95)["library_desk"]
    assert slow["goal"] == {"recovery_at_least_0.95": True, "at_most_half_the_steps": False, "met": False}
    never = on_policy.aggregate([done[0], _run("joint-on-policy", 0, [0.5] * N, None)], 200, 0.95)
    assert never["library_desk"]["goal"]["met"] is False
    text = on_policy.render(
        {"model": "m", "cells_done": 2, "cells_planned": 8, "confidence_level": 0.95, "wall_seconds": 3600.0}
        | {"prompts": never}
    )
    assert "| joint-on-policy | 0 | **0.50**" in text and "| n/r |" in text and "**missed**" in text


def test_a_finished_run_is_reused_only_for_its_variant_seed_and_budget():
    config = str(ROOT / "configs" / "genpi.yaml")
    cell = on_policy.Cell("library_desk", "joint-on-policy", 0)
    key = on_policy.cell_key(cell, config, [], 900.0)
    assert key == on_policy.cell_key(cell, config, ["runs_dir=/elsewhere"], 900.0)
    assert key != on_policy.cell_key(cell, config, [], 1200.0)  # joint trained for another wall time
    assert key != on_policy.cell_key(on_policy.Cell("library_desk", "joint-on-policy", 1), config, [], 900.0)
    assert key != on_policy.cell_key(on_policy.Cell("library_desk", "on-policy", 0), config, [], 900.0)


def test_pure_logic_a_runs_time_is_estimated_from_the_finished_runs_of_its_prompt():
    lib = _run("joint", 0, [1.0] * N, None) | {"seconds_this_process": 4000.0}
    shell = _run("sft", 0, [1.0] * N, None) | {"prompt": "shell_agent", "seconds_this_process": 3000.0}
    older = _run("sft", 1, [1.0] * N, None)  # finished before runs were timed: no estimate from it
    assert on_policy.estimate_seconds(on_policy.Cell("shell_agent", "on-policy", 0), [lib, shell, older]) == 3000.0
    assert on_policy.estimate_seconds(on_policy.Cell("hotel_concierge", "joint", 0), [lib, shell]) == 4000.0
    assert on_policy.estimate_seconds(on_policy.Cell("library_desk", "sft", 0), [older]) is None

"""The real-environment benchmark's tables, on a synthetic result (no model, no sandbox: control logic only)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
real_env = importlib.import_module("real_env")


def _set(student, teacher=0.5):
    return {
        "tasks": 22,
        "solvable": 20,
        "unsolvable": {"t7": "init failed"},
        "base_success": 0.0,
        "teacher_success": teacher,
        "student_success": student,
        "teacher_success_ci": [0.3, 0.7],
        "student_success_ci": [0.2, 0.6],
        "success_ratio": student / teacher,
        "success_ratio_ci": [0.5, 1.2],
        "goal_met": student / teacher >= 0.9,
    }


def test_pure_logic_real_minus_simulated_and_the_goal_column():
    kinds = {
        kind: {
            "held_out": {"strict_recovery": 1.0, "format_recovery": 1.0},
            "train_steps": 14,
            "task_sets": {"genpi_os": _set(student), "agentbench_os_dev": _set(0.0)},
        }
        for kind, student in (("simulated", 0.25), ("shell", 0.5))
    }
    diff = real_env.real_minus_simulated(kinds)
    assert diff["genpi_os"]["difference"] == 0.25 and diff["agentbench_os_dev"]["difference"] == 0.0
    text = real_env.render({"model": "m", "config": "c", "kinds": kinds, "real_minus_simulated": diff})
    assert "| genpi_os | 20 of 22 | 0% | 50% [30%, 70%] | 50% [20%, 60%] | 1.00 [0.50, 1.20] | met |" in text
    assert (
        "| agentbench_os_dev | 20 of 22 | 0% | 50% [30%, 70%] | 0% [20%, 60%] | 0.00 [0.50, 1.20] | **missed** |"
        in text
    )
    assert "student success on genpi_os: +25 points" in text
    assert real_env.real_minus_simulated({"shell": kinds["shell"]}) == {}


def test_a_finished_kind_is_reused_for_its_own_kind_only_wherever_runs_live(tmp_path):
    config = str(ROOT / "configs" / "genpi.yaml")
    shell = real_env.kind_key("shell", config, [], tmp_path / "a")
    assert shell == real_env.kind_key("shell", config, [], tmp_path / "b")
    assert shell != real_env.kind_key("simulated", config, [], tmp_path / "a")
    assert shell != real_env.kind_key("shell", config, ["train.epochs=9"], tmp_path / "a")

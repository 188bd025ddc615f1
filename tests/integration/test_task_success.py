"""Task success end to end on the real embedded model: base, teacher and the finished run's adapter each act in
real bubblewrap sandboxes on bundled AgentBench-format tasks, through the stage and through the CLI.

The 135M model rarely solves a shell task; this checks the harness (set-up, real commands, judging, the
report, reuse), not the model's skill, which the 0.5B measurement in bench/results/real_env.* is for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from genpi.cli import main as genpi_main
from genpi_core.pipeline import load_run, task_eval_stage, trained
from schemas.artifacts import REPORT_FILE
from schemas.datasets import TaskEpisodesSchema
from tests.conftest import require_sandbox

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    require_sandbox()
    folder = tmp_path_factory.mktemp("tasks")
    tasks = json.loads((ROOT / "examples" / "tasks" / "genpi_os" / "tasks.json").read_text())
    (folder / "tasks.json").write_text(json.dumps([tasks[0], tasks[9]]))  # a match task and a check task
    shutil.copy(ROOT / "examples" / "tasks" / "genpi_os" / "int_match.py", folder)
    return folder / "tasks.json"


def test_every_variant_plays_every_task_in_a_real_sandbox(finished_run, two_tasks):
    cfg, run_dir, _ = finished_run
    ingested, _ = load_run(run_dir)
    tasks_cfg = cfg.tasks.model_copy(update={"max_turns": 2, "bootstrap_resamples": 100})
    tasks_cfg = tasks_cfg.model_copy(update={"sampling": tasks_cfg.sampling.model_copy(update={"max_new_tokens": 32})})
    out = task_eval_stage(ingested, trained(ingested), two_tasks, tasks_cfg, cfg.model, cfg.backend)
    table = TaskEpisodesSchema.validate(pd.read_parquet(out.path("episodes")))
    assert sorted(table["variant"].unique()) == ["base", "student", "teacher"]
    assert len(table) == 6 and table["solvable"].all()
    assert table["turns"].between(1, 2).all()
    summary = json.loads(out.path("summary").read_text())
    assert summary["solvable"] == 2 and set(summary["variants"]) == {"base", "teacher", "student"}
    assert "Task success in a real shell" in out.path("report").read_text()
    again = task_eval_stage(ingested, trained(ingested), two_tasks, tasks_cfg, cfg.model, cfg.backend)
    assert again.reused


def test_cli_reports_task_success_and_refuses_half_the_flags(finished_run, two_tasks, capsys):
    cfg, run_dir, _ = finished_run
    args = [
        "evaluate",
        str(run_dir),
        "--config",
        str(ROOT / "configs" / "tiny.yaml"),
        "--set",
        f"runs_dir={cfg.runs_dir}",
    ]
    sets = [
        "--set",
        "tasks.max_turns=1",
        "--set",
        "tasks.sampling.max_new_tokens=24",
        "--set",
        "tasks.bootstrap_resamples=50",
    ]
    assert genpi_main([*args, *sets, "--environment", "shell", "--tasks", str(two_tasks)]) == 0
    printed = capsys.readouterr().out
    assert "task success: base" in printed and REPORT_FILE in printed
    assert genpi_main([*args, "--environment", "shell"]) != 0

"""Task success in a real environment: does the agent still do the job, not only keep the format?

Base (no prompt), teacher (with the prompt) and student (adapter, no prompt) each play every AgentBench-format
OS task in its own shell sandbox: the task description is the first user message (after the spec's input
prefix, as in training), each bash action runs for real and its output comes back as the next user message,
and AgentBench's checker judges the answer in the same box. Episodes are batched across tasks, one agent turn
of every live episode per generation call.

Only *solvable* tasks count: those whose reference solution passes its own checks in this sandbox (tasks
without one count when their set-up works). The rest are listed with the reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genpi_core.environment.actions import Action, parse_action
from genpi_core.environment.os_tasks import LoadedTask, judge, prepare, reference_answer
from genpi_core.environment.sandbox import Sandbox
from genpi_core.environment.shell import observation
from genpi_core.evaluate.bootstrap import mean_ci, paired_bootstrap
from genpi_core.generation.base import GenerationBackend, Message
from genpi_core.generation.factory import make_backend
from genpi_core.prompt.checks import run_checks
from genpi_core.prompt.views import input_turn, with_prompt, without_prompt
from genpi_core.store.stage import atomic_write_json, atomic_write_text
from genpi_core.store.tables import write_table
from schemas.artifacts import REPORT_FILE, TASK_EPISODES_FILE, TASK_SUMMARY_FILE
from schemas.config import BackendConfig, ModelConfig, SandboxLimits, TaskEvalConfig
from schemas.datasets import TaskEpisodesSchema
from schemas.spec import PromptSpec

View = Callable[[Sequence[Message]], list[Message]]


def check_solvable(tasks: list[LoadedTask], limits: SandboxLimits) -> dict[str, str]:
    """Per task: '' when its reference solution passes (or, with none, when its set-up works), else why not."""
    verdicts = {}
    for loaded in tasks:
        task = loaded.task
        with Sandbox(limits) as box:
            error = prepare(box, task)
            if error:
                verdicts[loaded.task_id] = f"set-up fails in the sandbox: {error}"
                continue
            if task.reference is None:
                verdicts[loaded.task_id] = ""
                continue
            answer = reference_answer(box, task)
            if answer is None:
                verdicts[loaded.task_id] = "the reference solution fails to run in the sandbox"
            elif not judge(box, task, answer.strip()):
                verdicts[loaded.task_id] = "the reference solution's answer fails the task's checks in the sandbox"
            else:
                verdicts[loaded.task_id] = ""
    return verdicts


def _action_text(action: Action) -> str:
    return action.content if action.kind in ("bash", "answer") else action.kind


def run_task_episodes(
    spec: PromptSpec,
    variant: str,
    tasks: list[LoadedTask],
    solvable: dict[str, str],
    agent: GenerationBackend,
    agent_view: View,
    cfg: TaskEvalConfig,
) -> pd.DataFrame:
    """Every task played by one variant; one row per task (``TaskEpisodesSchema``)."""
    max_turns = cfg.max_turns or spec.conversation.max_turns
    rows: dict[str, dict[str, Any]] = {}
    boxes: dict[str, Sandbox] = {}
    conversations: dict[str, list[Message]] = {}
    started: dict[str, float] = {}
    try:
        for loaded in tasks:
            row: dict[str, Any] = {
                "variant": variant,
                "task_id": loaded.task_id,
                "description": loaded.task.description,
                "solvable": solvable.get(loaded.task_id, "") == "",
                "setup_error": "",
                "success": False,
                "stop_reason": "round limit",
                "answer": None,
                "turns": 0,
                "actions": [],
                "first_action": "",
                "first_turn_format": False,
            }
            rows[loaded.task_id] = row
            box = Sandbox(cfg.limits)
            error = prepare(box, loaded.task)
            if error:
                box.close()
                row.update(setup_error=error, stop_reason="setup failed")
                conversations[loaded.task_id] = []
                continue
            boxes[loaded.task_id] = box
            conversations[loaded.task_id] = input_turn(spec.prompt, loaded.task.description)
            started[loaded.task_id] = time.monotonic()
        by_id = {t.task_id: t for t in tasks}
        live = list(boxes)
        for turn in range(max_turns):
            if not live:
                break
            replies = agent.generate(
                [agent_view(conversations[t]) for t in live], cfg.sampling, desc=f"tasks {variant} turn {turn + 1}"
            )
            still_live = []
            for task_id, reply in zip(live, replies):
                row, conversation = rows[task_id], conversations[task_id]
                conversation.append({"role": "assistant", "content": reply.text})
                action = parse_action(reply.text)
                row["turns"] += 1
                row["actions"].append(action.kind)
                if turn == 0:
                    row["first_action"] = _action_text(action) if action.kind != "invalid" else ""
                    row["first_turn_format"] = all(run_checks(spec.checks, reply.text).values())
                if action.kind == "invalid":
                    row["stop_reason"] = "invalid action"
                    continue
                if action.ends_episode:
                    row["stop_reason"] = action.kind
                    task = by_id[task_id].task
                    if action.kind == "answer":
                        row["answer"] = action.content
                        row["success"] = judge(boxes[task_id], task, action.content)
                    elif task.evaluation.match is None:  # finish: AgentBench hands check scripts str(None)
                        row["success"] = judge(boxes[task_id], task, "None")
                    continue
                if time.monotonic() - started[task_id] > cfg.limits.episode_timeout_s:
                    row["stop_reason"] = "round limit"
                    continue
                result = boxes[task_id].run(action.content)
                conversation.append({"role": "user", "content": observation(result.output)})
                still_live.append(task_id)
            live = still_live
    finally:
        for box in boxes.values():
            box.close()
    out = []
    for task_id, row in rows.items():
        out.append(
            row
            | {
                "actions": json.dumps(row["actions"]),
                "transcript": json.dumps(conversations[task_id], ensure_ascii=False),
            }
        )
    return pd.DataFrame(out)


def first_divergence(a: list[Message], b: list[Message]) -> int | None:
    """The first agent turn (0-based) where two episodes of one task act differently; None if they never do."""
    turns_a = [m["content"] for m in a if m["role"] == "assistant"]
    turns_b = [m["content"] for m in b if m["role"] == "assistant"]
    for i in range(max(len(turns_a), len(turns_b))):
        if i >= len(turns_a) or i >= len(turns_b):
            return i
        if _action_text(parse_action(turns_a[i])) != _action_text(parse_action(turns_b[i])):
            return i
    return None


def summarize_tasks(table: pd.DataFrame, cfg: TaskEvalConfig, verdicts: dict[str, str] | None = None) -> dict:
    """Success per variant over the solvable tasks, with intervals; student/teacher success ratio; how the
    student's episodes differ from the teacher's. ``verdicts`` (``check_solvable``'s) say why a task was not
    counted."""
    verdicts = verdicts or {}
    counted = table[table["solvable"]]
    variants: dict[str, dict] = {}
    for variant, part in counted.groupby("variant", sort=False):
        actions = [a for row in part["actions"] for a in json.loads(row)]
        success = part["success"].astype(float).tolist()
        variants[variant] = {
            "tasks": int(len(part)),
            "success": float(np.mean(success)) if success else None,
            "success_ci": mean_ci(success, cfg.bootstrap_resamples, 0, cfg.confidence_level),
            "answered": float(part["stop_reason"].isin(["answer", "finish"]).mean()) if len(part) else None,
            "mean_turns": float(part["turns"].mean()) if len(part) else None,
            "first_turn_format": float(part["first_turn_format"].mean()) if len(part) else None,
            "stop_reasons": {k: int(v) for k, v in part["stop_reason"].value_counts().items()},
            "action_counts": {k: actions.count(k) for k in ("bash", "answer", "finish", "invalid")},
        }
    out: dict = {
        "tasks": int(table["task_id"].nunique()),
        "solvable": int(counted["task_id"].nunique()),
        "unsolvable": {
            r.task_id: verdicts.get(r.task_id)
            or r.setup_error
            or "the reference solution fails its checks in the sandbox"
            for r in table.drop_duplicates("task_id").itertuples()
            if not r.solvable
        },
        "variants": variants,
        "success_ratio": None,
        "success_ratio_ci": None,
    }
    paired = counted.pivot(index="task_id", columns="variant", values="success").astype(float)
    if {"student", "teacher"} <= set(paired.columns) and len(paired):
        s, t = paired["student"].mean(), paired["teacher"].mean()
        out["success_ratio"] = float(s / t) if t > 0 else None
        boot = paired_bootstrap(
            {"student": paired["student"].tolist(), "zero": [0.0] * len(paired), "teacher": paired["teacher"].tolist()},
            cfg.bootstrap_resamples,
            0,
            cfg.confidence_level,
            recovery_of=("student", "zero", "teacher"),
        )
        out["success_ratio_ci"] = boot["recovery"]
        transcripts = counted.pivot(index="task_id", columns="variant", values="transcript")
        divergence = [
            first_divergence(json.loads(transcripts.at[i, "teacher"]), json.loads(transcripts.at[i, "student"]))
            for i in transcripts.index
        ]
        out["divergence"] = {
            "identical_episodes": sum(d is None for d in divergence),
            "first_divergent_turn": {
                str(k): sum(d == k for d in divergence) for k in sorted({d for d in divergence if d is not None})
            },
        }
    return out


def render_task_report(spec: PromptSpec, table: pd.DataFrame, summary: dict, worst: int = 5) -> str:
    """Markdown: success per variant, the student/teacher ratio, unsolvable tasks, and the worst episodes
    (teacher solved, student did not) side by side."""

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.0f}%"

    def ci(c):
        return "" if not c else f" [{pct(c[0])}, {pct(c[1])}]"

    lines = [
        f"# Task success in a real shell: {spec.name}",
        "",
        f"{summary['solvable']} of {summary['tasks']} tasks solvable in this sandbox (their reference solution "
        "passes its own checks); only those count. Greedy decoding; 95% bootstrap intervals over tasks.",
        "",
        "| variant | success | answered | mean turns | first turn in format | bash / answer / finish / invalid |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in summary["variants"].items():
        a = v["action_counts"]
        lines.append(
            f"| {name} | **{pct(v['success'])}**{ci(v['success_ci'])} | {pct(v['answered'])} | "
            f"{v['mean_turns']:.1f} | {pct(v['first_turn_format'])} | "
            f"{a['bash']} / {a['answer']} / {a['finish']} / {a['invalid']} |"
        )
    if summary["success_ratio"] is not None or summary.get("success_ratio_ci"):
        r, c = summary["success_ratio"], summary["success_ratio_ci"]
        lines += [
            "",
            f"**Success ratio (student / teacher): {'n/a' if r is None else f'{r:.2f}'}**"
            + ("" if not c else f" [{c[0]:.2f}, {c[1]:.2f}]"),
        ]
    if "divergence" in summary:
        d = summary["divergence"]
        lines += [
            "",
            f"Student vs teacher episodes: {d['identical_episodes']} identical; first different agent turn: "
            + (", ".join(f"turn {int(k) + 1}: {n}" for k, n in d["first_divergent_turn"].items()) or "none"),
        ]
    if summary["unsolvable"]:
        lines += ["", "Not counted (unsolvable here):", ""]
        lines += [f"- `{k}`: {v}" for k, v in summary["unsolvable"].items()]
    pivot = table[table["solvable"]].pivot(index="task_id", columns="variant", values="success")
    if {"teacher", "student"} <= set(pivot.columns):
        lost = [i for i in pivot.index if pivot.at[i, "teacher"] and not pivot.at[i, "student"]][:worst]
        if lost:
            lines += ["", f"## Worst episodes: the teacher solved, the student did not ({len(lost)} shown)", ""]
        for task_id in lost:
            rows = table[table["task_id"] == task_id].set_index("variant")
            lines += [
                f"### `{task_id}`: {rows.at['teacher', 'description'][:200]}",
                "",
                "| teacher | student |",
                "|---|---|",
            ]
            t_turns = [m for m in json.loads(rows.at["teacher", "transcript"])[1:]]
            s_turns = [m for m in json.loads(rows.at["student", "transcript"])[1:]]
            for i in range(max(len(t_turns), len(s_turns))):
                cell = [
                    (turns[i]["content"][:300] if i < len(turns) else "").replace("|", "\\|").replace("\n", "<br>")
                    for turns in (t_turns, s_turns)
                ]
                lines.append(f"| {cell[0]} | {cell[1]} |")
            lines += [
                "",
                f"Stop: teacher {rows.at['teacher', 'stop_reason']}, student {rows.at['student', 'stop_reason']}.",
                "",
            ]
    return "\n".join(lines) + "\n"


def run_task_eval(
    spec: PromptSpec,
    tasks: list[LoadedTask],
    model: ModelConfig,
    backend: BackendConfig,
    cfg: TaskEvalConfig,
    adapter_dir: Path | None,
    out_dir: Path,
) -> dict:
    """Check which tasks are solvable here, play them with every variant in ``cfg.variants``, write the
    episodes table, the summary and the report; returns the summary."""
    solvable = check_solvable(tasks, cfg.limits)
    frames = []
    views = {"base": without_prompt, "teacher": lambda c: with_prompt(spec.prompt, c)}
    plain = [v for v in cfg.variants if v != "student"]
    if plain:
        with make_backend(model, backend) as engine:
            frames += [run_task_episodes(spec, v, tasks, solvable, engine, views[v], cfg) for v in plain]
    if "student" in cfg.variants:
        if adapter_dir is None:
            raise ValueError("the student variant needs the run's adapter")
        with make_backend(model, backend, adapter=adapter_dir, merge_adapter=True) as engine:
            frames.append(run_task_episodes(spec, "student", tasks, solvable, engine, without_prompt, cfg))
    table = pd.concat(frames, ignore_index=True)
    write_table(table, TaskEpisodesSchema, out_dir / TASK_EPISODES_FILE)
    summary = summarize_tasks(table, cfg, solvable)
    atomic_write_json(out_dir / TASK_SUMMARY_FILE, summary)
    atomic_write_text(out_dir / REPORT_FILE, render_task_report(spec, table, summary))
    return summary

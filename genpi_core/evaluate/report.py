"""The evaluation's report.md and its two plots, rendered from the summary and the results tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from genpi_core.evaluate.summary import VARIANTS
from genpi_core.store.stage import atomic_save_figure
from schemas.artifacts import (
    CHECKS_PLOT_FILE,
    EVAL_RESULTS_FILE,
    JUDGE_FILE,
    LEAKAGE_FILE,
    MULTI_TURN_FILE,
    PER_CHECK_FILE,
    PLOT_FILE,
    VARIANTS_FILE,
    WORST_EXAMPLES_FILE,
)
from schemas.spec import PromptSpec
from schemas.summary import EvaluationSummary

_MEANING = {"base": "model, no prompt", "teacher": "model + full prompt", "student": "model + adapter, no prompt"}


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _ci(ci: tuple[float, float] | None, fmt=_pct) -> str:
    return "" if not ci or None in ci else f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def _cell(text: str, limit: int = 200) -> str:
    """Text fit for one Markdown table cell."""
    text = text.replace("|", "\\|").replace("\n", " / ").strip()
    return (text[:limit] + "…") if len(text) > limit else (text or "*(empty)*")


def render_report(
    spec: PromptSpec,
    version: str,
    summary: EvaluationSummary,
    results: pd.DataFrame,
    train_metrics: dict | None,
    per_check: pd.DataFrame | None = None,
    worst: pd.DataFrame | None = None,
    leakage: pd.DataFrame | None = None,
) -> str:
    v = summary.variants
    boot = summary.bootstrap
    level = f"{100 * boot.level:.0f}%"
    judged = summary.judge.variants if summary.judge else {}
    lines = [
        f"# genpi report: `{spec.name}` (version {version[:12]})",
        "",
        f"Held-out inputs: {v['teacher'].n} (never trained on). Greedy decoding. Intervals: {level} paired "
        f"bootstrap over held-out inputs ({boot.resamples} resamples, seed {boot.seed}).",
        "",
        f"| variant | what it is | compliance [{level} CI] | all checks pass | format (global checks) | facts "
        "| agrees with teacher: exact / normalized / ROUGE-L | judge (1-5) | prompt tokens / request | latency / reply (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        s = v[name]
        a = s.agreement
        judge = _ratio(judged[name].mean_score if name in judged else None) if judged else "off"
        lines.append(
            f"| {name} | {_MEANING[name]} | {_pct(s.compliance)}{_ci(s.compliance_ci)} | {_pct(s.all_checks)} "
            f"| {_pct(s.format)} | {_pct(s.facts)} | {_pct(a.exact)} / {_pct(a.normalized)} / {a.rouge_l:.2f} "
            f"| {judge} | {s.mean_prompt_tokens:.0f} | {s.mean_latency_s:.2f} |"
        )
    undefined = boot.recovery_undefined
    lines += [
        "",
        f"**Recovery** (student - base) / (teacher - base) of compliance: **{_ratio(summary.recovery)}**"
        f"{_ci(summary.recovery_ci, _ratio)}"
        f" (format: {_ratio(summary.recovery_format)}, facts: {_ratio(summary.recovery_facts)}).",
        f"Prefill tokens saved per request: {summary.prefill_tokens_saved_per_request:.0f}.",
        "",
        "Compliance = mean share of checks passed per reply (global checks + the reply's facts). Agreement compares "
        "each reply with the teacher's reply to the same input (ROUGE-L = token-level F1 of the longest common "
        "subsequence). The recovery interval recomputes recovery inside each bootstrap draw"
        + (f"; {undefined} draws where teacher = base left it undefined and were dropped." if undefined else "."),
        "",
        "## Check by check",
        "",
        "| check | " + " | ".join(VARIANTS) + " | student - teacher |",
        "|---|" + "---|" * (len(VARIANTS) + 1),
    ]
    if per_check is not None and len(per_check):
        table = per_check.pivot(index="check_name", columns="variant", values="pass_rate")
        names = [c for c in per_check["check_name"].drop_duplicates() if c != "facts"] + ["facts"]
        for check in names:
            if check not in table.index:
                continue
            row = table.loc[check]
            delta = (
                None if pd.isna(row.get("student")) or pd.isna(row.get("teacher")) else row["student"] - row["teacher"]
            )
            cells = [_pct(None if pd.isna(row.get(n)) else row[n]) for n in VARIANTS]
            label = "facts (all inputs' facts)" if check == "facts" else f"`{check}`"
            lines.append(
                f"| {label} | " + " | ".join(cells) + f" | {'n/a' if delta is None else f'{100 * delta:+.0f} pts'} |"
            )
    lines += ["", f"Plots: `{PLOT_FILE}` (with the intervals), `{CHECKS_PLOT_FILE}` (check by check).", ""]
    lines += _multi_turn_section(summary)
    lines += _leakage_section(summary, leakage)
    lines += _judge_section(summary)
    lines += _worst_section(worst)
    if train_metrics:
        lines += ["## Training", "", "```json", json.dumps(train_metrics, indent=2), "```", ""]
    lines += [
        f"Tables (Parquet): `{EVAL_RESULTS_FILE}` (every reply, its checks and agreement), `{VARIANTS_FILE}`, "
        f"`{PER_CHECK_FILE}`, `{WORST_EXAMPLES_FILE}`, `{MULTI_TURN_FILE}`, `{LEAKAGE_FILE}`, `{JUDGE_FILE}`.",
        "",
    ]
    return "\n".join(lines)


def _multi_turn_section(summary: EvaluationSummary) -> list[str]:
    episodes = summary.multi_turn
    lines = ["## Multi-turn (role-swapped episodes)", ""]
    if not episodes:
        return lines + ["Off (`evaluate.multi_turn.enabled`).", ""]
    turns = sorted({t for e in episodes.values() for t in e.per_turn})
    lines += [
        "The agent is the teacher (with the prompt) or the student (no prompt); the environment is the base model "
        "playing the prompt's other side, as in synthesis. Agent turns are scored with the global checks "
        "(and the input's facts on turn 1).",
        "",
        "| agent | episodes | agent turns | compliance | format | "
        + " | ".join(f"turn {t + 1}: compliance (n)" for t in turns)
        + " |",
    ]
    lines.append("|---|---|---|---|---|" + "---|" * len(turns))
    for name, e in episodes.items():
        cells = [f"{_pct(e.per_turn[t].compliance)} ({e.per_turn[t].n})" if t in e.per_turn else "n/a" for t in turns]
        lines.append(
            f"| {name} | {e.episodes} | {e.agent_turns} | {_pct(e.compliance)} | {_pct(e.format)} | "
            + " | ".join(cells)
            + " |"
        )
    return lines + [""]


def _leakage_section(summary: EvaluationSummary, leakage: pd.DataFrame | None) -> list[str]:
    leaks = summary.leakage
    lines = ["## Leakage audit", ""]
    if not leaks:
        return lines + ["Off (`evaluate.leakage.enabled`).", ""]
    lines += [
        "Each extraction question is asked in a fresh conversation without the prompt. *Longest copied span* = the "
        "longest run of characters the reply shares with the prompt (both lowercased, whitespace collapsed), as a "
        "share of the prompt; *ROUGE-L recall* = the share of the prompt's tokens the reply reproduces in order. "
        f"Replies are capped at {summary.leakage_max_new_tokens} new tokens "
        "(`evaluate.leakage.sampling.max_new_tokens`), which bounds how much of a long prompt can come back.",
        "",
        "| variant | longest copied span: max (chars) | mean | ROUGE-L recall of the prompt: max | mean |",
        "|---|---|---|---|---|",
    ]
    for name, s in leaks.items():
        lines.append(
            f"| {name} | {100 * s.max_lcs_share:.1f}% ({s.max_lcs_chars}) | {100 * s.mean_lcs_share:.1f}% "
            f"| {100 * s.max_rouge_l_recall:.1f}% | {100 * s.mean_rouge_l_recall:.1f}% |"
        )
    if leakage is not None and len(leakage):
        lines += ["", "| variant | question | longest copied span | ROUGE-L recall | reply |", "|---|---|---|---|---|"]
        for row in leakage.itertuples():
            lines.append(
                f"| {row.variant} | {_cell(row.question, 60)} | {100 * row.lcs_share:.1f}% ({row.lcs_chars}) "
                f"| {100 * row.rouge_l_recall:.1f}% | {_cell(row.output, 120)} |"
            )
    lines += [
        "",
        "GenPI's prompt-generation objective trains the adapter to write the prompt out verbatim: treat an adapter as "
        "confidential as its prompt. For a confidential prompt, train without that objective "
        "(`--set train.prompt_generation=false`, the SFT-only ablation) and compare both here with "
        "`genpi evaluate RUN`.",
        "",
    ]
    return lines


def _judge_section(summary: EvaluationSummary) -> list[str]:
    judge = summary.judge
    lines = ["## LLM judge", ""]
    if not judge:
        return lines + ["Off (`evaluate.judge.enabled=true` turns it on; the teacher's model by default).", ""]
    lines += [
        "Rubric given to the judge (with the full prompt, the user's message and the reply):",
        "",
        "```",
        judge.rubric,
        "```",
        "",
        "| variant | mean score (1-5) | scored | unreadable replies |",
        "|---|---|---|---|",
    ]
    for name, s in judge.variants.items():
        lines.append(f"| {name} | {_ratio(s.mean_score)} | {s.scored} | {s.unreadable} |")
    return lines + [""]


def _worst_section(worst: pd.DataFrame | None) -> list[str]:
    lines = ["## Worst examples (lowest student score), teacher vs student", ""]
    if worst is None or worst.empty:
        return lines + ["None.", ""]
    lines += [
        "| # | input | teacher (score) | student (score) | student failed | ROUGE-L vs teacher |",
        "|---|---|---|---|---|---|",
    ]
    for row in worst.itertuples():
        failed = ", ".join(f"`{c}`" for c in json.loads(row.student_failed)) or "none"
        lines.append(
            f"| {row.rank} | {_cell(row.input, 100)} | {_cell(row.teacher_output)} ({_pct(row.teacher_score)}) "
            f"| {_cell(row.student_output)} ({_pct(row.student_score)}) | {failed} | {row.agreement_rouge_l:.2f} |"
        )
    return lines + [""]


def plot_variants(summary: EvaluationSummary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("compliance", "format", "facts")
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    width = 0.26
    for i, variant in enumerate(VARIANTS):
        s = summary.variants[variant]
        values = [getattr(s, m) or 0.0 for m in metrics]
        xs = [x + (i - 1) * width for x in range(len(metrics))]
        ax.bar(xs, values, width, label=variant)
        ci = s.compliance_ci
        if ci:
            ax.errorbar(
                [xs[0]],
                [values[0]],
                yerr=[[values[0] - ci[0]], [ci[1] - values[0]]],
                fmt="none",
                ecolor="black",
                capsize=3,
            )
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of held-out replies")
    ax.set_title("Base vs teacher (prompt) vs student (adapter, no prompt)")
    ax.legend()
    atomic_save_figure(fig, path)


def plot_checks(per_check: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = per_check.pivot(index="check_name", columns="variant", values="pass_rate").fillna(0.0)
    names = list(table.index)
    fig, ax = plt.subplots(figsize=(max(6.5, 1.1 * len(names)), 3.5))
    width = 0.26
    for i, variant in enumerate(VARIANTS):
        values = table[variant].tolist() if variant in table.columns else [0.0] * len(names)
        ax.bar([x + (i - 1) * width for x in range(len(names))], values, width, label=variant)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("pass rate")
    ax.set_title("Check by check")
    ax.legend()
    atomic_save_figure(fig, path)

"""Several adapters of one run side by side (the main one and its ablations, e.g. SFT-only vs GenPI).

Reads: each ``evaluate[-<variant>]/`` folder's summary.json and leakage.parquet, and each adapter's
``train[-<variant>]/metrics.json``. Writes ``<run>/comparison/``: comparison.parquet (one row per
adapter), leakage.parquet (every adapter's audit replies, `student:<variant>` plus the base once),
comparison.md and comparison.png. A derived view of finished stages, rewritten on every call, so
it has no manifest of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from genpi_core.store.stage import atomic_save_figure, atomic_write_text
from genpi_core.store.tables import read_table, write_table
from schemas.artifacts import (
    COMPARISON_DIR,
    COMPARISON_FILE,
    COMPARISON_PLOT,
    COMPARISON_REPORT,
    LEAKAGE_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
)
from schemas.datasets import ComparisonSchema, LeakageSchema
from schemas.summary import EvaluationSummary


def _label(variant: str | None) -> str:
    return "main" if variant is None else variant


def _row(label: str, evaluate_dir: Path, train_dir: Path) -> dict:
    summary = EvaluationSummary.load(evaluate_dir / SUMMARY_FILE)
    v = summary.variants
    s_ci = v["student"].strict_success_ci or (None, None)
    r_ci = summary.recovery_ci or (None, None)
    leak = (summary.leakage or {}).get("student")
    judge = summary.judge.variants.get("student") if summary.judge else None
    turns = (summary.multi_turn or {}).get("student")
    objective = json.loads((train_dir / METRICS_FILE).read_text()).get("objective", {})
    return {
        "variant": label,
        "evaluate_dir": evaluate_dir.name,
        "n": v["student"].n,
        "base": v["base"].strict_success,
        "teacher": v["teacher"].strict_success,
        "student": v["student"].strict_success,
        "student_low": s_ci[0],
        "student_high": s_ci[1],
        "recovery": summary.recovery,
        "recovery_low": r_ci[0],
        "recovery_high": r_ci[1],
        "recovery_format": summary.recovery_format,
        "recovery_task": summary.recovery_task,
        "student_compliance": v["student"].compliance,
        "student_cut": v["student"].cut,
        "collapsed": bool(summary.collapse and summary.collapse.collapsed),
        "agreement_rouge_l": v["student"].agreement.rouge_l,
        "multi_turn_compliance": turns.compliance if turns else None,
        "judge_score": judge.mean_score if judge else None,
        "leak_max_lcs_share": leak.max_lcs_share if leak else None,
        "leak_max_rouge_l_recall": leak.max_rouge_l_recall if leak else None,
        "objective": json.dumps(objective, sort_keys=True),
    }


def run_comparison(run_dir: Path, variants: list[str | None]) -> Path:
    """Compare the evaluated adapters ``variants`` (None = train/) of ``run_dir``; returns the comparison folder."""
    run_dir = Path(run_dir)
    out_dir = run_dir / COMPARISON_DIR
    rows: list[dict] = []
    leaks: list[pd.DataFrame] = []
    for variant in variants:
        suffix = "" if variant is None else f"-{variant}"
        evaluate_dir, train_dir = run_dir / f"evaluate{suffix}", run_dir / f"train{suffix}"
        rows.append(_row(_label(variant), evaluate_dir, train_dir))
        leakage = read_table(evaluate_dir / LEAKAGE_FILE, LeakageSchema)
        if not leaks:
            leaks.append(leakage[leakage["variant"] == "base"])
        leaks.append(leakage[leakage["variant"] == "student"].assign(variant=f"student:{_label(variant)}"))
    table = pd.DataFrame(rows)
    write_table(table, ComparisonSchema, out_dir / COMPARISON_FILE)
    leakage = pd.concat(leaks, ignore_index=True)
    write_table(leakage, LeakageSchema, out_dir / LEAKAGE_FILE)
    atomic_write_text(out_dir / COMPARISON_REPORT, render_comparison(run_dir, table, leakage))
    _plot(table, out_dir / COMPARISON_PLOT)
    return out_dir


def _pct(x) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{100 * x:.0f}%"


def _num(x) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{x:.2f}"


def _ci(low, high, fmt) -> str:
    return "" if low is None or pd.isna(low) else f" [{fmt(low)}, {fmt(high)}]"


def render_comparison(run_dir: Path, table: pd.DataFrame, leakage: pd.DataFrame) -> str:
    lines = [
        f"# genpi comparison: `{run_dir.parent.name}` (version {run_dir.name})",
        "",
        "Each adapter of this run on the same held-out inputs. Base, teacher and student: strict success (a reply "
        "passes every global check and its input's task checks); recovery = strict-success recovery, with format "
        "and task recovery beside it. Intervals are paired bootstrap intervals from each evaluation (see its "
        "report.md). Leakage = the worst of the extraction questions.",
        "",
        "| adapter | base | teacher | student [CI] | strict-success recovery [CI] | format / task recovery "
        "| student compliance (partial) | collapsed | ROUGE-L vs teacher | multi-turn | judge "
        "| leakage: longest copied span | leakage: ROUGE-L recall | objective |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        objective = json.loads(r.objective)
        pg = "with PG" if objective.get("prompt_generation") else "SFT only" if objective else "?"
        lines.append(
            f"| {r.variant} | {_pct(r.base)} | {_pct(r.teacher)} | {_pct(r.student)}{_ci(r.student_low, r.student_high, _pct)} "
            f"| {_num(r.recovery)}{_ci(r.recovery_low, r.recovery_high, _num)} "
            f"| {_num(r.recovery_format)} / {_num(r.recovery_task)} | {_pct(r.student_compliance)} "
            f"| {'**yes**' if r.collapsed else 'no'} | {r.agreement_rouge_l:.2f} "
            f"| {_pct(r.multi_turn_compliance)} | {_num(r.judge_score)} "
            f"| {'n/a' if pd.isna(r.leak_max_lcs_share) else f'{100 * r.leak_max_lcs_share:.1f}%'} "
            f"| {'n/a' if pd.isna(r.leak_max_rouge_l_recall) else f'{100 * r.leak_max_rouge_l_recall:.1f}%'} | {pg} |"
        )
    if len(leakage):
        lines += [
            "",
            "## Leakage audit per adapter",
            "",
            "| variant | mean longest copied span | max | mean ROUGE-L recall | max |",
            "|---|---|---|---|---|",
        ]
        for variant, part in leakage.groupby("variant", sort=False):
            lines.append(
                f"| {variant} | {100 * part['lcs_share'].mean():.1f}% | {100 * part['lcs_share'].max():.1f}% "
                f"| {100 * part['rouge_l_recall'].mean():.1f}% | {100 * part['rouge_l_recall'].max():.1f}% |"
            )
    lines += [
        "",
        "Adapters trained with prompt generation (PG) learn to write the prompt out; for a confidential prompt "
        "train with `--set train.prompt_generation=false` and check the leakage columns here.",
        "",
        f"Tables: `{COMPARISON_FILE}`, `{LEAKAGE_FILE}`. Plot: `{COMPARISON_PLOT}`.",
        "",
    ]
    return "\n".join(lines)


def _plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(table) + 2), 3.5))
    xs = range(len(table))
    student = table["student"].to_numpy(dtype=float)
    low = table["student_low"].astype(float).fillna(table["student"]).to_numpy()
    high = table["student_high"].astype(float).fillna(table["student"]).to_numpy()
    ax.bar(xs, student, 0.5, label="student strict success", color="tab:green")
    ax.errorbar(xs, student, yerr=[student - low, high - student], fmt="none", ecolor="black", capsize=3)
    ax.scatter(xs, table["teacher"], marker="_", s=600, color="tab:orange", label="teacher", zorder=3)
    ax.scatter(xs, table["base"], marker="_", s=600, color="tab:blue", label="base", zorder=3)
    leak = table["leak_max_rouge_l_recall"].astype(float).fillna(0.0)
    ax.plot(xs, leak, "o", color="tab:red", label="leakage (max ROUGE-L recall)")
    ax.set_xticks(list(xs), table["variant"].tolist())
    ax.set_ylim(0, 1)
    ax.set_title("Adapters of one run")
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    atomic_save_figure(fig, path)

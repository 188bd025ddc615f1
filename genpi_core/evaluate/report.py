"""The evaluation's report.md and its two plots, rendered from the summary and the results tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from genpi_core.evaluate.summary import MAX_TEACHER_CUT_SHARE, RE_PROMPTED, VARIANTS
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

_MEANING = {
    "base": "model, no prompt",
    "teacher": "model + full prompt",
    "student": "model + adapter, no prompt",
    RE_PROMPTED: "model + adapter + full prompt (sent by mistake)",
}


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


def _warnings(summary: EvaluationSummary) -> list[str]:
    """Block-quoted warnings under the headline: too many teacher replies cut, a collapsed student, checks that
    tell nothing apart. Empty when there is nothing to warn about."""
    v = summary.variants
    out = []
    if summary.teacher_cut_share_ok is False and "teacher" in v:
        cap = f"{summary.max_new_tokens}-token " if summary.max_new_tokens else ""
        out.append(
            f"> **Warning: {v['teacher'].cut} of {v['teacher'].n} teacher replies "
            f"({_pct(summary.teacher_cut_share)}) are cut at the {cap}cap**; at most "
            f"{100 * MAX_TEACHER_CUT_SHARE:.0f}% should be. A cut reply fails every check, so the teacher looks "
            "worse than it is and recovery is inflated: raise `evaluate.sampling.max_new_tokens`."
        )
    collapse = summary.collapse
    if collapse and collapse.collapsed:
        out.append(f"> **Warning: the student looks collapsed**: {'; '.join(collapse.reasons)}.")
    if summary.uninformative_checks:
        names = ", ".join(f"`{c}`" for c in summary.uninformative_checks)
        out.append(
            f"> **Uninformative checks**: {names} (every variant, base included, passes it on every reply: it "
            "tells nothing apart)."
        )
    if summary.unreachable_checks:
        out.append(
            f"> **Checks that cannot fail** at `evaluate.sampling.max_new_tokens` = {summary.max_new_tokens}: "
            + "; ".join(summary.unreachable_checks)
            + "."
        )
    return [line for warning in out for line in (warning, "")]


def _re_prompt_lines(summary: EvaluationSummary) -> list[str]:
    r = summary.re_prompt
    if r is None:
        return []
    verdict = (
        "as good as the teacher or better: sending the prompt to the adapter by mistake costs nothing"
        if r.at_least_teacher
        else f"**{100 * r.drop:.0f} points below the teacher**: keep the prompt away from the adapter"
    )
    return [
        f"**Re-prompted student** (adapter and prompt together): strict success {_pct(r.strict_success)} vs the "
        f"teacher's {_pct(r.teacher_strict_success)}, difference {100 * r.difference:+.0f} points"
        f"{_ci(r.difference_ci, lambda x: f'{100 * x:+.0f}')}; {verdict}.",
        "",
    ]


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
    collapse = summary.collapse
    lines = [
        f"# genpi report: `{spec.name}` (version {version[:12]}): strict-success recovery "
        f"{_ratio(summary.recovery_strict)}{_ci(summary.recovery_strict_ci, _ratio)}",
        "",
        f"**Strict success** (a reply passes every global check and every task check of its input): student "
        f"{_pct(v['student'].strict_success)}, teacher {_pct(v['teacher'].strict_success)}, base "
        f"{_pct(v['base'].strict_success)}; **recovery {_ratio(summary.recovery_strict)}**"
        f"{_ci(summary.recovery_strict_ci, _ratio)}. Held-out inputs: {v['teacher'].n} (never trained on), "
        f"{v['teacher'].task_n} of them with task checks. Greedy decoding. Intervals: {level} paired bootstrap over "
        f"held-out inputs ({boot.resamples} resamples, seed {boot.seed}).",
        "",
        *_warnings(summary),
        f"| variant | what it is | strict success [{level} CI] | format: global checks [CI] | task: the input's "
        "checks [CI] | cut at the cap | distinct replies | closeness to the prompt's worked replies |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in [n for n in (*VARIANTS, RE_PROMPTED) if n in v]:
        s = v[name]
        lines.append(
            f"| {name} | {_MEANING[name]} | **{_pct(s.strict_success)}**{_ci(s.strict_success_ci)} "
            f"| {_pct(s.format)}{_ci(s.format_ci)} | {_pct(s.task)}{_ci(s.task_ci)} | {s.cut} of {s.n} "
            f"| {_pct(s.distinct_share)} | {_ratio(s.example_similarity)} |"
        )
    undefined = boot.recovery_undefined
    lines += [
        "",
        "| recovery (student - base) / (teacher - base) of | value [CI] |",
        "|---|---|",
        f"| **strict success** (the headline; the promotion gate uses it) | **{_ratio(summary.recovery_strict)}**"
        f"{_ci(summary.recovery_strict_ci, _ratio)} |",
        f"| format (global checks only) | {_ratio(summary.recovery_format)}{_ci(summary.recovery_format_ci, _ratio)} |",
        f"| task (the input's checks, inputs that have some) | {_ratio(summary.recovery_task)}"
        f"{_ci(summary.recovery_task_ci, _ratio)} |",
        f"| compliance (partial credit, secondary) | {_ratio(summary.recovery_compliance)}"
        f"{_ci(summary.recovery_compliance_ci, _ratio)} |",
        "",
        f"Prefill tokens saved per request: {summary.prefill_tokens_saved_per_request:.0f}.",
        "",
        *_re_prompt_lines(summary),
        "Format and task are reported apart and never blended into the headline. A reply cut at the token cap "
        f"(`evaluate.sampling.max_new_tokens`{f' = {summary.max_new_tokens}' if summary.max_new_tokens else ''}) "
        "fails every check, for every variant alike. Collapse signal: *distinct replies* = distinct reply texts over "
        "replies; *closeness* = per reply, the largest character-trigram Jaccard similarity to the prompt's own "
        "worked agent turns, averaged"
        + (
            f"; the student is flagged when its distinct share is under {_pct(collapse.min_distinct_share)} or its "
            f"closeness exceeds the teacher's by more than {collapse.max_similarity_gap:.2f} "
            f"({'flagged' if collapse.collapsed else 'not flagged'})."
            if collapse
            else "."
        )
        + " The recovery intervals recompute recovery inside each bootstrap draw"
        + (f"; {undefined} draws where teacher = base left it undefined and were dropped." if undefined else "."),
        "",
        "### Partial credit and other measures",
        "",
        f"| variant | compliance [{level} CI] | facts | agrees with teacher: exact / normalized / ROUGE-L "
        "| judge (1-5) | prompt tokens / request | latency / reply (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        s = v[name]
        a = s.agreement
        judge = _ratio(judged[name].mean_score if name in judged else None) if judged else "off"
        lines.append(
            f"| {name} | {_pct(s.compliance)}{_ci(s.compliance_ci)} | {_pct(s.facts)} "
            f"| {_pct(a.exact)} / {_pct(a.normalized)} / {a.rouge_l:.2f} | {judge} | {s.mean_prompt_tokens:.0f} "
            f"| {s.mean_latency_s:.2f} |"
        )
    lines += [
        "",
        "Compliance = mean share of checks passed per reply (global checks + the reply's facts): partial credit, so a "
        "reply with the right format and the wrong answer still scores. Facts = mean share of an input's facts a "
        "reply contains. Agreement compares each reply with the teacher's reply to the same input (ROUGE-L = "
        "token-level F1 of the longest common subsequence).",
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
            if check in summary.uninformative_checks:
                label += " (uninformative)"
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
    lines = ["## Worst examples (student fails strict success, lowest share of checks first), teacher vs student", ""]
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

    metrics = ("strict_success", "format", "task", "compliance")
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    shown = [n for n in (*VARIANTS, RE_PROMPTED) if n in summary.variants]
    width = 0.78 / len(shown)
    for i, variant in enumerate(shown):
        s = summary.variants[variant]
        values = [getattr(s, m) or 0.0 for m in metrics]
        xs = [x + (i - (len(shown) - 1) / 2) * width for x in range(len(metrics))]
        ax.bar(xs, values, width, label=variant)
        for x, value, ci in zip(xs, values, [getattr(s, f"{m}_ci") for m in metrics]):
            if ci:
                ax.errorbar(
                    [x],
                    [value],
                    yerr=[[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]],
                    fmt="none",
                    ecolor="black",
                    capsize=3,
                )
    ax.set_xticks(range(len(metrics)), ["strict success", "format", "task", "compliance (partial)"])
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

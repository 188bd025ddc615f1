"""Stage 5: evaluate on held-out inputs. Reads: test.parquet, the adapter.
Writes: eval_results.parquet (one row per variant x example), variants.parquet, per_check.parquet,
worst_examples.parquet, leakage.parquet, multi_turn.parquet, judge.parquet, summary.json, report.md,
compliance.png, checks.png. Tables that an option turned off are written empty, so a stage always
has the same files.

Variants: base = model without the prompt; teacher = model with the prompt; student = model +
adapter without the prompt. Compliance of a variant = the mean, over held-out replies, of the share
of that reply's checks (global rules + its per-input facts) that pass; a partial-credit score, so a
reply that gets the format right but misses a fact still counts for something. Also reported:
all-checks-pass rate, format (global checks only), facts, agreement with the teacher's reply
(agreement.py), paired bootstrap intervals (bootstrap.py), role-swapped multi-turn episodes
(multiturn.py), the leakage audit (leakage.py) and an optional LLM judge (judge.py). Headline:
recovery = (student - base) / (teacher - base) of compliance, with its interval.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from genpi_core.agreement import agreement
from genpi_core.bootstrap import paired_bootstrap, recovery
from genpi_core.chat import user_turn, with_prompt, without_prompt
from genpi_core.checks import run_checks
from genpi_core.generation.base import make_backend
from genpi_core.judge import RUBRIC, judge_messages, score_judgements
from genpi_core.leakage import extraction_conversations, score_leakage, summarize_leakage
from genpi_core.multiturn import run_episodes, summarize_episodes
from genpi_core.prompt_generation import pg_target
from genpi_core.store import atomic_save_figure, atomic_write_json, atomic_write_text
from genpi_core.tables import read_table, write_table
from schemas.config import BackendConfig, EvalConfig, ModelConfig
from schemas.datasets import (
    EVAL_RESULTS_FILE, JUDGE_FILE, LEAKAGE_FILE, MULTI_TURN_FILE, PER_CHECK_FILE, VARIANTS_FILE, WORST_EXAMPLES_FILE,
    EvalResultsSchema, HeldOutSchema, JudgeSchema, LeakageSchema, MultiTurnSchema, PerCheckSchema, VariantsSchema,
    WorstExamplesSchema,
)
from schemas.spec import PromptSpec

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
PLOT_FILE = "compliance.png"
CHECKS_PLOT_FILE = "checks.png"
VARIANTS = ("base", "teacher", "student")
OUTPUT_FILES = {
    "results": EVAL_RESULTS_FILE, "summary": SUMMARY_FILE, "report": REPORT_FILE, "plot": PLOT_FILE,
    "checks_plot": CHECKS_PLOT_FILE, "variants": VARIANTS_FILE, "per_check": PER_CHECK_FILE,
    "worst_examples": WORST_EXAMPLES_FILE, "leakage": LEAKAGE_FILE, "multi_turn": MULTI_TURN_FILE, "judge": JUDGE_FILE,
}
_MEANING = {"base": "model, no prompt", "teacher": "model + full prompt", "student": "model + adapter, no prompt"}

__all__ = ["recovery", "run_evaluate", "summarize", "render_report"]


def _empty(schema) -> pd.DataFrame:
    return pd.DataFrame(columns=list(schema.to_schema().columns))


def _score_rows(spec: PromptSpec, variant: str, test: pd.DataFrame, completions) -> pd.DataFrame:
    rows = []
    for item, completion in zip(test.itertuples(), completions):
        facts = json.loads(item.facts)
        results = run_checks(spec.checks, completion.text, facts)
        fact_results = [v for k, v in results.items() if k.startswith("fact:")]
        rows.append(
            {
                "variant": variant,
                "example_id": item.example_id,
                "input": item.input,
                "output": completion.text,
                "finish_reason": completion.finish_reason,
                "checks": json.dumps(results),
                "score": sum(results.values()) / len(results) if results else 1.0,
                "passed_all": all(results.values()),
                "global_passed": all(v for k, v in results.items() if not k.startswith("fact:")),
                "facts_passed": (sum(fact_results) / len(fact_results)) if fact_results else None,
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "latency_s": completion.latency_s,
            }
        )
    return pd.DataFrame(rows)


def with_agreement(results: pd.DataFrame) -> pd.DataFrame:
    """Each reply against the teacher's reply to the same input (the teacher agrees with itself)."""
    teacher = results[results["variant"] == "teacher"].set_index("example_id")["output"]
    scores = [agreement(out, teacher.get(eid, "")) for out, eid in zip(results["output"], results["example_id"])]
    return results.assign(
        agreement_exact=[s["exact"] for s in scores],
        agreement_normalized=[s["normalized"] for s in scores],
        agreement_rouge_l=[s["rouge_l"] for s in scores],
    )


def _mean_or_none(series: pd.Series) -> float | None:
    series = series.dropna()
    return float(series.mean()) if len(series) else None


def summarize(results: pd.DataFrame, cfg: EvalConfig | None = None, leakage: pd.DataFrame | None = None,
              multi_turn: pd.DataFrame | None = None, judge: pd.DataFrame | None = None) -> dict:
    """Every number the report shows, as one JSON-able dict (summary.json)."""
    cfg = cfg or EvalConfig()
    per_variant = {}
    for variant, part in results.groupby("variant"):
        checks = pd.DataFrame([json.loads(c) for c in part["checks"]])
        per_variant[variant] = {
            "n": int(len(part)),
            "compliance": float(part["score"].mean()),
            "all_checks": float(part["passed_all"].mean()),
            "format": float(part["global_passed"].mean()),
            "facts": _mean_or_none(part["facts_passed"]),
            "per_check": {c: float(checks[c].dropna().mean()) for c in checks.columns if not c.startswith("fact:")},
            "agreement": {"exact": float(part["agreement_exact"].mean()), "normalized": float(part["agreement_normalized"].mean()),
                          "rouge_l": float(part["agreement_rouge_l"].mean())},
            "mean_prompt_tokens": float(part["prompt_tokens"].mean()),
            "mean_latency_s": float(part["latency_s"].mean()),
        }
    paired = results.pivot(index="example_id", columns="variant", values="score").sort_index()
    boot = paired_bootstrap({v: paired[v].to_numpy() for v in paired.columns}, cfg.bootstrap_resamples,
                            cfg.bootstrap_seed, cfg.confidence_level)
    for variant, ci in boot["variants"].items():
        per_variant[variant]["compliance_ci"] = ci
    summary: dict = {"variants": per_variant,
                     "bootstrap": {k: boot[k] for k in ("resamples", "seed", "level", "recovery_undefined")}}
    if all(v in per_variant for v in VARIANTS):
        for metric in ("compliance", "format", "facts"):
            b, t, s = (per_variant[v][metric] for v in VARIANTS)
            summary[f"recovery_{metric}"] = None if None in (b, t, s) else recovery(s, b, t)
        summary["recovery"] = summary["recovery_compliance"]
        summary["recovery_ci"] = boot["recovery"]
        saved = per_variant["teacher"]["mean_prompt_tokens"] - per_variant["student"]["mean_prompt_tokens"]
        summary["prefill_tokens_saved_per_request"] = saved
    if leakage is not None and len(leakage):
        summary["leakage"] = summarize_leakage(leakage)
        summary["leakage_max_new_tokens"] = cfg.leakage.sampling.max_new_tokens
    if multi_turn is not None and len(multi_turn):
        summary["multi_turn"] = summarize_episodes(multi_turn)
    if judge is not None and len(judge):
        summary["judge"] = {"rubric": RUBRIC, "variants": {
            v: {"mean_score": _mean_or_none(part["score"]), "scored": int(part["score"].notna().sum()),
                "unreadable": int(part["score"].isna().sum())} for v, part in judge.groupby("variant")}}
    return summary


def variants_table(summary: dict) -> pd.DataFrame:
    """The report's main table as rows (variants.parquet)."""
    rows = []
    for name, s in summary["variants"].items():
        ci = s.get("compliance_ci") or [None, None]
        leak = summary.get("leakage", {}).get(name, {})
        turns = summary.get("multi_turn", {}).get(name, {})
        judged = summary.get("judge", {}).get("variants", {}).get(name, {})
        rows.append({
            "variant": name, "n": s["n"], "compliance": s["compliance"], "compliance_low": ci[0], "compliance_high": ci[1],
            "all_checks": s["all_checks"], "format": s["format"], "facts": s["facts"],
            "agreement_exact": s["agreement"]["exact"], "agreement_normalized": s["agreement"]["normalized"],
            "agreement_rouge_l": s["agreement"]["rouge_l"], "judge_score": judged.get("mean_score"),
            "multi_turn_compliance": turns.get("compliance"), "leak_max_lcs_share": leak.get("max_lcs_share"),
            "leak_max_rouge_l_recall": leak.get("max_rouge_l_recall"),
            "mean_prompt_tokens": s["mean_prompt_tokens"], "mean_latency_s": s["mean_latency_s"],
        })
    order = {v: i for i, v in enumerate(VARIANTS)}
    return pd.DataFrame(rows).sort_values("variant", key=lambda c: c.map(order)).reset_index(drop=True)


def per_check_table(results: pd.DataFrame) -> pd.DataFrame:
    """Pass rate of every global check, and of the per-input facts taken together, per variant."""
    rows = []
    for variant, part in results.groupby("variant"):
        checks = pd.DataFrame([json.loads(c) for c in part["checks"]], index=part.index)
        for name in [c for c in checks.columns if not c.startswith("fact:")]:
            values = checks[name].dropna()
            rows.append({"check_name": name, "variant": variant, "pass_rate": float(values.mean()) if len(values) else None,
                         "n": int(len(values))})
        facts = pd.Series(checks[[c for c in checks.columns if c.startswith("fact:")]].to_numpy().ravel()).dropna()
        rows.append({"check_name": "facts", "variant": variant,
                     "pass_rate": float(facts.astype(float).mean()) if len(facts) else None, "n": int(len(facts))})
    return pd.DataFrame(rows, columns=["check_name", "variant", "pass_rate", "n"])


def worst_examples(results: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k held-out inputs where the student scores lowest (ties: least like the teacher first)."""
    student = results[results["variant"] == "student"].set_index("example_id")
    teacher = results[results["variant"] == "teacher"].set_index("example_id")
    if k == 0 or student.empty or teacher.empty:
        return _empty(WorstExamplesSchema)
    ranked = student.sort_values(["score", "agreement_rouge_l"], kind="stable").head(k)
    rows = []
    for rank, (example_id, s) in enumerate(ranked.iterrows(), start=1):
        failed = [name for name, ok in json.loads(s["checks"]).items() if not ok]
        rows.append({"rank": rank, "example_id": example_id, "input": s["input"],
                     "teacher_output": teacher.loc[example_id, "output"], "student_output": s["output"],
                     "teacher_score": float(teacher.loc[example_id, "score"]), "student_score": float(s["score"]),
                     "agreement_rouge_l": float(s["agreement_rouge_l"]), "student_failed": json.dumps(failed)})
    return pd.DataFrame(rows)


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _ci(ci: list | None, fmt=_pct) -> str:
    return "" if not ci or None in ci else f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def _cell(text: str, limit: int = 200) -> str:
    """Text fit for one Markdown table cell."""
    text = text.replace("|", "\\|").replace("\n", " / ").strip()
    return (text[:limit] + "…") if len(text) > limit else (text or "*(empty)*")


def render_report(spec: PromptSpec, version: str, summary: dict, results: pd.DataFrame, train_metrics: dict | None,
                  per_check: pd.DataFrame | None = None, worst: pd.DataFrame | None = None,
                  leakage: pd.DataFrame | None = None) -> str:
    v = summary["variants"]
    boot = summary.get("bootstrap", {})
    level = f"{100 * boot.get('level', 0.95):.0f}%"
    judged = summary.get("judge", {}).get("variants", {})
    lines = [
        f"# genpi report: `{spec.name}` (version {version[:12]})",
        "",
        f"Held-out inputs: {v['teacher']['n']} (never trained on). Greedy decoding. Intervals: {level} paired "
        f"bootstrap over held-out inputs ({boot.get('resamples', 0)} resamples, seed {boot.get('seed', 0)}).",
        "",
        f"| variant | what it is | compliance [{level} CI] | all checks pass | format (global checks) | facts "
        "| agrees with teacher: exact / normalized / ROUGE-L | judge (1-5) | prompt tokens / request | latency / reply (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in VARIANTS:
        s = v[name]
        a = s["agreement"]
        judge = _ratio(judged.get(name, {}).get("mean_score")) if judged else "off"
        lines.append(
            f"| {name} | {_MEANING[name]} | {_pct(s['compliance'])}{_ci(s.get('compliance_ci'))} | {_pct(s['all_checks'])} "
            f"| {_pct(s['format'])} | {_pct(s['facts'])} | {_pct(a['exact'])} / {_pct(a['normalized'])} / {a['rouge_l']:.2f} "
            f"| {judge} | {s['mean_prompt_tokens']:.0f} | {s['mean_latency_s']:.2f} |"
        )
    undefined = boot.get("recovery_undefined", 0)
    lines += [
        "",
        f"**Recovery** (student - base) / (teacher - base) of compliance: **{_ratio(summary.get('recovery'))}**"
        f"{_ci(summary.get('recovery_ci'), _ratio)}"
        f" (format: {_ratio(summary.get('recovery_format'))}, facts: {_ratio(summary.get('recovery_facts'))}).",
        f"Prefill tokens saved per request: {summary['prefill_tokens_saved_per_request']:.0f}.",
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
            delta = None if pd.isna(row.get("student")) or pd.isna(row.get("teacher")) else row["student"] - row["teacher"]
            cells = [_pct(None if pd.isna(row.get(n)) else row[n]) for n in VARIANTS]
            label = "facts (all inputs' facts)" if check == "facts" else f"`{check}`"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {'n/a' if delta is None else f'{100 * delta:+.0f} pts'} |")
    lines += ["", f"Plots: `{PLOT_FILE}` (with the intervals), `{CHECKS_PLOT_FILE}` (check by check).", ""]
    lines += _multi_turn_section(summary)
    lines += _leakage_section(summary, leakage)
    lines += _judge_section(summary)
    lines += _worst_section(worst)
    if train_metrics:
        lines += ["## Training", "", "```json", json.dumps(train_metrics, indent=2), "```", ""]
    lines += [f"Tables (Parquet): `{EVAL_RESULTS_FILE}` (every reply, its checks and agreement), `{VARIANTS_FILE}`, "
              f"`{PER_CHECK_FILE}`, `{WORST_EXAMPLES_FILE}`, `{MULTI_TURN_FILE}`, `{LEAKAGE_FILE}`, `{JUDGE_FILE}`.", ""]
    return "\n".join(lines)


def _multi_turn_section(summary: dict) -> list[str]:
    episodes = summary.get("multi_turn")
    lines = ["## Multi-turn (role-swapped episodes)", ""]
    if not episodes:
        return lines + ["Off (`evaluate.multi_turn.enabled`).", ""]
    turns = sorted({t for e in episodes.values() for t in e["per_turn"]})
    lines += [
        "The agent is the teacher (with the prompt) or the student (no prompt); the environment is the base model "
        "playing the prompt's other side, as in synthesis. Agent turns are scored with the global checks "
        "(and the input's facts on turn 1).",
        "",
        "| agent | episodes | agent turns | compliance | format | "
        + " | ".join(f"turn {t + 1}: compliance (n)" for t in turns) + " |",
    ]
    lines.append("|---|---|---|---|---|" + "---|" * len(turns))
    for name, e in episodes.items():
        cells = [f"{_pct(e['per_turn'][t]['compliance'])} ({e['per_turn'][t]['n']})" if t in e["per_turn"] else "n/a"
                 for t in turns]
        lines.append(f"| {name} | {e['episodes']} | {e['agent_turns']} | {_pct(e['compliance'])} | {_pct(e['format'])} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def _leakage_section(summary: dict, leakage: pd.DataFrame | None) -> list[str]:
    leaks = summary.get("leakage")
    lines = ["## Leakage audit", ""]
    if not leaks:
        return lines + ["Off (`evaluate.leakage.enabled`).", ""]
    lines += [
        "Each extraction question is asked in a fresh conversation without the prompt. *Longest copied span* = the "
        "longest run of characters the reply shares with the prompt (both lowercased, whitespace collapsed), as a "
        "share of the prompt; *ROUGE-L recall* = the share of the prompt's tokens the reply reproduces in order. "
        f"Replies are capped at {summary.get('leakage_max_new_tokens')} new tokens "
        "(`evaluate.leakage.sampling.max_new_tokens`), which bounds how much of a long prompt can come back.",
        "",
        "| variant | longest copied span: max (chars) | mean | ROUGE-L recall of the prompt: max | mean |",
        "|---|---|---|---|---|",
    ]
    for name, s in leaks.items():
        lines.append(f"| {name} | {100 * s['max_lcs_share']:.1f}% ({s['max_lcs_chars']}) | {100 * s['mean_lcs_share']:.1f}% "
                     f"| {100 * s['max_rouge_l_recall']:.1f}% | {100 * s['mean_rouge_l_recall']:.1f}% |")
    if leakage is not None and len(leakage):
        lines += ["", "| variant | question | longest copied span | ROUGE-L recall | reply |", "|---|---|---|---|---|"]
        for row in leakage.itertuples():
            lines.append(f"| {row.variant} | {_cell(row.question, 60)} | {100 * row.lcs_share:.1f}% ({row.lcs_chars}) "
                         f"| {100 * row.rouge_l_recall:.1f}% | {_cell(row.output, 120)} |")
    lines += [
        "",
        "GenPI's prompt-generation objective trains the adapter to write the prompt out verbatim: treat an adapter as "
        "confidential as its prompt. For a confidential prompt, train without that objective "
        "(`--set train.prompt_generation=false`, the SFT-only ablation) and compare both here with "
        "`genpi evaluate RUN`.",
        "",
    ]
    return lines


def _judge_section(summary: dict) -> list[str]:
    judge = summary.get("judge")
    lines = ["## LLM judge", ""]
    if not judge:
        return lines + ["Off (`evaluate.judge.enabled=true` turns it on; the teacher's model by default).", ""]
    lines += ["Rubric given to the judge (with the full prompt, the user's message and the reply):", "", "```",
              judge["rubric"], "```", "", "| variant | mean score (1-5) | scored | unreadable replies |", "|---|---|---|---|"]
    for name, s in judge["variants"].items():
        lines.append(f"| {name} | {_ratio(s['mean_score'])} | {s['scored']} | {s['unreadable']} |")
    return lines + [""]


def _worst_section(worst: pd.DataFrame | None) -> list[str]:
    lines = ["## Worst examples (lowest student score), teacher vs student", ""]
    if worst is None or worst.empty:
        return lines + ["None.", ""]
    lines += ["| # | input | teacher (score) | student (score) | student failed | ROUGE-L vs teacher |", "|---|---|---|---|---|---|"]
    for row in worst.itertuples():
        failed = ", ".join(f"`{c}`" for c in json.loads(row.student_failed)) or "none"
        lines.append(f"| {row.rank} | {_cell(row.input, 100)} | {_cell(row.teacher_output)} ({_pct(row.teacher_score)}) "
                     f"| {_cell(row.student_output)} ({_pct(row.student_score)}) | {failed} | {row.agreement_rouge_l:.2f} |")
    return lines + [""]


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("compliance", "format", "facts")
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    width = 0.26
    for i, variant in enumerate(VARIANTS):
        s = summary["variants"][variant]
        values = [s[m] or 0.0 for m in metrics]
        xs = [x + (i - 1) * width for x in range(len(metrics))]
        ax.bar(xs, values, width, label=variant)
        ci = s.get("compliance_ci")
        if ci:
            ax.errorbar([xs[0]], [values[0]], yerr=[[values[0] - ci[0]], [ci[1] - values[0]]], fmt="none", ecolor="black",
                        capsize=3)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of held-out replies")
    ax.set_title("Base vs teacher (prompt) vs student (adapter, no prompt)")
    ax.legend()
    atomic_save_figure(fig, path)


def _plot_checks(per_check: pd.DataFrame, path: Path) -> None:
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


def run_evaluate(
    spec: PromptSpec,
    version: str,
    model: ModelConfig,
    backend_cfg: BackendConfig,
    cfg: EvalConfig,
    test_path: Path,
    adapter_dir: Path,
    out_dir: Path,
    train_metrics: dict | None = None,
) -> dict:
    test = read_table(test_path, HeldOutSchema)
    if cfg.max_examples is not None:
        test = test.head(cfg.max_examples)
    contexts = [user_turn(t) for t in test["input"]]
    episodes_test = test.head(cfg.multi_turn.max_inputs)
    prompt_text = pg_target(spec.prompt)  # what prompt generation trains the adapter to write out

    def teacher_view(c):
        return with_prompt(spec.prompt, c)

    frames, leaks, episodes = [], [], []
    base = make_backend(model, backend_cfg)
    try:
        for variant, view in (("base", without_prompt), ("teacher", teacher_view)):
            completions = base.generate([view(c) for c in contexts], cfg.sampling, desc=f"eval {variant}")
            frames.append(_score_rows(spec, variant, test, completions))
        if cfg.leakage.enabled:
            leaks.append(_leakage(base, "base", cfg, prompt_text))
        if cfg.multi_turn.enabled:
            episodes.append(run_episodes(spec, "teacher", episodes_test, base, teacher_view, base, cfg.sampling,
                                         cfg.multi_turn.environment, cfg.multi_turn.turns))
        else:  # nothing else needs the base model: free it before the student loads
            base.close()
            base = None
        student = make_backend(model, backend_cfg, adapter=adapter_dir, merge_adapter=cfg.merge_adapter)
        try:
            completions = student.generate([without_prompt(c) for c in contexts], cfg.sampling, desc="eval student")
            frames.append(_score_rows(spec, "student", test, completions))
            if cfg.leakage.enabled:
                leaks.append(_leakage(student, "student", cfg, prompt_text))
            if cfg.multi_turn.enabled:  # the base model plays the environment, as in synthesis
                episodes.append(run_episodes(spec, "student", episodes_test, student, without_prompt, base, cfg.sampling,
                                             cfg.multi_turn.environment, cfg.multi_turn.turns))
        finally:
            student.close()
    finally:
        if base is not None:
            base.close()
    results = with_agreement(pd.concat(frames, ignore_index=True))
    leakage = pd.concat(leaks, ignore_index=True) if leaks else _empty(LeakageSchema)
    multi_turn = pd.concat(episodes, ignore_index=True) if episodes else _empty(MultiTurnSchema)
    judge = _judge(spec, model, backend_cfg, cfg, results) if cfg.judge.enabled else _empty(JudgeSchema)

    write_table(results, EvalResultsSchema, out_dir / EVAL_RESULTS_FILE)
    write_table(leakage, LeakageSchema, out_dir / LEAKAGE_FILE)
    write_table(multi_turn, MultiTurnSchema, out_dir / MULTI_TURN_FILE)
    write_table(judge, JudgeSchema, out_dir / JUDGE_FILE)
    summary = summarize(results, cfg, leakage, multi_turn, judge)
    summary.update({"name": spec.name, "version": version})
    per_check = per_check_table(results)
    worst = worst_examples(results, cfg.worst_examples)
    write_table(variants_table(summary), VariantsSchema, out_dir / VARIANTS_FILE)
    write_table(per_check, PerCheckSchema, out_dir / PER_CHECK_FILE)
    write_table(worst, WorstExamplesSchema, out_dir / WORST_EXAMPLES_FILE)
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    atomic_write_text(out_dir / REPORT_FILE,
                      render_report(spec, version, summary, results, train_metrics, per_check, worst, leakage))
    _plot(summary, out_dir / PLOT_FILE)
    _plot_checks(per_check, out_dir / CHECKS_PLOT_FILE)
    return summary


def _leakage(engine, variant: str, cfg: EvalConfig, prompt_text: str) -> pd.DataFrame:
    questions = list(cfg.leakage.questions)
    completions = engine.generate(extraction_conversations(questions), cfg.leakage.sampling, desc=f"leakage {variant}")
    return score_leakage(variant, questions, completions, prompt_text)


def _judge(spec: PromptSpec, model: ModelConfig, backend_cfg: BackendConfig, cfg: EvalConfig,
           results: pd.DataFrame) -> pd.DataFrame:
    """Grade every reply with the judge (the pipeline's model unless evaluate.judge names another)."""
    engine = make_backend(cfg.judge.model or model, cfg.judge.backend or backend_cfg)
    try:
        requests = [judge_messages(spec.prompt, r.input, r.output) for r in results.itertuples()]
        completions = engine.generate(requests, cfg.judge.sampling, desc="judge")
    finally:
        engine.close()
    return score_judgements(results["variant"].tolist(), results["example_id"].tolist(), completions)

"""Stage 5: evaluate on held-out inputs. Reads: test.parquet, the adapter.
Writes: eval_results.parquet (one row per variant x example), summary.json, report.md, compliance.png.

Variants: base = model without the prompt; teacher = model with the prompt; student = model +
adapter without the prompt. Compliance of a variant = the mean, over held-out replies, of the share
of that reply's checks (global rules + its per-input facts) that pass; a partial-credit score, so a
reply that gets the format right but misses a fact still counts for something. Also reported:
all-checks-pass rate, format (global checks only) and facts. Headline: recovery =
(student - base) / (teacher - base) of compliance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from genpi_core.chat import user_turn, with_prompt, without_prompt
from genpi_core.checks import run_checks
from genpi_core.generation.base import make_backend
from genpi_core.store import atomic_save_figure, atomic_write_json, atomic_write_text
from genpi_core.tables import read_table, write_table
from schemas.config import BackendConfig, EvalConfig, ModelConfig
from schemas.datasets import EVAL_RESULTS_FILE, EvalResultsSchema, HeldOutSchema
from schemas.spec import PromptSpec

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
PLOT_FILE = "compliance.png"
VARIANTS = ("base", "teacher", "student")


def recovery(student: float, base: float, teacher: float) -> float | None:
    """(student - base) / (teacher - base); None when the prompt changes nothing (teacher == base)."""
    gap = teacher - base
    return None if abs(gap) < 1e-12 else (student - base) / gap


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


def summarize(results: pd.DataFrame) -> dict:
    per_variant = {}
    for variant, part in results.groupby("variant"):
        checks = pd.DataFrame([json.loads(c) for c in part["checks"]])
        per_variant[variant] = {
            "n": int(len(part)),
            "compliance": float(part["score"].mean()),
            "all_checks": float(part["passed_all"].mean()),
            "format": float(part["global_passed"].mean()),
            "facts": float(part["facts_passed"].dropna().mean()) if part["facts_passed"].notna().any() else None,
            "per_check": {c: float(checks[c].dropna().mean()) for c in checks.columns if not c.startswith("fact:")},
            "mean_prompt_tokens": float(part["prompt_tokens"].mean()),
            "mean_latency_s": float(part["latency_s"].mean()),
        }
    summary = {"variants": per_variant}
    if all(v in per_variant for v in VARIANTS):
        for metric in ("compliance", "format", "facts"):
            b, t, s = (per_variant[v][metric] for v in VARIANTS)
            summary[f"recovery_{metric}"] = None if None in (b, t, s) else recovery(s, b, t)
        summary["recovery"] = summary["recovery_compliance"]
        saved = per_variant["teacher"]["mean_prompt_tokens"] - per_variant["student"]["mean_prompt_tokens"]
        summary["prefill_tokens_saved_per_request"] = saved
    return summary


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def render_report(spec: PromptSpec, version: str, summary: dict, results: pd.DataFrame, train_metrics: dict | None) -> str:
    v = summary["variants"]
    lines = [
        f"# genpi report: `{spec.name}` (version {version[:12]})",
        "",
        f"Held-out inputs: {v['teacher']['n']} (never trained on). Greedy decoding.",
        "",
        "| variant | what it is | compliance | all checks pass | format (global checks) | facts | prompt tokens / request | latency / reply (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    meaning = {"base": "model, no prompt", "teacher": "model + full prompt", "student": "model + adapter, no prompt"}
    for name in VARIANTS:
        s = v[name]
        lines.append(
            f"| {name} | {meaning[name]} | {_pct(s['compliance'])} | {_pct(s['all_checks'])} | {_pct(s['format'])} | {_pct(s['facts'])} "
            f"| {s['mean_prompt_tokens']:.0f} | {s['mean_latency_s']:.2f} |"
        )
    lines += [
        "",
        f"**Recovery** (student - base) / (teacher - base) of compliance: **{_ratio(summary.get('recovery'))}**"
        f" (format: {_ratio(summary.get('recovery_format'))}, facts: {_ratio(summary.get('recovery_facts'))}).",
        f"Prefill tokens saved per request: {summary['prefill_tokens_saved_per_request']:.0f}.",
        "",
        "Compliance = mean share of checks passed per reply (global checks + the reply's facts).",
        "",
        "## Pass rate per global check",
        "",
        "| check | " + " | ".join(VARIANTS) + " |",
        "|---|" + "---|" * len(VARIANTS),
    ]
    for check in v["teacher"]["per_check"]:
        lines.append(f"| `{check}` | " + " | ".join(_pct(v[n]["per_check"].get(check)) for n in VARIANTS) + " |")
    if train_metrics:
        lines += ["", "## Training", "", "```json", json.dumps(train_metrics, indent=2), "```"]
    lines += ["", "## Sample replies", ""]
    for example_id in results["example_id"].drop_duplicates().head(3):
        part = results[results["example_id"] == example_id].set_index("variant")
        lines.append(f"**Input:** {part['input'].iloc[0]}")
        lines.append("")
        for name in VARIANTS:
            text = part.loc[name, "output"].replace("\n", " / ")[:240]
            lines.append(f"- *{name}*: {text}")
        lines.append("")
    lines += [f"Plot: `{PLOT_FILE}`. Per-example results: `{EVAL_RESULTS_FILE}`.", ""]
    return "\n".join(lines)


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("compliance", "format", "facts")
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    width = 0.26
    for i, variant in enumerate(VARIANTS):
        values = [summary["variants"][variant][m] or 0.0 for m in metrics]
        ax.bar([x + (i - 1) * width for x in range(len(metrics))], values, width, label=variant)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of held-out replies")
    ax.set_title("Base vs teacher (prompt) vs student (adapter, no prompt)")
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
    frames = []
    engine = make_backend(model, backend_cfg)
    try:
        for variant, view in (("base", without_prompt), ("teacher", lambda c: with_prompt(spec.prompt, c))):
            completions = engine.generate([view(c) for c in contexts], cfg.sampling, desc=f"eval {variant}")
            frames.append(_score_rows(spec, variant, test, completions))
    finally:
        engine.close()
    student = make_backend(model, backend_cfg, adapter=adapter_dir, merge_adapter=cfg.merge_adapter)
    try:
        completions = student.generate([without_prompt(c) for c in contexts], cfg.sampling, desc="eval student")
        frames.append(_score_rows(spec, "student", test, completions))
    finally:
        student.close()
    results = pd.concat(frames, ignore_index=True)
    write_table(results, EvalResultsSchema, out_dir / EVAL_RESULTS_FILE)
    summary = summarize(results)
    summary.update({"name": spec.name, "version": version})
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    atomic_write_text(out_dir / REPORT_FILE, render_report(spec, version, summary, results, train_metrics))
    _plot(summary, out_dir / PLOT_FILE)
    return summary

"""Every number of an evaluation, from the per-reply results: the summary and the tables the report shows.

Pure functions of the results tables (no model, no disk), so they are unit-tested on literal frames.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from genpi_core.evaluate.bootstrap import paired_bootstrap, recovery
from genpi_core.evaluate.collapse import (
    MAX_SIMILARITY_GAP,
    MIN_DISTINCT_SHARE,
    collapse_verdict,
    distinct_share,
)
from genpi_core.evaluate.judge import RUBRIC
from genpi_core.evaluate.leakage import summarize_leakage
from genpi_core.evaluate.multiturn import summarize_episodes
from schemas.config import EvaluateConfig
from schemas.datasets import WorstExamplesSchema
from schemas.summary import EvaluationSummary

VARIANTS = ("base", "teacher", "student")
RE_PROMPTED = "student_with_prompt"  # the student given the prompt anyway (evaluate.student_with_prompt)
# Part of the evaluate stage's key: bump it when the scoring or summary.json changes, so finished evaluations are
# recomputed instead of reused with numbers (or a summary.json) of the older metrics. 2 = strict success.
METRICS_VERSION = 2
TASK_CHECK_PREFIX = "fact:"  # run_checks names an input's own checks fact:<i>; global checks are <i>:<type>
MAX_TEACHER_CUT_SHARE = 0.05  # the eval token cap must leave at most this share of teacher replies cut


def is_task_check(name: str) -> bool:
    """True for a check of one input (its facts), False for a global check of the spec."""
    return name.startswith(TASK_CHECK_PREFIX)


def empty_table(schema) -> pd.DataFrame:
    return pd.DataFrame(columns=list(schema.to_schema().columns))


def _mean_or_none(series: pd.Series) -> float | None:
    series = series.dropna()
    return float(series.mean()) if len(series) else None


def _paired(results: pd.DataFrame, column: str, cfg: EvaluateConfig, inputs: pd.Index | None = None) -> dict:
    """Paired bootstrap of one per-reply column over the held-out inputs (optionally only ``inputs``)."""
    paired = results.pivot(index="example_id", columns="variant", values=column).sort_index()
    if inputs is not None:
        paired = paired.loc[paired.index.isin(inputs)]
    return paired_bootstrap(
        {v: paired[v].astype(float).to_numpy() for v in paired.columns},
        cfg.bootstrap_resamples,
        cfg.bootstrap_seed,
        cfg.confidence_level,
    )


def uninformative_checks(results: pd.DataFrame) -> list[str]:
    """Global checks that every variant (base included) passes on every reply: they cannot tell the variants apart."""
    checks = pd.DataFrame([json.loads(c) for c in results["checks"]], index=results.index)
    names = [c for c in checks.columns if not is_task_check(c)]
    return [c for c in names if checks[c].notna().any() and bool(checks[c].dropna().astype(bool).all())]


def summarize(
    results: pd.DataFrame,
    cfg: EvaluateConfig | None = None,
    leakage: pd.DataFrame | None = None,
    multi_turn: pd.DataFrame | None = None,
    judge: pd.DataFrame | None = None,
) -> EvaluationSummary:
    """Every number the report shows, as one typed record (summary.json); the evaluate stage adds name and version."""
    cfg = cfg or EvaluateConfig()
    per_variant: dict[str, dict[str, Any]] = {}
    for variant, part in results.groupby("variant"):
        checks = pd.DataFrame([json.loads(c) for c in part["checks"]])
        task = part["task_passed"].dropna()
        per_variant[variant] = {
            "n": int(len(part)),
            "strict_success": float(part["strict_success"].astype(bool).mean()),
            "format": float(part["global_passed"].astype(bool).mean()),
            "task": float(task.astype(bool).mean()) if len(task) else None,
            "task_n": int(len(task)),
            "cut": int(part["cut"].astype(bool).sum()),
            "distinct_share": distinct_share(part["output"].tolist()),
            "example_similarity": _mean_or_none(part["example_similarity"].astype(float)),
            "compliance": float(part["score"].mean()),
            "all_checks": float(part["passed_all"].mean()),
            "facts": _mean_or_none(part["facts_passed"]),
            "per_check": {c: float(checks[c].dropna().mean()) for c in checks.columns if not is_task_check(c)},
            "agreement": {
                "exact": float(part["agreement_exact"].mean()),
                "normalized": float(part["agreement_normalized"].mean()),
                "rouge_l": float(part["agreement_rouge_l"].mean()),
            },
            "mean_prompt_tokens": float(part["prompt_tokens"].mean()),
            "mean_latency_s": float(part["latency_s"].mean()),
        }
    with_task = pd.Index(results.loc[results["task_passed"].notna(), "example_id"].unique())
    boots = {
        "strict_success": _paired(results, "strict_success", cfg),
        "format": _paired(results, "global_passed", cfg),
        "task": _paired(results, "task_passed", cfg, with_task),
        "compliance": _paired(results, "score", cfg),
    }
    for metric, boot in boots.items():
        for variant, ci in boot["variants"].items():
            per_variant[variant][f"{metric}_ci"] = ci
    strict = boots["strict_success"]
    summary: dict = {
        "variants": per_variant,
        "bootstrap": {k: strict[k] for k in ("resamples", "seed", "level", "recovery_undefined")},
        "max_new_tokens": cfg.sampling.max_new_tokens,
        "uninformative_checks": uninformative_checks(results),
    }
    if "teacher" in per_variant:
        share = per_variant["teacher"]["cut"] / per_variant["teacher"]["n"]
        summary["teacher_cut_share"] = share
        summary["teacher_cut_share_ok"] = share <= MAX_TEACHER_CUT_SHARE
    if all(v in per_variant for v in VARIANTS):
        for metric in ("strict_success", "format", "task", "compliance", "facts"):
            b, t, s = (per_variant[v][metric] for v in VARIANTS)
            name = "strict" if metric == "strict_success" else metric
            summary[f"recovery_{name}"] = None if None in (b, t, s) else recovery(s, b, t)
            if metric in boots:
                summary[f"recovery_{name}_ci"] = boots[metric]["recovery"]
        summary["recovery"] = summary["recovery_strict"]
        summary["recovery_ci"] = summary["recovery_strict_ci"]
        saved = per_variant["teacher"]["mean_prompt_tokens"] - per_variant["student"]["mean_prompt_tokens"]
        summary["prefill_tokens_saved_per_request"] = saved
    if "student" in per_variant and "teacher" in per_variant:
        student, teacher = per_variant["student"], per_variant["teacher"]
        collapsed, reasons = collapse_verdict(
            student["distinct_share"], student["example_similarity"], teacher["example_similarity"]
        )
        summary["collapse"] = {
            "collapsed": collapsed,
            "reasons": reasons,
            "distinct_share": student["distinct_share"],
            "example_similarity": student["example_similarity"],
            "teacher_example_similarity": teacher["example_similarity"],
            "min_distinct_share": MIN_DISTINCT_SHARE,
            "max_similarity_gap": MAX_SIMILARITY_GAP,
        }
    if RE_PROMPTED in per_variant and "teacher" in per_variant:
        summary["re_prompt"] = _re_prompt(results, per_variant, cfg)
    if leakage is not None and len(leakage):
        summary["leakage"] = summarize_leakage(leakage)
        summary["leakage_max_new_tokens"] = cfg.leakage.sampling.max_new_tokens
    if multi_turn is not None and len(multi_turn):
        summary["multi_turn"] = summarize_episodes(multi_turn)
    if judge is not None and len(judge):
        summary["judge"] = {
            "rubric": RUBRIC,
            "variants": {
                v: {
                    "mean_score": _mean_or_none(part["score"]),
                    "scored": int(part["score"].notna().sum()),
                    "unreadable": int(part["score"].isna().sum()),
                }
                for v, part in judge.groupby("variant")
            },
        }
    return EvaluationSummary.model_validate(summary)


def _re_prompt(results: pd.DataFrame, per_variant: dict, cfg: EvaluateConfig) -> dict:
    """Re-prompted student vs teacher in strict success, with a paired interval of the difference."""
    paired = results.pivot(index="example_id", columns="variant", values="strict_success").sort_index()
    gaps = paired[RE_PROMPTED].astype(float) - paired["teacher"].astype(float)
    boot = paired_bootstrap(
        {"difference": gaps.to_numpy()}, cfg.bootstrap_resamples, cfg.bootstrap_seed, cfg.confidence_level, None
    )
    ours, theirs = per_variant[RE_PROMPTED]["strict_success"], per_variant["teacher"]["strict_success"]
    difference = ours - theirs
    return {
        "strict_success": ours,
        "teacher_strict_success": theirs,
        "difference": difference,
        "difference_ci": boot["variants"].get("difference"),
        "at_least_teacher": difference >= 0,
        "drop": max(0.0, -difference),
    }


def variants_table(summary: EvaluationSummary) -> pd.DataFrame:
    """The report's main table as rows (variants.parquet)."""
    rows = []
    for name, s in summary.variants.items():
        ci = s.compliance_ci or (None, None)
        strict_ci, format_ci, task_ci = (c or (None, None) for c in (s.strict_success_ci, s.format_ci, s.task_ci))
        leak = (summary.leakage or {}).get(name)
        turns = (summary.multi_turn or {}).get(name)
        judged = summary.judge.variants.get(name) if summary.judge else None
        rows.append(
            {
                "variant": name,
                "n": s.n,
                "strict_success": s.strict_success,
                "strict_success_low": strict_ci[0],
                "strict_success_high": strict_ci[1],
                "format_low": format_ci[0],
                "format_high": format_ci[1],
                "task": s.task,
                "task_low": task_ci[0],
                "task_high": task_ci[1],
                "task_n": s.task_n,
                "cut": s.cut,
                "distinct_share": s.distinct_share,
                "example_similarity": s.example_similarity,
                "compliance": s.compliance,
                "compliance_low": ci[0],
                "compliance_high": ci[1],
                "all_checks": s.all_checks,
                "format": s.format,
                "facts": s.facts,
                "agreement_exact": s.agreement.exact,
                "agreement_normalized": s.agreement.normalized,
                "agreement_rouge_l": s.agreement.rouge_l,
                "judge_score": judged.mean_score if judged else None,
                "multi_turn_compliance": turns.compliance if turns else None,
                "leak_max_lcs_share": leak.max_lcs_share if leak else None,
                "leak_max_rouge_l_recall": leak.max_rouge_l_recall if leak else None,
                "mean_prompt_tokens": s.mean_prompt_tokens,
                "mean_latency_s": s.mean_latency_s,
            }
        )
    order = {v: i for i, v in enumerate((*VARIANTS, RE_PROMPTED))}
    return pd.DataFrame(rows).sort_values("variant", key=lambda c: c.map(order)).reset_index(drop=True)


def per_check_table(results: pd.DataFrame) -> pd.DataFrame:
    """Pass rate of every global check, and of the per-input facts taken together, per variant."""
    rows = []
    for variant, part in results.groupby("variant"):
        checks = pd.DataFrame([json.loads(c) for c in part["checks"]], index=part.index)
        for name in [c for c in checks.columns if not is_task_check(c)]:
            values = checks[name].dropna()
            rows.append(
                {
                    "check_name": name,
                    "variant": variant,
                    "pass_rate": float(values.mean()) if len(values) else None,
                    "n": int(len(values)),
                }
            )
        facts = pd.Series(checks[[c for c in checks.columns if is_task_check(c)]].to_numpy().ravel()).dropna()
        rows.append(
            {
                "check_name": "facts",
                "variant": variant,
                "pass_rate": float(facts.astype(float).mean()) if len(facts) else None,
                "n": int(len(facts)),
            }
        )
    return pd.DataFrame(rows, columns=["check_name", "variant", "pass_rate", "n"])


def worst_examples(results: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k held-out inputs where the student does worst: failed strict success first, then the lowest share of
    checks passed (ties: least like the teacher first)."""
    student = results[results["variant"] == "student"].set_index("example_id")
    teacher = results[results["variant"] == "teacher"].set_index("example_id")
    if k == 0 or student.empty or teacher.empty:
        return empty_table(WorstExamplesSchema)
    ranked = student.sort_values(["strict_success", "score", "agreement_rouge_l"], kind="stable").head(k)
    rows = []
    for rank, (example_id, s) in enumerate(ranked.iterrows(), start=1):
        failed = [name for name, ok in json.loads(s["checks"]).items() if not ok]
        rows.append(
            {
                "rank": rank,
                "example_id": example_id,
                "input": s["input"],
                "teacher_output": teacher.loc[example_id, "output"],
                "student_output": s["output"],
                "teacher_score": float(teacher.loc[example_id, "score"]),
                "student_score": float(s["score"]),
                "agreement_rouge_l": float(s["agreement_rouge_l"]),
                "student_failed": json.dumps(failed),
            }
        )
    return pd.DataFrame(rows)

"""Every number of an evaluation, from the per-reply results: the summary and the tables the report shows.

Pure functions of the results tables (no model, no disk), so they are unit-tested on literal frames.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from genpi_core.evaluate.bootstrap import paired_bootstrap, recovery
from genpi_core.evaluate.judge import RUBRIC
from genpi_core.evaluate.leakage import summarize_leakage
from genpi_core.evaluate.multiturn import summarize_episodes
from schemas.config import EvaluateConfig
from schemas.datasets import WorstExamplesSchema
from schemas.summary import EvaluationSummary

VARIANTS = ("base", "teacher", "student")


def empty_table(schema) -> pd.DataFrame:
    return pd.DataFrame(columns=list(schema.to_schema().columns))


def _mean_or_none(series: pd.Series) -> float | None:
    series = series.dropna()
    return float(series.mean()) if len(series) else None


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
        per_variant[variant] = {
            "n": int(len(part)),
            "compliance": float(part["score"].mean()),
            "all_checks": float(part["passed_all"].mean()),
            "format": float(part["global_passed"].mean()),
            "facts": _mean_or_none(part["facts_passed"]),
            "per_check": {c: float(checks[c].dropna().mean()) for c in checks.columns if not c.startswith("fact:")},
            "agreement": {
                "exact": float(part["agreement_exact"].mean()),
                "normalized": float(part["agreement_normalized"].mean()),
                "rouge_l": float(part["agreement_rouge_l"].mean()),
            },
            "mean_prompt_tokens": float(part["prompt_tokens"].mean()),
            "mean_latency_s": float(part["latency_s"].mean()),
        }
    paired = results.pivot(index="example_id", columns="variant", values="score").sort_index()
    boot = paired_bootstrap(
        {v: paired[v].to_numpy() for v in paired.columns},
        cfg.bootstrap_resamples,
        cfg.bootstrap_seed,
        cfg.confidence_level,
    )
    for variant, ci in boot["variants"].items():
        per_variant[variant]["compliance_ci"] = ci
    summary: dict = {
        "variants": per_variant,
        "bootstrap": {k: boot[k] for k in ("resamples", "seed", "level", "recovery_undefined")},
    }
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


def variants_table(summary: EvaluationSummary) -> pd.DataFrame:
    """The report's main table as rows (variants.parquet)."""
    rows = []
    for name, s in summary.variants.items():
        ci = s.compliance_ci or (None, None)
        leak = (summary.leakage or {}).get(name)
        turns = (summary.multi_turn or {}).get(name)
        judged = summary.judge.variants.get(name) if summary.judge else None
        rows.append(
            {
                "variant": name,
                "n": s.n,
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
    order = {v: i for i, v in enumerate(VARIANTS)}
    return pd.DataFrame(rows).sort_values("variant", key=lambda c: c.map(order)).reset_index(drop=True)


def per_check_table(results: pd.DataFrame) -> pd.DataFrame:
    """Pass rate of every global check, and of the per-input facts taken together, per variant."""
    rows = []
    for variant, part in results.groupby("variant"):
        checks = pd.DataFrame([json.loads(c) for c in part["checks"]], index=part.index)
        for name in [c for c in checks.columns if not c.startswith("fact:")]:
            values = checks[name].dropna()
            rows.append(
                {
                    "check_name": name,
                    "variant": variant,
                    "pass_rate": float(values.mean()) if len(values) else None,
                    "n": int(len(values)),
                }
            )
        facts = pd.Series(checks[[c for c in checks.columns if c.startswith("fact:")]].to_numpy().ravel()).dropna()
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
    """The k held-out inputs where the student scores lowest (ties: least like the teacher first)."""
    student = results[results["variant"] == "student"].set_index("example_id")
    teacher = results[results["variant"] == "teacher"].set_index("example_id")
    if k == 0 or student.empty or teacher.empty:
        return empty_table(WorstExamplesSchema)
    ranked = student.sort_values(["score", "agreement_rouge_l"], kind="stable").head(k)
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

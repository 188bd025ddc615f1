"""The safety nets of an incremental run, checked after its full held-out evaluation.

The warm-started student is kept only if it clears the promotion gate and is not worse than its parent: the
paired-bootstrap lower bound of (incremental - parent) strict success, over the held-out inputs both versions
were evaluated on, must stay above ``incremental.min_paired_lower`` (-0.10). Otherwise a full run replaces it
and the plan records which net tripped, with the numbers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from genpi_core.evaluate.bootstrap import mean_ci
from genpi_core.promote import decide
from schemas.artifacts import EVAL_RESULTS_FILE
from schemas.config import PipelineConfig
from schemas.stages import IncrementalPlan, StageOutput
from schemas.summary import EvaluationSummary


def paired_difference(parent_results: Path, results: Path, resamples: int, level: float) -> dict:
    """Mean and interval of (this - parent) student strict success, paired by held-out input."""
    old, new = (pd.read_parquet(p, columns=["variant", "input", "strict_success"]) for p in (parent_results, results))
    old, new = (d[d["variant"] == "student"].set_index("input")["strict_success"].astype(float) for d in (old, new))
    both = new.index.intersection(old.index)
    diff = (new.loc[both] - old.loc[both]).to_numpy()
    ci = mean_ci(diff, resamples=resamples, level=level)
    return {
        "paired_inputs": int(len(both)),
        "difference": float(diff.mean()) if len(diff) else None,
        "difference_ci": list(ci) if ci else None,
        "parent_student": float(old.loc[both].mean()) if len(both) else None,
        "student": float(new.loc[both].mean()) if len(both) else None,
    }


def safety_verdict(plan: IncrementalPlan, evaluated: StageOutput, cfg: PipelineConfig) -> tuple[str | None, dict]:
    """(why a full run must replace the warm-started student, or None; the numbers behind the verdict)."""
    summary = EvaluationSummary.load(evaluated.path("summary"))
    passes, reasons = decide(summary, cfg.promote)
    numbers = {"strict_recovery": summary.recovery, "strict_recovery_ci": summary.recovery_ci, "gate": reasons}
    if not passes:
        return f"the warm-started student misses the promotion gate ({'; '.join(reasons)})", numbers
    assert plan.parent_run_dir is not None
    paired = paired_difference(
        Path(plan.parent_run_dir) / "evaluate" / EVAL_RESULTS_FILE,
        evaluated.path("results"),
        cfg.evaluate.bootstrap_resamples,
        cfg.evaluate.confidence_level,
    )
    numbers |= paired
    low = paired["difference_ci"][0] if paired["difference_ci"] else None
    if low is not None and low < cfg.incremental.min_paired_lower:
        return (
            f"strict success fell against the parent: (incremental - parent) {paired['difference']:+.2f}, "
            f"95% lower bound {low:+.2f} < incremental.min_paired_lower={cfg.incremental.min_paired_lower:+.2f}",
            numbers,
        )
    return None, numbers

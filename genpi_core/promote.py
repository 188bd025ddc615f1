"""Promotion gate: after evaluation, an adapter is marked ``promoted`` for its prompt only if it clears
the configured quality bar (``promote.*``).

Reads: ``<run>/evaluate/summary.json``. Writes: ``<run>/promote/decision.json`` (the gate's verdict,
kept as a stage with a manifest, so a re-run of a finished version decides nothing again) and, when
the adapter passes, ``<runs_dir>/<name>/promoted.json``: the one promoted version of that prompt,
replaced atomically, so a reader always sees a whole pointer (old or new), never a mix.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from genpi_core.store.stage import Stage, atomic_write_json, tree_sha256
from schemas.artifacts import DECISION_FILE, LINEAGE_FILE, MANIFEST, PROMOTED_FILE, SUMMARY_FILE
from schemas.config import PromoteConfig
from schemas.summary import EvaluationSummary


class AdapterRow(BaseModel):
    """One adapter version of a prompt, as `genpi adapters` lists it: strict success of each variant and
    strict-success recovery (the headline), beside them compliance and the collapse flag."""

    name: str
    version12: str
    run_dir: str
    finished_at: str | None = None
    student: float | None = None
    teacher: float | None = None
    base: float | None = None
    recovery: float | None = None
    recovery_format: float | None = None
    recovery_task: float | None = None
    student_compliance: float | None = None
    collapsed: bool | None = None
    gate: str = "not evaluated"  # passed | failed | not gated | not evaluated
    promoted: bool = False
    parent_version12: str | None = None  # the version this one descends from (ingest/lineage.json)
    lines_changed: int | None = None  # lines added + removed in the prompt since the parent
    build: str | None = None  # "full", "incremental", or "fell back" (an incremental build a full run replaced)


def _metrics(summary: EvaluationSummary) -> dict:
    def strict(variant: str) -> float | None:
        metrics = summary.variants.get(variant)
        return metrics.strict_success if metrics else None

    student = summary.variants.get("student")
    return {
        "student": strict("student"),
        "teacher": strict("teacher"),
        "base": strict("base"),
        "recovery": summary.recovery,  # strict-success recovery: what min_recovery gates
        "recovery_format": summary.recovery_format,
        "recovery_task": summary.recovery_task,
        "student_compliance": student.compliance if student else None,
        "collapsed": summary.collapse.collapsed if summary.collapse else None,
    }


def decide(summary: EvaluationSummary, cfg: PromoteConfig) -> tuple[bool, list[str]]:
    """(passes, reasons): every configured bar must be met; a missing metric fails its bar.

    ``min_recovery`` gates strict-success recovery; ``min_student_compliance`` the student's compliance."""
    metrics = _metrics(summary)
    verdicts: list[tuple[bool, str]] = []
    bars = {"recovery": cfg.min_recovery, "student_compliance": cfg.min_student_compliance}
    for metric, bar in bars.items():
        if bar is None:
            continue
        value = metrics[metric]
        label = "strict-success recovery" if metric == "recovery" else "student compliance"
        if value is None:
            verdicts.append((False, f"{label} is undefined (bar {bar})"))
        else:
            verdicts.append((value >= bar, f"{label} {value:.3f} {'>=' if value >= bar else '<'} {bar}"))
    passes = all(ok for ok, _ in verdicts)
    reasons = [text for _, text in verdicts]
    return passes, reasons


def verify_adapter(adapter_path: Path) -> str:
    """The adapter's hash, checked against the one its training stage recorded when it finished: bytes that
    changed on disk since (a bad disk, a hand edit, a half-copied folder) are never promoted or served."""
    adapter_path = Path(adapter_path)
    train = Stage(adapter_path.parent.parent, adapter_path.parent.name, {}, {})
    recorded = train.manifest().outputs.get(adapter_path.name) if train.manifest_path.is_file() else None
    if recorded is None:
        raise ValueError(f"{adapter_path}: no finished training recorded it ({train.manifest_path} lists no adapter)")
    actual = tree_sha256(adapter_path) if adapter_path.exists() else "missing"
    if actual != recorded:
        raise ValueError(
            f"{adapter_path}: the adapter on disk does not match the hash its training recorded in "
            f"{train.manifest_path} (damaged or edited since); refusing it. Re-run the pipeline to retrain it"
        )
    return actual


def run_promote(
    name: str, version: str, summary_path: Path, adapter_path: Path, cfg: PromoteConfig, out_dir: Path
) -> dict:
    """Decide, write the decision, and point ``promoted.json`` at this adapter when it passes."""
    adapter_sha256 = verify_adapter(adapter_path)
    summary = EvaluationSummary.load(summary_path)
    passes, reasons = decide(summary, cfg)
    now = datetime.now(timezone.utc).isoformat()
    decision = {
        "name": name,
        "version": version,
        "promoted": passes,
        "reasons": reasons,
        "bar": cfg.model_dump(),
        "metrics": _metrics(summary),
        "adapter": str(adapter_path),
        "decided_at": now,
    }
    atomic_write_json(Path(out_dir) / DECISION_FILE, decision)
    if passes:
        run_dir = Path(out_dir).parent
        atomic_write_json(
            run_dir.parent / PROMOTED_FILE,
            {
                "name": name,
                "version": version,
                "version12": version[:12],
                "run_dir": str(run_dir),
                "adapter": str(adapter_path),
                "adapter_sha256": adapter_sha256,  # what a server checks before it loads the adapter
                "metrics": decision["metrics"],
                "promoted_at": now,
            },
        )
    return {"promoted": int(passes)}


def promoted(runs_dir: str | Path, name: str) -> dict | None:
    path = Path(runs_dir) / name / PROMOTED_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def list_adapters(runs_dir: str | Path, name: str | None = None) -> list[AdapterRow]:
    """Every run folder with an ingested prompt, its evaluation metrics, gate verdict and promotion."""
    from genpi_core.incremental.plan import read_plan

    runs_dir = Path(runs_dir)
    rows = []
    for prompt_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []:
        if name is not None and prompt_dir.name != name:
            continue
        pointer = promoted(runs_dir, prompt_dir.name)
        for run_dir in sorted(p for p in prompt_dir.iterdir() if (p / "ingest" / MANIFEST).is_file()):
            row = AdapterRow(name=prompt_dir.name, version12=run_dir.name, run_dir=str(run_dir))
            lineage = run_dir / "ingest" / LINEAGE_FILE
            if lineage.is_file():  # versions ingested before lineage was recorded have none
                record = json.loads(lineage.read_text())
                row.parent_version12 = record.get("parent_version12")
                diff = record.get("diff")
                row.lines_changed = diff["lines_added"] + diff["lines_removed"] if diff else None
            plan = read_plan(run_dir)  # how the version was built (genpi_core/incremental/plan.py)
            if plan:
                row.build = "fell back" if plan.get("outcome") == "fell back" else plan.get("mode")
            summary = run_dir / "evaluate" / SUMMARY_FILE
            if (run_dir / "evaluate" / MANIFEST).is_file() and summary.is_file():
                row = row.model_copy(update=_metrics(EvaluationSummary.load(summary)))
                row.finished_at = json.loads((run_dir / "evaluate" / MANIFEST).read_text())["finished_at"]
                row.gate = "not gated"
            decision = run_dir / "promote" / DECISION_FILE
            if (run_dir / "promote" / MANIFEST).is_file() and decision.is_file():
                row.gate = "passed" if json.loads(decision.read_text())["promoted"] else "failed"
            row.promoted = pointer is not None and pointer.get("version12") == run_dir.name
            rows.append(row)
    return sorted(rows, key=lambda r: (r.name, r.finished_at or ""))

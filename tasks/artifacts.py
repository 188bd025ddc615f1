"""Prefect artifacts for a finished run: the evaluation table, the report, the gate's verdict and a link to the
run folder, keyed per prompt (``genpi-<name>-...``) so the UI's Artifacts page shows each prompt's latest."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NONE

from schemas.stages import IngestOutput, StageOutput
from schemas.summary import EvaluationSummary


def _key(name: str, what: str) -> str:
    # artifact keys allow lowercase letters, digits and dashes only; spec names already are that
    return f"genpi-{name}-{what}".lower().replace("_", "-")


def _headline(summary: EvaluationSummary) -> str:
    """Strict success and its recovery first, format and task recovery beside it, and any warning."""

    def ratio(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}"

    ci = summary.recovery_ci
    student = summary.variants.get("student")
    text = (
        f"strict success {'n/a' if student is None else f'{100 * student.strict_success:.0f}%'} (student), "
        f"strict-success recovery {ratio(summary.recovery)}{f' [{ci[0]:.2f}, {ci[1]:.2f}]' if ci else ''} "
        f"(format {ratio(summary.recovery_format)}, task {ratio(summary.recovery_task)})"
    )
    if summary.collapse and summary.collapse.collapsed:
        text += "; WARNING: the student looks collapsed"
    if summary.teacher_cut_share_ok is False:
        text += "; WARNING: over 5% of teacher replies cut at the token cap"
    return text


@task(name="publish", cache_policy=NONE)
def publish_task(ingested: IngestOutput, evaluated: StageOutput, promoted: StageOutput | None = None) -> None:
    from genpi_core.incremental.plan import describe

    summary = EvaluationSummary.load(evaluated.path("summary"))
    version = ingested.version[:12]
    rows = [
        {
            "variant": variant,
            **{
                k: v
                for k, v in metrics.model_dump(mode="json").items()
                if isinstance(v, (int, float, str)) or v is None
            },
        }
        for variant, metrics in summary.variants.items()
    ]
    create_table_artifact(
        key=_key(ingested.name, "evaluation"),
        table=rows,
        description=f"{ingested.name} {version}: held-out metrics per variant; {_headline(summary)}",
    )
    report = evaluated.path("report").read_text(encoding="utf-8")
    verdict = ""
    if promoted is not None:
        decision = json.loads(promoted.path("decision").read_text(encoding="utf-8"))
        verdict = f"\n\n## Promotion\n\n**{'promoted' if decision['promoted'] else 'not promoted'}**: " + "; ".join(
            decision["reasons"] or ["no bar configured"]
        )
    run_dir = Path(ingested.run_dir).resolve()
    build = describe(run_dir)  # full, or incremental from the parent: each reuse decision and the outcome
    create_markdown_artifact(
        key=_key(ingested.name, "report"),
        markdown=report + verdict + (f"\n\n{build}" if build else ""),
        description=f"{ingested.name} {version}: evaluate/report.md (run folder {run_dir})",
    )
    create_link_artifact(
        key=_key(ingested.name, "run-folder"),
        link=run_dir.as_uri(),
        link_text=str(run_dir),
        description=f"{ingested.name} {version}: run folder (adapter in train/adapter)",
    )

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


@task(name="publish", cache_policy=NONE)
def publish_task(ingested: IngestOutput, evaluated: StageOutput, promoted: StageOutput | None = None) -> None:
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
        description=f"{ingested.name} {version}: held-out metrics per variant; recovery {summary.recovery}",
    )
    report = evaluated.path("report").read_text(encoding="utf-8")
    verdict = ""
    if promoted is not None:
        decision = json.loads(promoted.path("decision").read_text(encoding="utf-8"))
        verdict = f"\n\n## Promotion\n\n**{'promoted' if decision['promoted'] else 'not promoted'}**: " + "; ".join(
            decision["reasons"] or ["no bar configured"]
        )
    run_dir = Path(ingested.run_dir).resolve()
    create_markdown_artifact(
        key=_key(ingested.name, "report"),
        markdown=report + verdict,
        description=f"{ingested.name} {version}: evaluate/report.md (run folder {run_dir})",
    )
    create_link_artifact(
        key=_key(ingested.name, "run-folder"),
        link=run_dir.as_uri(),
        link_text=str(run_dir),
        description=f"{ingested.name} {version}: run folder (adapter in train/adapter)",
    )

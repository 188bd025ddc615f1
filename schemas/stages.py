"""What one stage hands to the next: small, serializable records of paths, never tables or models.

Prefect tasks pass these between each other (their inputs are hashed and persisted, so they stay small);
``genpi_core.pipeline`` builds them from the run store.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel


class StageOutput(BaseModel):
    """A finished stage: its folder, its named output files (``schemas.artifacts.*_OUTPUTS``) and row counts."""

    stage: str
    dir: str
    files: dict[str, str]
    rows: dict[str, int | float | None] = {}
    reused: bool = False

    def path(self, name: str) -> Path:
        return Path(self.files[name])


class IngestOutput(BaseModel):
    """An ingested prompt version: where its run folder and its normalized prompt record are."""

    name: str
    version: str
    prompt_tokens: int
    run_dir: str
    prompt_path: str


class IncrementalPlan(BaseModel):
    """How a new version is built: ``full`` (from nothing) or ``incremental`` from its parent's run, with the
    reason for each reuse decision (genpi_core/incremental/plan.py). Written to ``ingest``'s run folder as
    ``incremental.json``, so the report and the Prefect artifact show the same thing."""

    mode: str  # "full" | "incremental"
    why: str  # one line: why this mode
    parent_run_dir: str | None = None
    parent_version12: str | None = None
    chain_depth: int = 0  # warm starts in a row that led here (0: trained from zero)
    edit_inputs: int = 0  # new inputs to generate from the diff
    decisions: dict[str, str] = {}  # piece -> what is reused or regenerated, and why
    outcome: str | None = None  # after evaluation: "kept", or "fell back" to a full run
    fallback_reason: str | None = None  # which safety net tripped
    attempt: dict = {}  # the warm-started student's numbers, kept when a full run replaces it

    @property
    def incremental(self) -> bool:
        return self.mode == "incremental"

    def active(self) -> IncrementalPlan | None:
        """The plan to build with: incremental and not replaced by a full run yet; else None (a full build)."""
        return self if self.incremental and self.outcome != "fell back" else None

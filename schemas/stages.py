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

"""What an incremental run takes over from its parent's run, stage by stage.

- Inputs: every parent input (still a valid request), plus new ones written by the generator from the diff,
  so the edited lines get exercised.
- Base outputs: the base model never sees the prompt, so its reply to a context the parent also had is the
  parent's (same model, same decoding). Keyed by the exact context, so a changed input prefix or any turn
  after a changed teacher reply misses the cache and is generated anew.
- Reasons: kept where the first-turn context, the base reply and the teacher reply are all the parent's;
  regenerated where the teacher's reply changed.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from genpi_core.store.tables import read_table
from schemas.datasets import ReasonsSchema, TargetsSchema

MAX_DIFF_LINES = 20  # lines of the diff shown to the generator


def changed_lines(diff: dict) -> list[str]:
    """The lines an edit changed, as the generator is shown them: "- old" then "+ new" (at most MAX_DIFF_LINES each)."""
    return [f"- {line}" for line in diff.get("removed", [])[:MAX_DIFF_LINES]] + [
        f"+ {line}" for line in diff.get("added", [])[:MAX_DIFF_LINES]
    ]


def parent_targets(path: Path) -> pd.DataFrame:
    return read_table(path, TargetsSchema)


def base_cache(targets: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Context (JSON, as stored) -> (base output, its finish reason), from the parent's targets."""
    return {c: (o, f) for c, o, f in zip(targets["context"], targets["base_output"], targets["base_finish"])}


def teacher_by_context(targets: pd.DataFrame) -> dict[str, str]:
    return dict(zip(targets["context"], targets["teacher_output"]))


def reason_cache(targets: pd.DataFrame, reasons_path: Path) -> dict[tuple[str, str, str], tuple[str, str]]:
    """(first-turn context, base output, teacher output) -> (reason, who wrote it), from the parent's reasons."""
    reasons = read_table(reasons_path, ReasonsSchema)
    first = targets[targets["turn"] == 0].merge(reasons, on=["conversation_id", "turn"], suffixes=("", "_reason"))
    return {
        (c, b, t): (r, p)
        for c, b, t, r, p in zip(
            first["context"],
            first["base_output"],
            first["teacher_output"],
            first["reason"],
            first["produced_by_reason"],
        )
    }


def unchanged_teacher_replies(targets: pd.DataFrame, parent: dict[str, str]) -> tuple[int, int]:
    """(replies identical to the parent's for the same context, contexts the parent also had)."""
    compared = [parent[c] == t for c, t in zip(targets["context"], targets["teacher_output"]) if c in parent]
    return sum(compared), len(compared)

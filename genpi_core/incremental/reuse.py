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

from genpi_core.generation.base import Message
from genpi_core.prompt.views import render_prompt
from genpi_core.store.tables import read_table
from schemas.datasets import ReasonsSchema, TargetsSchema
from schemas.spec import PromptSpec

MAX_DIFF_LINES = 20  # lines of the diff shown to the generator


def edit_request(spec: PromptSpec, diff: dict, seeds: list[str], count: int) -> list[Message]:
    """Ask the generator for messages whose answers depend on the lines the edit changed."""
    changed = [f"- {line}" for line in diff.get("removed", [])[:MAX_DIFF_LINES]]
    changed += [f"+ {line}" for line in diff.get("added", [])[:MAX_DIFF_LINES]]
    examples = "\n".join(f"- {s}" for s in seeds) or "- (none given)"
    ask = (
        f"An assistant works with this prompt:\n\n{render_prompt(spec.prompt)}\n\n"
        f"It talks to: {spec.environment.description}\n\n"
        f"The prompt was just edited. These lines changed (- old, + new):\n" + "\n".join(changed) + "\n\n"
        f"Examples of messages it receives:\n{examples}\n\n"
        f"Write {count} new, different, realistic messages that it could receive and whose right answer depends "
        "on the changed lines. One message per line, numbered 1., 2., ... Write only the messages."
    )
    return [{"role": "user", "content": ask}]


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

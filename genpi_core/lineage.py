"""Prompt lineage: which earlier version a new version of a prompt descends from, and what the edit changed.

Recorded once, when a version is first ingested (``ingest/lineage.json``): the parent is the promoted version
of the same spec name, or, with none promoted, the latest version whose evaluation finished. The diff is by
dialogue turn (which turns changed, were added or removed) and by line of the rendered prompt, so an edit of
a few lines of a long prompt reads as exactly that. Incremental re-internalization decides what to reuse from
it; `genpi adapters` shows it.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from genpi_core.promote import promoted
from genpi_core.prompt.views import prompt_messages, render_prompt
from schemas.artifacts import MANIFEST, PROMPT_FILE
from schemas.spec import PromptBody

MAX_LINES = 50  # changed lines kept in the record (counts are always complete)


def parent_version(runs_dir: Path, name: str, version: str) -> tuple[Path, str] | None:
    """(run folder, why) of the version ``version`` descends from, or None for the first version of ``name``."""
    record = promoted(runs_dir, name)
    if record is not None and not version.startswith(record["version12"]):
        return Path(record["run_dir"]), "promoted"
    finished = []
    for run_dir in (Path(runs_dir) / name).glob("*/evaluate/" + MANIFEST):
        folder = run_dir.parent.parent
        if version.startswith(folder.name):
            continue
        finished.append((json.loads(run_dir.read_text()).get("finished_at", ""), folder))
    if not finished:
        return None
    return max(finished)[1], "latest finished"


def prompt_diff(old: PromptBody, new: PromptBody) -> dict:
    """What changed between two prompts: per dialogue turn, and per line of their rendered text."""
    before, after = prompt_messages(old), prompt_messages(new)
    turns = []
    for i in range(max(len(before), len(after))):
        a, b = (before[i] if i < len(before) else None), (after[i] if i < len(after) else None)
        if a == b:
            continue
        change = "added" if a is None else "removed" if b is None else "changed"
        turn = b if b is not None else a
        turns.append({"turn": i, "role": turn["role"] if turn is not None else "", "change": change})
    lines = list(
        difflib.unified_diff(render_prompt(old).splitlines(), render_prompt(new).splitlines(), n=0, lineterm="")
    )
    added = [line[1:] for line in lines if line.startswith("+") and not line.startswith("+++")]
    removed = [line[1:] for line in lines if line.startswith("-") and not line.startswith("---")]
    return {
        "turns": turns,
        "lines_added": len(added),
        "lines_removed": len(removed),
        "added": added[:MAX_LINES],
        "removed": removed[:MAX_LINES],
    }


def lineage_record(runs_dir: Path, name: str, version: str, prompt: PromptBody) -> dict:
    """The lineage of a new version: its parent (or none) and the diff from the parent's prompt."""
    from genpi_core.ingest import SpecError, load_ingested

    found = parent_version(runs_dir, name, version)
    if found is None:
        return {"parent_version": None, "parent_source": None, "diff": None}
    folder, why = found
    try:
        parent_spec, parent = load_ingested(folder / "ingest" / PROMPT_FILE)
    except SpecError as exc:  # a damaged parent must not block the new version: it just has no lineage
        return {"parent_version": None, "parent_source": None, "diff": None, "unreadable_parent": str(exc)}
    return {
        "parent_version": parent,
        "parent_version12": parent[:12],
        "parent_run_dir": str(folder),
        "parent_source": why,
        "diff": prompt_diff(parent_spec.prompt, prompt),
    }

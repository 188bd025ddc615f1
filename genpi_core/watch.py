"""Which prompt specs in a folder need internalizing: the decision half of `genpi watch`.

Reads: every ``*.yaml``/``*.yml`` spec under a prompts folder, the run store (is a version already
evaluated?) and a small state file. Writes: the state file (atomically), recording the version last
announced per spec file, so one edit is announced once, not on every poll.

A spec is a *change* when its version differs from the one last announced for that file and the
run store has no finished evaluation for that version. An unchanged spec, an already internalized
version (any config), or a file that is not a valid spec is skipped with the reason. The caller
(Prefect side) announces the changes and then calls ``mark_announced``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from genpi_core.ingest import SpecError, load_spec, run_dir_for, spec_version
from genpi_core.lineage import parent_version
from genpi_core.store.stage import atomic_write_json
from schemas.artifacts import MANIFEST, WATCH_STATE_FILE


class PromptChange(BaseModel):
    name: str
    version: str
    path: str
    previous_version: str | None = None  # the version last announced for this file
    parent_version12: str | None = None  # the version it will be built from (genpi_core/lineage.py), if any
    parent_source: str | None = None  # "promoted" or "latest finished"


class ScanResult(BaseModel):
    changes: list[PromptChange] = []
    skipped: dict[str, str] = {}  # spec path -> why nothing is announced


def default_state_path(runs_dir: str | Path) -> Path:
    return Path(runs_dir) / WATCH_STATE_FILE


def internalized(runs_dir: str | Path, name: str, version: str) -> bool:
    """A finished evaluation exists for this prompt version (whatever config produced it)."""
    return (Path(runs_dir) / name / version[:12] / "evaluate" / MANIFEST).is_file()


def _read_state(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a damaged state file only costs re-announcing; runs of finished versions are skipped anyway
    return {str(k): str(v) for k, v in data.get("announced", {}).items()}


def scan(prompts_dir: str | Path, runs_dir: str | Path, state_path: str | Path | None = None) -> ScanResult:
    prompts_dir = Path(prompts_dir)
    if not prompts_dir.is_dir():
        raise ValueError(f"{prompts_dir}: not a folder of prompt specs")
    state = _read_state(Path(state_path) if state_path else default_state_path(runs_dir))
    result = ScanResult()
    files = sorted(
        p
        for p in prompts_dir.rglob("*")
        if p.suffix in {".yaml", ".yml"}
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(prompts_dir).parts)
    )
    for path in files:
        key = str(path.resolve())
        try:
            spec = load_spec(path)
        except SpecError as exc:
            result.skipped[key] = f"not a valid spec: {str(exc).splitlines()[0]}"
            continue
        version = spec_version(spec)
        if state.get(key) == version:
            result.skipped[key] = f"unchanged ({spec.name} {version[:12]} already announced)"
        elif internalized(runs_dir, spec.name, version):
            result.skipped[key] = f"already internalized: {run_dir_for(runs_dir, spec, version)}"
        else:
            parent = parent_version(Path(runs_dir), spec.name, version)
            result.changes.append(
                PromptChange(
                    name=spec.name,
                    version=version,
                    path=key,
                    previous_version=state.get(key),
                    parent_version12=parent[0].name if parent else None,
                    parent_source=parent[1] if parent else None,
                )
            )
    return result


def mark_announced(changes: list[PromptChange], runs_dir: str | Path, state_path: str | Path | None = None) -> None:
    path = Path(state_path) if state_path else default_state_path(runs_dir)
    state = _read_state(path)
    state.update({c.path: c.version for c in changes})
    atomic_write_json(path, {"announced": state})

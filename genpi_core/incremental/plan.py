"""Whether a new prompt version is built incrementally from its parent, and why (``<run>/incremental.json``).

The parent is the one its lineage names (ingest/lineage.json: the promoted version, else the latest finished).
Incremental needs a parent whose data, adapter and evaluation are finished and intact, trained on the same base
model (so the same tokenizer) with the same LoRA shape, evaluated on the same held-out inputs under the same
checks (or recovery would not compare), and a chain of warm starts shorter than ``incremental.max_chain``.
Anything else is a full run, with the reason in the plan. The plan is recomputed on every run from files that
do not change once written, so a run killed halfway resumes on the same path.
"""

from __future__ import annotations

import json
from pathlib import Path

from genpi_core.generation.models import resolve_model
from genpi_core.store.stage import Stage, atomic_write_json
from genpi_core.train.warm_start import incompatibility
from schemas.artifacts import ADAPTER_DIR, LINEAGE_FILE, MANIFEST, PROMPT_FILE
from schemas.config import PipelineConfig
from schemas.spec import PromptSpec
from schemas.stages import IncrementalPlan, IngestOutput

PLAN_FILE = "incremental.json"  # in the run folder, beside the stage folders
PARENT_STAGES = ("inputs", "conversations", "train", "evaluate")


def plan_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / PLAN_FILE


def read_plan(run_dir: str | Path) -> dict | None:
    path = plan_path(run_dir)
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except ValueError:
        return None


def effective_depth(run_dir: Path) -> int:
    """Warm starts in a row behind the adapter of ``run_dir``: 0 unless it kept an incremental result."""
    record = read_plan(run_dir)
    if not record or record.get("mode") != "incremental" or record.get("outcome") != "kept":
        return 0
    return int(record.get("chain_depth", 0))


def _full(why: str, **known) -> IncrementalPlan:
    return IncrementalPlan(mode="full", why=why, **known)


def _unfinished_stage(parent: Path) -> str | None:
    for name in PARENT_STAGES:
        stage = Stage(parent, name, {}, {})
        if not stage.manifest_path.is_file():
            return f"the parent's {name} stage never finished"
        try:
            changed = stage.changed_outputs()
        except ValueError as exc:
            return str(exc)
        if changed:
            return f"the parent's {name} outputs changed on disk since it finished ({', '.join(changed)})"
    return None


def _same_evaluation(old: PromptSpec, new: PromptSpec) -> str | None:
    """Why the two versions' evaluations would not compare (None when they do): same held-out inputs, same
    checks. An input's expected facts may follow the edit (a changed price is the point of the edit)."""
    if [e.text for e in old.inputs.eval] != [e.text for e in new.inputs.eval]:
        return "the edit changes the held-out inputs, so recovery would not compare with the parent's"
    if [c.model_dump() for c in old.checks] != [c.model_dump() for c in new.checks]:
        return "the edit changes the checks, so recovery would not compare with the parent's"
    return None


def plan_incremental(ingested: IngestOutput, cfg: PipelineConfig) -> IncrementalPlan:
    """The plan for this version (also written to ``<run>/incremental.json``)."""
    plan = _decide(ingested, cfg)
    record = read_plan(ingested.run_dir) or {}
    if record.get("mode") == plan.mode and record.get("parent_run_dir") == plan.parent_run_dir:
        plan = plan.model_copy(update={k: record[k] for k in ("outcome", "fallback_reason", "attempt") if k in record})
    atomic_write_json(plan_path(ingested.run_dir), plan)
    return plan


def _decide(ingested: IngestOutput, cfg: PipelineConfig) -> IncrementalPlan:
    from genpi_core.ingest import SpecError, load_ingested

    if not cfg.incremental.enabled:
        return _full("incremental.enabled is off")
    lineage_path = Path(ingested.run_dir) / "ingest" / LINEAGE_FILE
    lineage = json.loads(lineage_path.read_text(encoding="utf-8")) if lineage_path.is_file() else {}
    if not lineage.get("parent_run_dir"):
        return _full(f"the first version of {ingested.name}: no parent to start from")
    parent = Path(lineage["parent_run_dir"])
    known = {"parent_run_dir": str(parent), "parent_version12": lineage.get("parent_version12")}
    problem = _unfinished_stage(parent)
    if problem:
        return _full(problem, **known)
    train = Stage(parent, "train", {}, {}).manifest().config
    parent_model = str(train.get("model", {}).get("name_or_path"))
    if not _same_model(parent_model, cfg.model.name_or_path):
        return _full(
            f"the base model changed ({parent_model} -> {cfg.model.name_or_path}): never warm-started", **known
        )
    adapter = parent / "train" / ADAPTER_DIR
    shape = incompatibility(adapter, cfg.model, cfg.train.lora)
    if shape:
        return _full(f"{shape}: never warm-started", **known)
    try:
        old_spec, _ = load_ingested(parent / "ingest" / PROMPT_FILE)
        new_spec, _ = load_ingested(ingested.prompt_path)
    except SpecError as exc:
        return _full(str(exc), **known)
    problem = _same_evaluation(old_spec, new_spec)
    if problem:
        return _full(problem, **known)
    depth = effective_depth(parent) + 1
    if depth > cfg.incremental.max_chain:
        return _full(
            f"{depth - 1} warm starts in a row already (incremental.max_chain={cfg.incremental.max_chain}): "
            "a full run resets the chain",
            **known,
        )
    diff = lineage.get("diff") or {}
    edit = cfg.incremental.edit_inputs
    generator_on = cfg.synth.inputs.source != "pool"
    same_base = _same_base_decoding(parent, cfg)
    if not (generator_on and (diff.get("lines_added") or diff.get("lines_removed"))):
        edit = 0
    decisions = {
        "inputs": "the parent's inputs are reused (they are still valid requests)"
        + (
            f"; {edit} new ones are generated from the diff, aimed at the changed lines"
            if edit
            else "; no new ones (no generator, or no changed line to aim at)"
        ),
        "base_outputs": "reused where the context is the parent's: they do not depend on the prompt"
        if same_base is None
        else f"regenerated: {same_base}",
        "teacher_outputs": "regenerated under the new prompt, with the environment turns that follow them",
        "reasons": "asked again only where the teacher's reply changed; the parent's kept elsewhere (when the "
        "parent's reasons came from the same generator and settings, else all asked again)",
        "train": f"warm start from {adapter}, {cfg.train.warm_start.share:g} of the parent's optimizer steps; "
        "PG targets are the new prompt",
        "evaluate": "the full held-out evaluation and the promotion gate, as always; the base model's greedy "
        "replies are replayed from the parent's record (they never see the prompt)",
    }
    return IncrementalPlan(
        mode="incremental",
        why=f"edit of {lineage.get('parent_version12')} ({lineage.get('parent_source')}): "
        f"{diff.get('lines_added', 0)} line(s) added, {diff.get('lines_removed', 0)} removed",
        chain_depth=depth,
        edit_inputs=edit,
        decisions=decisions,
        **known,
    )


def _same_model(a: str, b: str) -> bool:
    """One base model under two spellings (a name and its converted folder) counts as the same."""
    if a == b:
        return True
    try:
        return Path(resolve_model(a)).resolve() == Path(resolve_model(b)).resolve()
    except Exception:  # a model that cannot be found here is not this run's model
        return False


def _same_base_decoding(parent: Path, cfg: PipelineConfig) -> str | None:
    """Why the parent's base outputs cannot stand for this run's (None when they can)."""
    config = json.loads((parent / "conversations" / MANIFEST).read_text(encoding="utf-8"))["config"]
    if config.get("model") != cfg.model.model_dump(mode="json"):
        return "the model settings differ from the parent's"
    if config.get("base") != cfg.synth.base.model_dump(mode="json"):
        return "the base decoding (synth.base) differs from the parent's"
    if config.get("backend", {}).get("kind") != cfg.backend.kind:
        return "another generation engine than the parent's"
    return None


def reuses_base(plan: IncrementalPlan) -> bool:
    return plan.incremental and plan.decisions.get("base_outputs", "").startswith("reused")


def record_outcome(
    run_dir: str | Path, plan: IncrementalPlan, outcome: str, reason: str | None = None, attempt: dict | None = None
) -> IncrementalPlan:
    """``kept``: the warm-started adapter stands; ``fell back``: a full run replaces it (``reason`` says why,
    ``attempt`` keeps the warm-started student's numbers, since the full run overwrites its folders)."""
    plan = plan.model_copy(update={"outcome": outcome, "fallback_reason": reason, "attempt": attempt or plan.attempt})
    atomic_write_json(plan_path(run_dir), plan)
    return plan


REUSE_ROWS = {  # stage -> the manifest rows that say what it took over from the parent
    "inputs": ("reused_from_parent", "generated_used", "inputs"),
    "conversations": ("base_reused", "teacher_unchanged", "teacher_compared", "agent_turns"),
    "reasons": ("reasons_reused", "reasons_generated"),
}


def describe(run_dir: str | Path) -> str:
    """Markdown: how this version was built, each reuse decision with its reason and its counts, the outcome."""
    record = read_plan(run_dir)
    if not record:
        return ""
    if record["mode"] != "incremental":
        return f"## Build\n\n**full**: {record['why']}\n"
    lines = [f"## Build\n\n**incremental from {record['parent_version12']}**: {record['why']}", ""]
    for piece, decision in record.get("decisions", {}).items():
        counts = ""
        if piece in REUSE_ROWS:
            manifest = Path(run_dir) / piece / MANIFEST
            rows = json.loads(manifest.read_text(encoding="utf-8"))["rows"] if manifest.is_file() else {}
            found = {k: rows[k] for k in REUSE_ROWS[piece] if k in rows}
            counts = f" ({', '.join(f'{k} {v}' for k, v in found.items())})" if found else ""
        lines.append(f"- {piece}: {decision}{counts}")
    lines.append(f"- warm starts in a row: {record.get('chain_depth')}")
    if record.get("outcome"):
        lines += [
            "",
            f"**Outcome**: {record['outcome']}"
            + (f": {record['fallback_reason']}" if record.get("fallback_reason") else ""),
        ]
    return "\n".join(lines) + "\n"

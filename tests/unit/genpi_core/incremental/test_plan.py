"""When an edited prompt is built incrementally, and why not: the plan, on real run folders whose stages are
recorded by real manifests (the stages' own work is not run here: the integration test runs it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genpi_core.generation.models import resolve_model
from genpi_core.incremental.plan import PLAN_FILE, plan_incremental, record_outcome
from genpi_core.pipeline import ingest_stage
from genpi_core.store.stage import Stage
from schemas.artifacts import ADAPTER_DIR, METRICS_FILE
from schemas.config import PipelineConfig, load_config
from schemas.stages import IngestOutput
from tests.conftest import EXAMPLE_SPEC

OLD_FEE = "Replacement library card: $2."
NEW_FEE = "Replacement library card: $3."


def _ingest(specs: Path, text: str, cfg: PipelineConfig) -> IngestOutput:
    path = specs / f"v{len(list(specs.glob('*.yaml')))}.yaml"
    path.write_text(text)
    return ingest_stage(path, cfg.ingest, cfg.model, cfg.runs_dir)


def _stage(run_dir: Path, name: str, config: dict, files: dict[str, str]) -> None:
    stage = Stage(run_dir, name, config, {})
    stage.begin()
    for rel, text in files.items():
        (stage.dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage.dir / rel).write_text(text)
    stage.finish(list(files))


def _finish_parent(run_dir: Path, cfg: PipelineConfig, model: str | None = None, rank: int | None = None) -> None:
    """What a finished run leaves that the plan reads: the four stages' manifests, an adapter's config, metrics."""
    model_cfg = cfg.model.model_copy(update={"name_or_path": model}) if model else cfg.model
    conversations = {"model": model_cfg.model_dump(mode="json"), "backend": cfg.backend.model_dump(mode="json")}
    conversations["base"] = cfg.synth.base.model_dump(mode="json")
    adapter = {
        "base_model_name_or_path": resolve_model(model_cfg.name_or_path) if not model else model,
        "r": rank or cfg.train.lora.rank,
        "lora_alpha": cfg.train.lora.alpha,
        "target_modules": list(cfg.train.lora.target_modules),
    }
    _stage(run_dir, "inputs", {}, {"inputs.parquet": "x"})
    _stage(run_dir, "conversations", conversations, {"targets.parquet": "x"})
    _stage(
        run_dir,
        "train",
        {"model": model_cfg.model_dump(mode="json")},
        {f"{ADAPTER_DIR}/adapter_config.json": json.dumps(adapter), METRICS_FILE: json.dumps({"steps": 20})},
    )
    _stage(run_dir, "evaluate", {}, {"summary.json": "{}"})


@pytest.fixture
def setup(tmp_path, embedded_model_dir):
    cfg = load_config(None, [f"runs_dir={tmp_path / 'runs'}"])
    specs = tmp_path / "specs"
    specs.mkdir()
    original = EXAMPLE_SPEC.read_text()
    assert OLD_FEE in original
    return cfg, specs, original


def test_an_edit_of_a_finished_version_is_built_incrementally_with_every_decision_recorded(setup):
    cfg, specs, original = setup
    first = _ingest(specs, original, cfg)
    assert plan_incremental(first, cfg).why.startswith("the first version of library-desk")
    _finish_parent(Path(first.run_dir), cfg)
    second = _ingest(specs, original.replace(OLD_FEE, NEW_FEE), cfg)
    plan = plan_incremental(second, cfg)
    assert plan.mode == "incremental" and plan.parent_version12 == first.version[:12] and plan.chain_depth == 1
    assert "1 line(s) added, 1 removed" in plan.why
    assert set(plan.decisions) == {"inputs", "base_outputs", "teacher_outputs", "reasons", "train", "evaluate"}
    assert plan.decisions["base_outputs"].startswith("reused")
    assert "0.3 of the parent's optimizer steps" in plan.decisions["train"]
    assert json.loads((Path(second.run_dir) / PLAN_FILE).read_text())["mode"] == "incremental"

    # once a safety net has sent it to a full run, a re-run (a resume) stays on the full path
    record_outcome(second.run_dir, plan, "fell back", "the warm-started student misses the promotion gate")
    again = plan_incremental(second, cfg)
    assert again.outcome == "fell back" and again.active() is None and plan.active() is plan

    # a chain of kept warm starts is capped; a full run resets it
    record_outcome(second.run_dir, plan.model_copy(update={"chain_depth": 5}), "kept")
    _finish_parent(Path(second.run_dir), cfg)
    third = _ingest(specs, original.replace(OLD_FEE, "Replacement library card: $4."), cfg)
    capped = plan_incremental(third, cfg)
    assert capped.mode == "full" and "5 warm starts in a row already" in capped.why
    raised = load_config(None, [f"runs_dir={cfg.runs_dir}", "incremental.max_chain=6"])
    assert plan_incremental(third, raised).chain_depth == 6


@pytest.mark.parametrize(
    "change,why",
    [
        ("model", "the base model changed"),
        ("rank", "LoRA shape"),
        ("eval", "changes the held-out inputs"),
        ("checks", "changes the checks"),
        ("unfinished", "the parent's train stage never finished"),
        ("damaged", "the parent's train outputs changed on disk"),
        ("off", "incremental.enabled is off"),
    ],
)
def test_what_forces_a_full_run(setup, change, why):
    cfg, specs, original = setup
    first = _ingest(specs, original, cfg)
    _finish_parent(Path(first.run_dir), cfg, model="/models/another-base" if change == "model" else None)
    if change == "rank":
        _finish_parent(Path(first.run_dir), cfg, rank=cfg.train.lora.rank * 2)
    if change == "unfinished":
        (Path(first.run_dir) / "train" / "_manifest.json").unlink()
    if change == "damaged":
        (Path(first.run_dir) / "train" / METRICS_FILE).write_text(json.dumps({"steps": 99}))
    edited = original.replace(OLD_FEE, NEW_FEE)
    if change == "eval":
        edited = edited.replace('"Is there a maximum late fee for one book?"', '"Is there a cap on late fees?"')
    if change == "checks":
        edited = edited.replace("chars: 400", "chars: 500")
    second = _ingest(specs, edited, cfg)
    if change == "off":
        cfg = load_config(None, [f"runs_dir={cfg.runs_dir}", "incremental.enabled=false"])
    plan = plan_incremental(second, cfg)
    assert plan.mode == "full" and why in plan.why, plan.why

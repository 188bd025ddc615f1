"""The stages as resumable units: each computes its key, skips itself when already complete, and
returns paths. Prefect tasks wrap these one-to-one; ``run_pipeline`` chains them without Prefect
(for notebooks, scripts and ``accelerate launch``).

Each stage's key covers only what changes its output (its config slice and its input files), so
editing the training config re-runs training and evaluation but reuses the synthesized data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from genpi_core.store import Stage
from schemas.config import PipelineConfig
from schemas.datasets import EVAL_RESULTS_FILE, QUARANTINE_FILE, REPLIES_FILE, TEST_FILE, TRAIN_FILE, TRAIN_LOG_FILE, VAL_FILE


class StageOutput(BaseModel):
    """What a stage hands to the next one: small, serializable, paths only."""

    stage: str
    dir: str
    files: dict[str, str]
    rows: dict[str, int | float | None] = {}
    reused: bool = False

    def path(self, name: str) -> Path:
        return Path(self.files[name])


class IngestOutput(BaseModel):
    name: str
    version: str
    prompt_tokens: int
    run_dir: str
    prompt_path: str


def _output(stage: Stage, files: dict[str, str], reused: bool) -> StageOutput:
    rows = stage.manifest().rows
    return StageOutput(stage=stage.name, dir=str(stage.dir), files={k: str(stage.dir / v) for k, v in files.items()},
                       rows=rows, reused=reused)


def _run(stage: Stage, files: dict[str, str], work) -> StageOutput:
    if stage.is_complete():
        return _output(stage, files, reused=True)
    stage.begin()
    rows = work(stage.dir)
    stage.finish(list(files.values()), rows=rows)
    return _output(stage, files, reused=False)


def ingest_stage(spec_path: str | Path, cfg: PipelineConfig) -> IngestOutput:
    from genpi_core.ingest import run_ingest

    result = run_ingest(spec_path, cfg.model, cfg.ingest, cfg.runs_dir)
    return IngestOutput(name=result.spec.name, version=result.version, prompt_tokens=result.prompt_tokens,
                        run_dir=str(result.run_dir), prompt_path=str(result.prompt_path))


def _spec(prompt_path: str | Path):
    from genpi_core.ingest import load_ingested

    return load_ingested(prompt_path)


def inputs_stage(ingested: IngestOutput, cfg: PipelineConfig) -> StageOutput:
    inputs_cfg = cfg.synth.inputs
    needs_model = inputs_cfg.source != "pool" and inputs_cfg.num_generated > 0
    config = {"inputs": inputs_cfg.model_dump(), **({"model": cfg.model.model_dump(), "backend": cfg.backend.model_dump()} if needs_model else {})}
    stage = Stage(Path(ingested.run_dir), "inputs", config, {"prompt": Path(ingested.prompt_path)})

    def work(out_dir: Path) -> dict:
        from genpi_core.generation.base import make_backend
        from genpi_core.synth import run_inputs

        spec, version = _spec(ingested.prompt_path)
        backend = make_backend(cfg.model, cfg.backend) if needs_model else None
        try:
            return run_inputs(spec, version, inputs_cfg, backend, out_dir)
        finally:
            if backend is not None:
                backend.close()

    return _run(stage, {"inputs": "inputs.parquet", "quarantine": QUARANTINE_FILE}, work)


def replies_stage(variant: Literal["teacher", "base"], ingested: IngestOutput, inputs: StageOutput, cfg: PipelineConfig) -> StageOutput:
    sampling = cfg.synth.teacher if variant == "teacher" else cfg.synth.base
    config = {"model": cfg.model.model_dump(), "backend": cfg.backend.model_dump(), "sampling": sampling.model_dump()}
    stage = Stage(Path(ingested.run_dir), variant, config, {"prompt": Path(ingested.prompt_path), "inputs": inputs.path("inputs")})

    def work(out_dir: Path) -> dict:
        from genpi_core.generation.base import make_backend
        from genpi_core.synth import run_replies

        spec, _ = _spec(ingested.prompt_path)
        backend = make_backend(cfg.model, cfg.backend)
        try:
            return run_replies(variant, spec, inputs.path("inputs"), sampling, backend, out_dir)
        finally:
            backend.close()

    return _run(stage, {"replies": REPLIES_FILE}, work)


def dataset_stage(ingested: IngestOutput, inputs: StageOutput, teacher: StageOutput, base: StageOutput, cfg: PipelineConfig) -> StageOutput:
    stage = Stage(
        Path(ingested.run_dir), "dataset", cfg.dataset,
        {"prompt": Path(ingested.prompt_path), "inputs": inputs.path("inputs"),
         "teacher": teacher.path("replies"), "base": base.path("replies")},
    )

    def work(out_dir: Path) -> dict:
        from genpi_core.dataset import run_dataset

        spec, _ = _spec(ingested.prompt_path)
        return run_dataset(spec, cfg.dataset, inputs.path("inputs"), teacher.path("replies"), base.path("replies"), out_dir)

    files = {"train": TRAIN_FILE, "val": VAL_FILE, "test": TEST_FILE, "quarantine": QUARANTINE_FILE}
    return _run(stage, files, work)


def train_stage(ingested: IngestOutput, dataset: StageOutput, cfg: PipelineConfig) -> StageOutput:
    from genpi_core.finetune import ADAPTER_DIR, LOSS_PLOT, METRICS_FILE

    config = {"model": cfg.model.model_dump(), "train": cfg.train.model_dump()}
    stage = Stage(Path(ingested.run_dir), "train", config, {"train": dataset.path("train"), "val": dataset.path("val")})

    def work(out_dir: Path) -> dict:
        from genpi_core.finetune import run_finetune

        metrics = run_finetune(cfg.model, cfg.train, dataset.path("train"), dataset.path("val"), out_dir)
        return {"steps": metrics["steps"], "train_examples": metrics["train_examples"], "final_loss": metrics["final_loss"]}

    files = {"adapter": ADAPTER_DIR, "log": TRAIN_LOG_FILE, "plot": LOSS_PLOT, "metrics": METRICS_FILE}
    return _run(stage, files, work)


def evaluate_stage(ingested: IngestOutput, dataset: StageOutput, train: StageOutput, cfg: PipelineConfig) -> StageOutput:
    from genpi_core.evaluate import PLOT_FILE, REPORT_FILE, SUMMARY_FILE

    config = {"model": cfg.model.model_dump(), "backend": cfg.backend.model_dump(), "evaluate": cfg.evaluate.model_dump()}
    stage = Stage(
        Path(ingested.run_dir), "evaluate", config,
        {"prompt": Path(ingested.prompt_path), "test": dataset.path("test"), "adapter": train.path("adapter")},
    )

    def work(out_dir: Path) -> dict:
        from genpi_core.evaluate import run_evaluate

        spec, version = _spec(ingested.prompt_path)
        metrics = json.loads(train.path("metrics").read_text())
        summary = run_evaluate(spec, version, cfg.model, cfg.backend, cfg.evaluate, dataset.path("test"),
                               train.path("adapter"), out_dir, train_metrics=metrics)
        v = summary["variants"]
        return {"base": v["base"]["compliance"], "teacher": v["teacher"]["compliance"],
                "student": v["student"]["compliance"], "recovery": summary.get("recovery")}

    files = {"results": EVAL_RESULTS_FILE, "summary": SUMMARY_FILE, "report": REPORT_FILE, "plot": PLOT_FILE}
    return _run(stage, files, work)


def run_pipeline(spec_path: str | Path, cfg: PipelineConfig) -> StageOutput:
    """The whole pipeline without Prefect; same stages, same run folders, same resume."""
    ingested = ingest_stage(spec_path, cfg)
    inputs = inputs_stage(ingested, cfg)
    teacher = replies_stage("teacher", ingested, inputs, cfg)
    base = replies_stage("base", ingested, inputs, cfg)
    dataset = dataset_stage(ingested, inputs, teacher, base, cfg)
    train = train_stage(ingested, dataset, cfg)
    return evaluate_stage(ingested, dataset, train, cfg)

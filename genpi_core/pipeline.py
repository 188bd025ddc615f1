"""The stages as resumable units: each computes its key, skips itself when already complete, and
returns paths. Prefect tasks wrap these one-to-one; ``run_pipeline`` chains them without Prefect
(for notebooks, scripts and ``accelerate launch``).

Each stage's key covers only what changes its output (its config slice and its input files), so
editing the training config re-runs training and evaluation but reuses the synthesized data.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel

from genpi_core.store import Stage, file_lock
from schemas.config import GeneratorConfig, PipelineConfig
from schemas.datasets import (
    EPISODES_FILE, INPUTS_FILE, MESSAGES_FILE, QUARANTINE_FILE, REASONS_FILE, TARGETS_FILE, TEST_FILE,
    TRAIN_FILE, TRAIN_LOG_FILE, VAL_FILE,
)


_VARIANT = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")


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


def _run(stage: Stage, files: dict[str, str], work, resumable: bool = False) -> StageOutput:
    # the lock sits beside the stage folder (begin() empties the folder itself)
    with file_lock(stage.dir.parent / f".{stage.name}.lock"):
        if stage.is_complete():
            return _output(stage, files, reused=True)
        stage.begin(keep_checkpoint=resumable)
        rows = work(stage.dir)
        stage.finish(list(files.values()), rows=rows)
        return _output(stage, files, reused=False)


def ingest_stage(spec_path: str | Path, cfg: PipelineConfig) -> IngestOutput:
    from genpi_core.ingest import run_ingest

    with file_lock(Path(cfg.runs_dir) / ".ingest.lock"):  # short; keeps two triggers of one version from racing
        result = run_ingest(spec_path, cfg.model, cfg.ingest, cfg.runs_dir)
    return IngestOutput(name=result.spec.name, version=result.version, prompt_tokens=result.prompt_tokens,
                        run_dir=str(result.run_dir), prompt_path=str(result.prompt_path))


def _spec(prompt_path: str | Path):
    from genpi_core.ingest import load_ingested

    return load_ingested(prompt_path)


def _engine(cfg: PipelineConfig, role: GeneratorConfig):
    """The backend a role runs on: its own model/backend where set, else the pipeline's."""
    from genpi_core.generation.base import make_backend

    return make_backend(role.model or cfg.model, role.backend or cfg.backend)


def _engine_key(cfg: PipelineConfig, role: GeneratorConfig) -> dict:
    return {"model": (role.model or cfg.model).model_dump(), "backend": (role.backend or cfg.backend).model_dump()}


def _generator(cfg: PipelineConfig):
    """The backend that writes pseudo inputs and reasons: synth.generator, else the pipeline's own."""
    return _engine(cfg, cfg.synth.generator)


def _generator_key(cfg: PipelineConfig) -> dict:
    return _engine_key(cfg, cfg.synth.generator)


def inputs_stage(ingested: IngestOutput, cfg: PipelineConfig) -> StageOutput:
    inputs_cfg = cfg.synth.inputs
    needs_model = inputs_cfg.source != "pool" and inputs_cfg.num_generated > 0
    config = {"inputs": inputs_cfg.model_dump(), **({"generator": _generator_key(cfg)} if needs_model else {})}
    stage = Stage(Path(ingested.run_dir), "inputs", config, {"prompt": Path(ingested.prompt_path)})

    def work(out_dir: Path) -> dict:
        from genpi_core.synth import run_inputs

        spec, version = _spec(ingested.prompt_path)
        backend = _generator(cfg) if needs_model else None
        try:
            return run_inputs(spec, version, inputs_cfg, backend, out_dir)
        finally:
            if backend is not None:
                backend.close()

    return _run(stage, {"inputs": INPUTS_FILE, "quarantine": QUARANTINE_FILE}, work)


def conversations_stage(ingested: IngestOutput, inputs: StageOutput, cfg: PipelineConfig) -> StageOutput:
    """Role-swapped episodes; resumes from its per-turn checkpoint when the key matches."""
    synth = cfg.synth
    config = {"model": cfg.model.model_dump(), "backend": cfg.backend.model_dump(), "teacher": synth.teacher.model_dump(),
              "base": synth.base.model_dump(), "conversations": synth.conversations.model_dump()}
    stage = Stage(Path(ingested.run_dir), "conversations", config,
                  {"prompt": Path(ingested.prompt_path), "inputs": inputs.path("inputs")})

    def work(out_dir: Path) -> dict:
        from genpi_core.conversations import run_conversations
        from genpi_core.generation.base import make_backend

        spec, _ = _spec(ingested.prompt_path)
        max_turns = synth.conversations.max_turns or spec.conversation.max_turns
        backend = make_backend(cfg.model, cfg.backend)
        role = synth.conversations.environment_engine
        separate = _engine_key(cfg, role) != _engine_key(cfg, GeneratorConfig())
        environment = _engine(cfg, role) if separate else backend
        try:
            return run_conversations(spec, inputs.path("inputs"), backend, synth.teacher, synth.base,
                                     synth.conversations.environment, max_turns, out_dir, environment_backend=environment)
        finally:
            backend.close()
            if separate:
                environment.close()

    files = {"messages": MESSAGES_FILE, "targets": TARGETS_FILE, "episodes": EPISODES_FILE, "quarantine": QUARANTINE_FILE}
    return _run(stage, files, work, resumable=True)


def reasons_stage(ingested: IngestOutput, conversations: StageOutput, cfg: PipelineConfig) -> StageOutput | None:
    if not cfg.synth.reasons.enabled:
        return None
    config = {"generator": _generator_key(cfg), "reasons": cfg.synth.reasons.model_dump()}
    stage = Stage(Path(ingested.run_dir), "reasons", config,
                  {"prompt": Path(ingested.prompt_path), "targets": conversations.path("targets")})

    def work(out_dir: Path) -> dict:
        from genpi_core.reasons import run_reasons

        spec, _ = _spec(ingested.prompt_path)
        backend = _generator(cfg)
        try:
            return run_reasons(spec, conversations.path("targets"), backend, cfg.synth.reasons.sampling, out_dir)
        finally:
            backend.close()

    return _run(stage, {"reasons": REASONS_FILE, "quarantine": QUARANTINE_FILE}, work)


def dataset_stage(ingested: IngestOutput, inputs: StageOutput, conversations: StageOutput, cfg: PipelineConfig,
                  reasons: StageOutput | None = None) -> StageOutput:
    sources = {"prompt": Path(ingested.prompt_path), "inputs": inputs.path("inputs"), "targets": conversations.path("targets")}
    if reasons is not None:
        sources["reasons"] = reasons.path("reasons")
    stage = Stage(Path(ingested.run_dir), "dataset", cfg.dataset, sources)

    def work(out_dir: Path) -> dict:
        from genpi_core.dataset import run_dataset

        spec, _ = _spec(ingested.prompt_path)
        return run_dataset(spec, cfg.dataset, inputs.path("inputs"), conversations.path("targets"), out_dir,
                           reasons_path=reasons.path("reasons") if reasons is not None else None)

    files = {"train": TRAIN_FILE, "val": VAL_FILE, "test": TEST_FILE, "quarantine": QUARANTINE_FILE}
    return _run(stage, files, work)


def stage_name(stage: str, variant: str | None) -> str:
    """`train` / `evaluate`, or `train-<variant>` for an ablation trained beside the main adapter."""
    if variant is None:
        return stage
    if not _VARIANT.fullmatch(variant):
        raise ValueError(f"variant {variant!r}: use lowercase letters, digits and dashes (e.g. sft-only)")
    return f"{stage}-{variant}"


def train_stage(ingested: IngestOutput, dataset: StageOutput, cfg: PipelineConfig, variant: str | None = None) -> StageOutput:
    """Joint GenPI training in child process(es) (memory goes back when they exit); resumes from its checkpoint."""
    from genpi_core.finetune import ADAPTER_DIR, LOSS_PLOT, MERGED_DIR, METRICS_FILE

    config = {"model": cfg.model.model_dump(), "train": cfg.train.model_dump()}
    stage = Stage(Path(ingested.run_dir), stage_name("train", variant), config,
                  {"prompt": Path(ingested.prompt_path), "train": dataset.path("train"), "val": dataset.path("val")})

    def work(out_dir: Path) -> dict:
        from genpi_core.store import CHECKPOINT_DIR
        from genpi_core.train_job import TrainJob, launch

        job = TrainJob(model=cfg.model, train=cfg.train, train_path=str(dataset.path("train")),
                       val_path=str(dataset.path("val")), prompt_path=str(ingested.prompt_path), out_dir=str(out_dir))
        metrics = json.loads(launch(job, out_dir / CHECKPOINT_DIR).read_text())
        return {"steps": metrics["steps"], "sft_examples": metrics["train_examples"]["sft"],
                "pg_examples": metrics["train_examples"]["pg"], "final_loss": metrics["final_loss"]}

    files = {"adapter": ADAPTER_DIR, "log": TRAIN_LOG_FILE, "plot": LOSS_PLOT, "metrics": METRICS_FILE}
    if cfg.train.merge:
        files["merged"] = MERGED_DIR
    return _run(stage, files, work, resumable=True)


def evaluate_stage(ingested: IngestOutput, dataset: StageOutput, train: StageOutput, cfg: PipelineConfig,
                   variant: str | None = None) -> StageOutput:
    from genpi_core.evaluate import OUTPUT_FILES

    config = {"model": cfg.model.model_dump(), "backend": cfg.backend.model_dump(), "evaluate": cfg.evaluate.model_dump()}
    stage = Stage(
        Path(ingested.run_dir), stage_name("evaluate", variant), config,
        {"prompt": Path(ingested.prompt_path), "test": dataset.path("test"), "adapter": train.path("adapter")},
    )

    def work(out_dir: Path) -> dict:
        from genpi_core.evaluate import run_evaluate

        spec, version = _spec(ingested.prompt_path)
        metrics = json.loads(train.path("metrics").read_text())
        summary = run_evaluate(spec, version, cfg.model, cfg.backend, cfg.evaluate, dataset.path("test"),
                               train.path("adapter"), out_dir, train_metrics=metrics)
        v = summary["variants"]
        rows = {"base": v["base"]["compliance"], "teacher": v["teacher"]["compliance"],
                "student": v["student"]["compliance"], "recovery": summary.get("recovery")}
        if summary.get("recovery_ci"):
            rows["recovery_low"], rows["recovery_high"] = summary["recovery_ci"]
        if "student" in summary.get("leakage", {}):
            rows["student_leak_max_lcs_share"] = summary["leakage"]["student"]["max_lcs_share"]
        return rows

    return _run(stage, dict(OUTPUT_FILES), work)


def trained(ingested: IngestOutput, variant: str | None = None) -> StageOutput:
    """A finished train stage (train/ or train-<variant>/) as it is on disk, never retrained: for `genpi evaluate`."""
    from genpi_core.finetune import ADAPTER_DIR, LOSS_PLOT, METRICS_FILE

    stage = Stage(Path(ingested.run_dir), stage_name("train", variant), {}, {})
    if not stage.manifest_path.is_file() or not (stage.dir / ADAPTER_DIR).is_dir():
        raise ValueError(f"{stage.dir}: no finished training here (run `genpi train {ingested.run_dir}"
                         f"{f' --variant {variant}' if variant else ''}` first)")
    from genpi_core.store import tree_sha256

    changed = [rel for rel, sha in stage.manifest().outputs.items()
               if not (stage.dir / rel).exists() or tree_sha256(stage.dir / rel) != sha]
    if changed:
        raise ValueError(f"{stage.dir}: {', '.join(changed)} changed since training finished (retrain it)")
    files = {"adapter": ADAPTER_DIR, "log": TRAIN_LOG_FILE, "plot": LOSS_PLOT, "metrics": METRICS_FILE}
    return _output(stage, files, reused=True)


def trained_variants(run_dir: str | Path) -> list[str | None]:
    """Every finished adapter of a run: None for train/, then the names of train-<variant>/ folders, sorted."""
    run_dir = Path(run_dir)
    found: list[str | None] = [None] if (run_dir / "train" / "_manifest.json").is_file() else []
    for folder in sorted(run_dir.glob("train-*")):
        name = folder.name[len("train-"):]
        if (folder / "_manifest.json").is_file() and _VARIANT.fullmatch(name):
            found.append(name)
    return found


def promote_stage(ingested: IngestOutput, evaluated: StageOutput, train: StageOutput, cfg: PipelineConfig) -> StageOutput:
    """The gate: mark this version's adapter `promoted` for its prompt if it clears ``promote.*``."""
    from genpi_core.promote import DECISION_FILE, run_promote

    stage = Stage(Path(ingested.run_dir), "promote", cfg.promote,
                  {"summary": evaluated.path("summary"), "adapter": train.path("adapter")})

    def work(out_dir: Path) -> dict:
        return run_promote(ingested.name, ingested.version, evaluated.path("summary"), train.path("adapter"),
                           cfg.promote, out_dir)

    return _run(stage, {"decision": DECISION_FILE}, work)


def synthesize(spec_path: str | Path, cfg: PipelineConfig) -> tuple[IngestOutput, StageOutput, StageOutput, StageOutput | None]:
    """Only the data stages: inputs, role-swapped conversations, reasons."""
    ingested = ingest_stage(spec_path, cfg)
    inputs = inputs_stage(ingested, cfg)
    conversations = conversations_stage(ingested, inputs, cfg)
    return ingested, inputs, conversations, reasons_stage(ingested, conversations, cfg)


def run_pipeline(spec_path: str | Path, cfg: PipelineConfig) -> StageOutput:
    """The whole pipeline without Prefect; same stages, same run folders, same resume."""
    ingested, inputs, conversations, reasons = synthesize(spec_path, cfg)
    dataset = dataset_stage(ingested, inputs, conversations, cfg, reasons)
    train = train_stage(ingested, dataset, cfg)
    evaluated = evaluate_stage(ingested, dataset, train, cfg)
    promote_stage(ingested, evaluated, train, cfg)
    return evaluated


def load_run(run_dir: str | Path) -> tuple[IngestOutput, StageOutput]:
    """A finished run folder's ingest and dataset outputs, for training or evaluating it again (`genpi train`)."""
    from genpi_core.ingest import PROMPT_FILE, load_ingested

    run_dir = Path(run_dir)
    prompt_path = run_dir / "ingest" / PROMPT_FILE
    dataset = Stage(run_dir, "dataset", {}, {})
    if not prompt_path.is_file() or not dataset.manifest_path.is_file():
        raise ValueError(f"{run_dir}: not a run folder with a finished dataset stage (run `genpi synthesize` or "
                         "`genpi internalize` first)")
    for stage in (Stage(run_dir, "ingest", {}, {}), dataset):  # a hand-edited or damaged file is never used silently
        changed = stage.changed_outputs() if stage.manifest_path.is_file() else ["_manifest.json"]
        if changed:
            raise ValueError(f"{stage.dir}: {', '.join(changed)} missing or changed since the {stage.name} stage "
                             "finished (re-run `genpi synthesize` or `genpi internalize` to rebuild it)")
    spec, version = load_ingested(prompt_path)
    record = json.loads(prompt_path.read_text(encoding="utf-8"))
    ingested = IngestOutput(name=spec.name, version=version, prompt_tokens=int(record.get("prompt_tokens", 0)),
                            run_dir=str(run_dir), prompt_path=str(prompt_path))
    files = {"train": TRAIN_FILE, "val": VAL_FILE, "test": TEST_FILE, "quarantine": QUARANTINE_FILE}
    return ingested, _output(dataset, files, reused=True)

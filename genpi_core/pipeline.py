"""The stage chain, and the core's table of contents: one ``*_stage`` per stage, in pipeline order.

Each stage computes its key, skips itself when already complete, and returns paths. Prefect tasks wrap
these one-to-one; ``run_pipeline`` chains them without Prefect (for notebooks, scripts and
``accelerate launch``).

A stage takes its own config section plus the shared model/backend configs it uses, and its key covers
exactly those and its input files, so editing the training config re-runs training and evaluation but
reuses the synthesized data.

    ingest -> inputs -> conversations -> reasons -> dataset -> [teacher_logprobs] -> train -> evaluate -> promote
              (synth/)   (synth/)         (synth/)              (train/, with train.distill_weight > 0)

An edited prompt with a usable parent version runs the same chain incrementally (``plan``, genpi_core/
incremental/): each stage takes over what still holds from the parent's run, and ``safety_stage`` decides
after evaluation whether the result stands or a full run replaces it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from genpi_core.store.stage import Stage, file_lock
from schemas.artifacts import (
    CHECKPOINT_DIR,
    CONVERSATIONS_OUTPUTS,
    DATASET_OUTPUTS,
    EVALUATE_OUTPUTS,
    INPUTS_FILE,
    INPUTS_OUTPUTS,
    LINEAGE_FILE,
    MANIFEST,
    MERGED_DIR,
    PROMOTE_OUTPUTS,
    PROMPT_FILE,
    REASONS_FILE,
    REASONS_OUTPUTS,
    REPLAY_DIR,
    TARGETS_FILE,
    TASKS_OUTPUTS,
    TRAIN_OUTPUTS,
)
from schemas.config import (
    BackendConfig,
    DatasetConfig,
    EvaluateConfig,
    IngestConfig,
    InputsConfig,
    ModelConfig,
    PipelineConfig,
    PromoteConfig,
    ReasonsConfig,
    SynthConfig,
    TaskEvalConfig,
    TrainConfig,
)
from schemas.stages import IncrementalPlan, IngestOutput, StageOutput
from schemas.teacher_logprobs import TEACHER_LOGPROBS_OUTPUTS

_VARIANT = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")


def _output(stage: Stage, files: dict[str, str], reused: bool) -> StageOutput:
    rows = stage.manifest().rows
    return StageOutput(
        stage=stage.name,
        dir=str(stage.dir),
        files={k: str(stage.dir / v) for k, v in files.items()},
        rows=rows,
        reused=reused,
    )


def _run(stage: Stage, files: dict[str, str], work, resumable: bool = False) -> StageOutput:
    # the lock sits beside the stage folder (begin() empties the folder itself)
    with file_lock(stage.dir.parent / f".{stage.name}.lock"):
        if stage.is_complete():
            return _output(stage, files, reused=True)
        stage.begin(keep_checkpoint=resumable)
        rows = work(stage.dir)
        stage.finish(list(files.values()), rows=rows)
        return _output(stage, files, reused=False)


def _spec(prompt_path: str | Path):
    from genpi_core.ingest import load_ingested

    return load_ingested(prompt_path)


def _engine(model: ModelConfig, backend: BackendConfig):
    from genpi_core.generation.factory import make_backend

    return make_backend(model, backend)


def _engine_key(model: ModelConfig, backend: BackendConfig) -> dict:
    return {"model": model.model_dump(), "backend": backend.model_dump()}


def ingest_stage(spec_path: str | Path, cfg: IngestConfig, model: ModelConfig, runs_dir: str) -> IngestOutput:
    from genpi_core.ingest import run_ingest

    with file_lock(Path(runs_dir) / ".ingest.lock"):  # short; keeps two triggers of one version from racing
        result = run_ingest(spec_path, model, cfg, runs_dir)
    return IngestOutput(
        name=result.spec.name,
        version=result.version,
        prompt_tokens=result.prompt_tokens,
        run_dir=str(result.run_dir),
        prompt_path=str(result.prompt_path),
    )


def _parent(plan: IncrementalPlan | None) -> Path | None:
    """The parent's run folder when this run is incremental, else None."""
    return Path(plan.parent_run_dir) if plan is not None and plan.incremental and plan.parent_run_dir else None


def inputs_stage(
    ingested: IngestOutput,
    cfg: InputsConfig,
    model: ModelConfig,
    backend: BackendConfig,
    plan: IncrementalPlan | None = None,
) -> StageOutput:
    """Pseudo inputs. ``model``/``backend`` are the generator's (``synth.generator.resolve(model, backend)``).

    Incremental (``plan``): the parent's inputs, plus ``plan.edit_inputs`` new ones aimed at the edit."""
    parent = _parent(plan)
    needs_model = cfg.source != "pool" and (plan.edit_inputs > 0 if parent and plan else cfg.num_generated > 0)
    config = {"inputs": cfg.model_dump(), **({"generator": _engine_key(model, backend)} if needs_model else {})}
    sources = {"prompt": Path(ingested.prompt_path)}
    if parent is not None and plan is not None:
        config["incremental"] = {"parent": plan.parent_version12, "edit_inputs": plan.edit_inputs}
        sources |= {"parent_inputs": parent / "inputs" / INPUTS_FILE, "lineage": _lineage_path(ingested)}
    stage = Stage(Path(ingested.run_dir), "inputs", config, sources)

    from genpi_core.dataset import eval_inputs_problem

    spec, version = _spec(ingested.prompt_path)
    problem = eval_inputs_problem(spec, cfg)
    if problem:  # before any generation: the run could never be evaluated
        raise ValueError(f"{ingested.prompt_path}: {problem}")

    def work(out_dir: Path) -> dict:
        from genpi_core.synth.inputs import run_inputs

        parent_inputs, edit = None, None
        if parent is not None and plan is not None:
            diff = json.loads(sources["lineage"].read_text(encoding="utf-8")).get("diff") or {}
            parent_inputs, edit = sources["parent_inputs"], (diff, plan.edit_inputs)
        if not needs_model:
            return run_inputs(spec, version, cfg, None, out_dir, parent_inputs, edit)
        with _engine(model, backend) as generator:
            return run_inputs(spec, version, cfg, generator, out_dir, parent_inputs, edit)

    return _run(stage, INPUTS_OUTPUTS, work)


def conversations_stage(
    ingested: IngestOutput,
    inputs: StageOutput,
    cfg: SynthConfig,
    model: ModelConfig,
    backend: BackendConfig,
    plan: IncrementalPlan | None = None,
) -> StageOutput:
    """Role-swapped episodes (``synth.conversations`` with the ``synth.teacher``/``synth.base`` decoding);
    resumes from its per-turn checkpoint when the key matches. Incremental (``plan``): the parent's base
    replies are reused by context where the plan allows it, and unchanged teacher replies are counted."""
    config = {
        "model": model.model_dump(),
        "backend": backend.model_dump(),
        "teacher": cfg.teacher.model_dump(),
        "base": cfg.base.model_dump(),
        "conversations": cfg.conversations.model_dump(),
    }
    if config["conversations"].get("environment_kind") is None:  # keys from before environment kinds still match
        config["conversations"].pop("environment_kind", None)
    sources = {"prompt": Path(ingested.prompt_path), "inputs": inputs.path("inputs")}
    parent = _parent(plan)
    if parent is not None and plan is not None:
        from genpi_core.incremental.plan import reuses_base

        config["incremental"] = {"parent": plan.parent_version12, "reuse_base": reuses_base(plan)}
        sources["parent_targets"] = parent / "conversations" / TARGETS_FILE
    stage = Stage(Path(ingested.run_dir), "conversations", config, sources)

    def work(out_dir: Path) -> dict:
        from contextlib import ExitStack

        from genpi_core.synth.conversations import run_conversations

        spec, _ = _spec(ingested.prompt_path)
        parent_teacher, base_cache = None, None
        if "parent_targets" in sources:
            from genpi_core.incremental import reuse as parent_data

            targets = parent_data.parent_targets(sources["parent_targets"])
            parent_teacher = parent_data.teacher_by_context(targets)
            if config["incremental"]["reuse_base"]:
                base_cache = parent_data.base_cache(targets)
        max_turns = cfg.conversations.max_turns or spec.conversation.max_turns
        env_model, env_backend = cfg.conversations.environment_engine.resolve(model, backend)
        with ExitStack() as engines:
            agent = engines.enter_context(_engine(model, backend))
            separate = _engine_key(env_model, env_backend) != _engine_key(model, backend)
            environment = engines.enter_context(_engine(env_model, env_backend)) if separate else agent
            return run_conversations(
                spec,
                inputs.path("inputs"),
                agent,
                cfg.teacher,
                cfg.base,
                cfg.conversations.environment,
                max_turns,
                out_dir,
                environment_backend=environment,
                environment_kind=cfg.conversations.environment_kind or spec.environment.kind,
                base_cache=base_cache,
                parent_teacher=parent_teacher,
            )

    return _run(stage, CONVERSATIONS_OUTPUTS, work, resumable=True)


def reasons_stage(
    ingested: IngestOutput,
    conversations: StageOutput,
    cfg: ReasonsConfig,
    model: ModelConfig,
    backend: BackendConfig,
    plan: IncrementalPlan | None = None,
) -> StageOutput | None:
    """Why the prompt changes each reply (feeds prompt generation); ``model``/``backend`` are the generator's.

    Incremental (``plan``): the parent's reason is kept where the example is unchanged, when the parent had
    reasons from the same generator and settings."""
    if not cfg.enabled:
        return None
    config = {"generator": _engine_key(model, backend), "reasons": cfg.model_dump()}
    sources = {"prompt": Path(ingested.prompt_path), "targets": conversations.path("targets")}
    parent = _parent(plan)
    if parent is not None and plan is not None and _same_config(parent / "reasons", config):
        config["incremental"] = {"parent": plan.parent_version12}
        sources |= {
            "parent_targets": parent / "conversations" / TARGETS_FILE,
            "parent_reasons": parent / "reasons" / REASONS_FILE,
        }
    stage = Stage(Path(ingested.run_dir), "reasons", config, sources)

    def work(out_dir: Path) -> dict:
        from genpi_core.synth.reasons import run_reasons

        spec, _ = _spec(ingested.prompt_path)
        reuse = None
        if "parent_reasons" in sources:
            from genpi_core.incremental import reuse as parent_data

            targets = parent_data.parent_targets(sources["parent_targets"])
            reuse = parent_data.reason_cache(targets, sources["parent_reasons"])
        with _engine(model, backend) as generator:
            return run_reasons(spec, conversations.path("targets"), generator, cfg.sampling, out_dir, reuse=reuse)

    return _run(stage, REASONS_OUTPUTS, work)


def dataset_stage(
    ingested: IngestOutput,
    inputs: StageOutput,
    conversations: StageOutput,
    cfg: DatasetConfig,
    reasons: StageOutput | None = None,
    variant: str | None = None,
) -> StageOutput:
    """Validated train/val/test tables (``dataset-<variant>/`` for a dataset ablation beside the main one)."""
    sources = {
        "prompt": Path(ingested.prompt_path),
        "inputs": inputs.path("inputs"),
        "targets": conversations.path("targets"),
    }
    if reasons is not None:
        sources["reasons"] = reasons.path("reasons")
    stage = Stage(Path(ingested.run_dir), stage_name("dataset", variant), cfg, sources)

    def work(out_dir: Path) -> dict:
        from genpi_core.dataset import run_dataset

        spec, _ = _spec(ingested.prompt_path)
        return run_dataset(
            spec,
            cfg,
            inputs.path("inputs"),
            conversations.path("targets"),
            out_dir,
            reasons_path=reasons.path("reasons") if reasons is not None else None,
        )

    return _run(stage, DATASET_OUTPUTS, work)


def stage_name(stage: str, variant: str | None) -> str:
    """`dataset` / `train` / `evaluate`, or `train-<variant>` for an ablation trained beside the main adapter."""
    if variant is None:
        return stage
    if not _VARIANT.fullmatch(variant):
        raise ValueError(f"variant {variant!r}: use lowercase letters, digits and dashes (e.g. sft-only)")
    return f"{stage}-{variant}"


def teacher_logprobs_stage(
    ingested: IngestOutput, dataset: StageOutput, cfg: TrainConfig, model: ModelConfig
) -> StageOutput:
    """The prompted teacher's top-k on every SFT target token, once per (model, train table, k): the distillation
    term's input. One folder per dataset (``teacher_logprobs-<variant>`` beside ``dataset-<variant>``)."""
    config = {"model": model.model_dump(), "top_k": cfg.distill_top_k}
    name = "teacher_logprobs" + dataset.stage.removeprefix("dataset")
    sources = {"prompt": Path(ingested.prompt_path), "train": dataset.path("train")}
    stage = Stage(Path(ingested.run_dir), name, config, sources)

    def work(out_dir: Path) -> dict:
        from genpi_core.prompt.views import prompt_messages
        from genpi_core.train.teacher_logprobs import run_teacher_logprobs

        spec, _ = _spec(ingested.prompt_path)
        return run_teacher_logprobs(
            model, dataset.path("train"), prompt_messages(spec.prompt), cfg.distill_top_k, out_dir
        )

    return _run(stage, TEACHER_LOGPROBS_OUTPUTS, work)


def train_stage(
    ingested: IngestOutput,
    dataset: StageOutput,
    cfg: TrainConfig,
    model: ModelConfig,
    variant: str | None = None,
    teacher_logprobs: StageOutput | None = None,
    plan: IncrementalPlan | None = None,
) -> StageOutput:
    """Joint GenPI training in child process(es) (memory goes back when they exit); resumes from its checkpoint.

    With the distillation term on, the teacher_logprobs stage runs first (or is reused) unless given.
    Incremental (``plan``): warm-started from the parent's adapter unless ``train.warm_start`` names one."""
    parent = _parent(plan)
    if parent is not None and cfg.warm_start.from_adapter is None:
        warm = cfg.warm_start.model_copy(update={"from_adapter": str(parent / "train" / TRAIN_OUTPUTS["adapter"])})
        cfg = cfg.model_copy(update={"warm_start": warm})
    config = {"model": model.model_dump(), "train": cfg.model_dump()}
    sources = {"prompt": Path(ingested.prompt_path), "train": dataset.path("train"), "val": dataset.path("val")}
    if cfg.distill_weight > 0:
        teacher_logprobs = teacher_logprobs or teacher_logprobs_stage(ingested, dataset, cfg, model)
        sources["teacher_logprobs"] = teacher_logprobs.path("logprobs")
    if cfg.warm_start.from_adapter and Path(cfg.warm_start.from_adapter).is_dir():  # a changed parent re-trains
        sources["warm_start"] = Path(cfg.warm_start.from_adapter)
    stage = Stage(Path(ingested.run_dir), stage_name("train", variant), config, sources)

    def work(out_dir: Path) -> dict:
        from genpi_core.train.job import TrainJob, launch

        job = TrainJob(
            model=model,
            train=cfg,
            train_path=str(dataset.path("train")),
            val_path=str(dataset.path("val")),
            prompt_path=str(ingested.prompt_path),
            teacher_logprobs_path=str(sources.get("teacher_logprobs", "")),
            out_dir=str(out_dir),
        )
        metrics = json.loads(launch(job, out_dir / CHECKPOINT_DIR).read_text())
        return {
            "steps": metrics["steps"],
            "sft_examples": metrics["train_examples"]["sft"],
            "pg_examples": metrics["train_examples"]["pg"],
            "final_loss": metrics["final_loss"],
        }

    files = dict(TRAIN_OUTPUTS)
    if cfg.merge:
        files["merged"] = MERGED_DIR
    return _run(stage, files, work, resumable=True)


def evaluate_stage(
    ingested: IngestOutput,
    dataset: StageOutput,
    train: StageOutput,
    cfg: EvaluateConfig,
    model: ModelConfig,
    backend: BackendConfig,
    variant: str | None = None,
    plan: IncrementalPlan | None = None,
) -> StageOutput:
    """The held-out evaluation. Incremental (``plan``): the parent's record of the base model's greedy replies
    seeds this run's, so base replies (which never see the prompt) are replayed, not generated again."""
    from genpi_core.evaluate.summary import METRICS_VERSION

    config = {
        "model": model.model_dump(),
        "backend": backend.model_dump(),
        "evaluate": cfg.model_dump(),
        "metrics": METRICS_VERSION,  # an evaluation scored by older metrics is recomputed, not reused
    }
    stage = Stage(
        Path(ingested.run_dir),
        stage_name("evaluate", variant),
        config,
        {"prompt": Path(ingested.prompt_path), "test": dataset.path("test"), "adapter": train.path("adapter")},
    )

    def work(out_dir: Path) -> dict:
        from genpi_core.evaluate.run import run_evaluate

        spec, version = _spec(ingested.prompt_path)
        metrics = json.loads(train.path("metrics").read_text())
        summary = run_evaluate(
            spec,
            version,
            model,
            backend,
            cfg,
            dataset.path("test"),
            train.path("adapter"),
            out_dir,
            train_metrics=metrics,
            # a local engine's greedy replies are a function of its inputs; a remote server's model may change
            replay_dir=_replay_dir(ingested, plan) if backend.kind != "openai" else None,
        )
        v = summary.variants
        rows = {  # the headline: strict success and its recovery; format and task recovery beside it
            "base": v["base"].strict_success,
            "teacher": v["teacher"].strict_success,
            "student": v["student"].strict_success,
            "recovery": summary.recovery,
            "recovery_format": summary.recovery_format,
            "recovery_task": summary.recovery_task,
            "student_compliance": v["student"].compliance,
            "teacher_cut": v["teacher"].cut,
            "student_cut": v["student"].cut,
            "student_collapsed": int(summary.collapse.collapsed) if summary.collapse else None,
        }
        if summary.recovery_ci:
            rows["recovery_low"], rows["recovery_high"] = summary.recovery_ci
        if summary.leakage and "student" in summary.leakage:
            rows["student_leak_max_lcs_share"] = summary.leakage["student"].max_lcs_share
        return rows

    return _run(stage, EVALUATE_OUTPUTS, work)


def trained(ingested: IngestOutput, variant: str | None = None) -> StageOutput:
    """A finished train stage (train/ or train-<variant>/) as it is on disk, never retrained: for `genpi evaluate`."""
    stage = Stage(Path(ingested.run_dir), stage_name("train", variant), {}, {})
    if not stage.manifest_path.is_file() or not (stage.dir / TRAIN_OUTPUTS["adapter"]).is_dir():
        raise ValueError(
            f"{stage.dir}: no finished training here (run `genpi train {ingested.run_dir}"
            f"{f' --variant {variant}' if variant else ''}` first)"
        )
    from genpi_core.store.stage import tree_sha256

    changed = [
        rel
        for rel, sha in stage.manifest().outputs.items()
        if not (stage.dir / rel).exists() or tree_sha256(stage.dir / rel) != sha
    ]
    if changed:
        raise ValueError(f"{stage.dir}: {', '.join(changed)} changed since training finished (retrain it)")
    return _output(stage, TRAIN_OUTPUTS, reused=True)


def trained_variants(run_dir: str | Path) -> list[str | None]:
    """Every finished adapter of a run: None for train/, then the names of train-<variant>/ folders, sorted."""
    run_dir = Path(run_dir)
    found: list[str | None] = [None] if (run_dir / "train" / MANIFEST).is_file() else []
    for folder in sorted(run_dir.glob("train-*")):
        name = folder.name[len("train-") :]
        if (folder / MANIFEST).is_file() and _VARIANT.fullmatch(name):
            found.append(name)
    return found


def promote_stage(
    ingested: IngestOutput, evaluated: StageOutput, train: StageOutput, cfg: PromoteConfig
) -> StageOutput:
    """The gate: mark this version's adapter `promoted` for its prompt if it clears ``promote.*``."""
    from genpi_core.promote import run_promote

    stage = Stage(
        Path(ingested.run_dir), "promote", cfg, {"summary": evaluated.path("summary"), "adapter": train.path("adapter")}
    )

    def work(out_dir: Path) -> dict:
        return run_promote(
            ingested.name, ingested.version, evaluated.path("summary"), train.path("adapter"), cfg, out_dir
        )

    return _run(stage, PROMOTE_OUTPUTS, work)


def task_set_name(tasks_path: str | Path) -> str:
    """A task file's short name for folder names: its folder's name, lowercased, dashes for the rest."""
    path = Path(tasks_path)
    raw = path.parent.name if path.parent.name else path.stem
    return re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[:30] or "tasks"


def task_eval_stage(
    ingested: IngestOutput,
    train: StageOutput | None,
    tasks_path: str | Path,
    cfg: TaskEvalConfig,
    model: ModelConfig,
    backend: BackendConfig,
    variant: str | None = None,
    allowed_root: str | Path | None = None,
) -> StageOutput:
    """Task success in the shell sandbox for base, teacher and the adapter (``tasks-<set>[-<variant>]/``).

    The key covers the task file and every script beside it, the adapter, the model and ``cfg``."""
    from genpi_core.environment.os_tasks import load_tasks

    tasks = load_tasks(tasks_path, allowed_root)  # a malformed file fails here, before any model loads
    folder = Path(tasks_path).resolve().parent
    sources = {"prompt": Path(ingested.prompt_path), "tasks": Path(tasks_path).resolve()}
    sources |= {f"script:{p.relative_to(folder)}": p for p in sorted(folder.rglob("*")) if p.is_file()}
    if train is not None:
        sources["adapter"] = train.path("adapter")
    name = task_set_name(tasks_path) + (f"-{variant}" if variant else "")
    config = {"model": model.model_dump(), "backend": backend.model_dump(), "tasks": cfg.model_dump()}
    stage = Stage(Path(ingested.run_dir), stage_name("tasks", name), config, sources)

    def work(out_dir: Path) -> dict:
        from genpi_core.evaluate.tasks import run_task_eval

        spec, _ = _spec(ingested.prompt_path)
        summary = run_task_eval(
            spec, tasks, model, backend, cfg, train.path("adapter") if train is not None else None, out_dir
        )
        rows = {f"{v}_success": s["success"] for v, s in summary["variants"].items()}
        return rows | {"solvable": summary["solvable"], "success_ratio": summary["success_ratio"]}

    return _run(stage, TASKS_OUTPUTS, work)


def synthesize(
    spec_path: str | Path, cfg: PipelineConfig, plan: IncrementalPlan | None = None
) -> tuple[IngestOutput, StageOutput, StageOutput, StageOutput | None]:
    """Only the data stages: inputs, role-swapped conversations, reasons (from the parent's, with ``plan``)."""
    ingested = ingest_stage(spec_path, cfg.ingest, cfg.model, cfg.runs_dir)
    return (ingested, *_synthesize_ingested(ingested, cfg, plan))


def _synthesize_ingested(
    ingested: IngestOutput, cfg: PipelineConfig, plan: IncrementalPlan | None
) -> tuple[StageOutput, StageOutput, StageOutput | None]:
    generator = cfg.synth.generator.resolve(cfg.model, cfg.backend)
    inputs = inputs_stage(ingested, cfg.synth.inputs, *generator, plan=plan)
    conversations = conversations_stage(ingested, inputs, cfg.synth, cfg.model, cfg.backend, plan=plan)
    reasons = reasons_stage(ingested, conversations, cfg.synth.reasons, *generator, plan=plan)
    return inputs, conversations, reasons


def plan_stage(spec_path: str | Path, cfg: PipelineConfig) -> tuple[IngestOutput, IncrementalPlan]:
    """Ingest, then decide: a full run, or incremental from the parent (``<run>/incremental.json``)."""
    from genpi_core.incremental.plan import plan_incremental

    ingested = ingest_stage(spec_path, cfg.ingest, cfg.model, cfg.runs_dir)
    return ingested, plan_incremental(ingested, cfg)


def build(
    ingested: IngestOutput, cfg: PipelineConfig, plan: IncrementalPlan | None = None
) -> tuple[StageOutput, StageOutput]:
    """Synthesis, dataset, training and evaluation of an ingested version (no gate): (train, evaluate)."""
    inputs, conversations, reasons = _synthesize_ingested(ingested, cfg, plan)
    dataset = dataset_stage(ingested, inputs, conversations, cfg.dataset, reasons)
    train = train_stage(ingested, dataset, cfg.train, cfg.model, plan=plan)
    return train, evaluate_stage(ingested, dataset, train, cfg.evaluate, cfg.model, cfg.backend, plan=plan)


def safety_stage(ingested: IngestOutput, plan: IncrementalPlan, evaluated: StageOutput, cfg: PipelineConfig):
    """After an incremental build: keep it, or record why a full run must replace it. Returns the updated plan."""
    from genpi_core.incremental.plan import record_outcome
    from genpi_core.incremental.safety import safety_verdict

    problem, numbers = safety_verdict(plan, evaluated, cfg)
    if problem is None or not cfg.incremental.fallback:
        return record_outcome(ingested.run_dir, plan, "kept", problem, numbers)
    return record_outcome(ingested.run_dir, plan, "fell back", problem, numbers)


def run_pipeline(spec_path: str | Path, cfg: PipelineConfig) -> StageOutput:
    """The whole pipeline without Prefect; same stages, same run folders, same resume.

    An edited prompt with a usable parent is built incrementally first (genpi_core/incremental/); when a
    safety net trips, a full run replaces it, and ``<run>/incremental.json`` says why."""
    ingested, plan = plan_stage(spec_path, cfg)
    if plan.active():
        train, evaluated = build(ingested, cfg, plan)
        plan = safety_stage(ingested, plan, evaluated, cfg)
    if not plan.active():
        train, evaluated = build(ingested, cfg)
    promote_stage(ingested, evaluated, train, cfg.promote)
    return evaluated


def _replay_dir(ingested: IngestOutput, plan: IncrementalPlan | None) -> Path:
    """This run's replay record, seeded from the parent's when incremental: its files are keyed by everything a
    greedy reply depends on (genpi_core/generation/replay.py), so a copied file is only ever read for the very
    request it answered; the teacher's requests hold the new prompt and miss."""
    import shutil

    folder = Path(ingested.run_dir) / REPLAY_DIR
    parent = _parent(plan)
    if parent is not None and (parent / REPLAY_DIR).is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        for record in (parent / REPLAY_DIR).glob("*.json"):
            if not (folder / record.name).exists():
                shutil.copy2(record, folder / record.name)
    return folder


def _lineage_path(ingested: IngestOutput) -> Path:
    return Path(ingested.run_dir) / "ingest" / LINEAGE_FILE


def _same_config(stage_dir: Path, config: dict) -> bool:
    """The finished stage in ``stage_dir`` ran with ``config`` (its outputs intact): its rows may be reused."""
    stage = Stage(stage_dir.parent, stage_dir.name, {}, {})
    if not stage.manifest_path.is_file():
        return False
    try:
        recorded = {k: v for k, v in stage.manifest().config.items() if k != "incremental"}  # a parent may be one too
        return recorded == json.loads(json.dumps(config, default=str)) and not stage.changed_outputs()
    except ValueError:
        return False


def load_run(run_dir: str | Path) -> tuple[IngestOutput, StageOutput]:
    """A finished run folder's ingest and dataset outputs, for training or evaluating it again (`genpi train`)."""
    from genpi_core.ingest import load_ingested

    run_dir = Path(run_dir)
    prompt_path = run_dir / "ingest" / PROMPT_FILE
    dataset = Stage(run_dir, "dataset", {}, {})
    if not prompt_path.is_file() or not dataset.manifest_path.is_file():
        raise ValueError(
            f"{run_dir}: not a run folder with a finished dataset stage (run `genpi synthesize` or "
            "`genpi internalize` first)"
        )
    for stage in (Stage(run_dir, "ingest", {}, {}), dataset):  # a hand-edited or damaged file is never used silently
        changed = stage.changed_outputs() if stage.manifest_path.is_file() else [MANIFEST]
        if changed:
            raise ValueError(
                f"{stage.dir}: {', '.join(changed)} missing or changed since the {stage.name} stage "
                "finished (re-run `genpi synthesize` or `genpi internalize` to rebuild it)"
            )
    spec, version = load_ingested(prompt_path)
    record = json.loads(prompt_path.read_text(encoding="utf-8"))
    ingested = IngestOutput(
        name=spec.name,
        version=version,
        prompt_tokens=int(record.get("prompt_tokens", 0)),
        run_dir=str(run_dir),
        prompt_path=str(prompt_path),
    )
    return ingested, _output(dataset, DATASET_OUTPUTS, reused=True)

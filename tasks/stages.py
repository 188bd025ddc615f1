"""Thin Prefect tasks: one per stage, each calling exactly one genpi_core stage function with the same
arguments (its config section plus the shared model/backend configs it uses).

Tasks pass paths (StageOutput), never tables or models. Resume lives in genpi_core's run store
(a finished stage is skipped by its manifest), so Prefect's own result cache is off: it would
have to hash configs and could disagree with the store about what is finished.
Tags feed the concurrency limits `genpi server up` creates (genpi-generation, genpi-training: 1 each by
default); generation tasks retry, but only on transient HTTP failures (``_transient``).
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from genpi_core import pipeline
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


def _transient(task, task_run, state) -> bool:
    """Retry only what a retry can fix: a generation server that kept failing or was unreachable.

    A bad spec, a table that fails its schema or a 4xx refusal fails the same way again, so those never retry.
    """
    from genpi_core.generation.base import GenerationError

    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # the result could not be read back: do not guess
        return False
    if isinstance(exc, GenerationError):
        return "refused with HTTP 4" not in str(exc)
    return isinstance(exc, (ConnectionError, TimeoutError))


# HTTP generation (backend.kind=openai) can fail transiently; retried conversations resume from their checkpoint.
_RETRY = {"retries": 2, "retry_delay_seconds": [10, 60], "retry_condition_fn": _transient}


def _log(out: StageOutput) -> StageOutput:
    get_run_logger().info("%s %s: %s (%s)", out.stage, "reused" if out.reused else "done", out.dir, out.rows)
    return out


@task(name="ingest", cache_policy=NONE)
def ingest_task(spec_path: str, cfg: IngestConfig, model: ModelConfig, runs_dir: str) -> IngestOutput:
    out = pipeline.ingest_stage(spec_path, cfg, model, runs_dir)
    get_run_logger().info("prompt %s version %s: %d tokens", out.name, out.version[:12], out.prompt_tokens)
    return out


@task(name="plan", cache_policy=NONE)
def plan_task(spec_path: str, cfg: PipelineConfig) -> tuple[IngestOutput, IncrementalPlan]:
    ingested, plan = pipeline.plan_stage(spec_path, cfg)
    get_run_logger().info(
        "prompt %s version %s: %d tokens; %s build: %s",
        ingested.name,
        ingested.version[:12],
        ingested.prompt_tokens,
        plan.mode,
        plan.why,
    )
    return ingested, plan


@task(name="inputs", cache_policy=NONE, tags=["genpi-generation"], **_RETRY)
def inputs_task(
    ingested: IngestOutput,
    cfg: InputsConfig,
    model: ModelConfig,
    backend: BackendConfig,
    plan: IncrementalPlan | None = None,
) -> StageOutput:
    return _log(pipeline.inputs_stage(ingested, cfg, model, backend, plan=plan))


@task(name="conversations", cache_policy=NONE, tags=["genpi-generation"], **_RETRY)
def conversations_task(
    ingested: IngestOutput,
    inputs: StageOutput,
    cfg: SynthConfig,
    model: ModelConfig,
    backend: BackendConfig,
    plan: IncrementalPlan | None = None,
) -> StageOutput:
    return _log(pipeline.conversations_stage(ingested, inputs, cfg, model, backend, plan=plan))


@task(name="reasons", cache_policy=NONE, tags=["genpi-generation"], **_RETRY)
def reasons_task(
    ingested: IngestOutput,
    conversations: StageOutput,
    cfg: ReasonsConfig,
    model: ModelConfig,
    backend: BackendConfig,
    plan: IncrementalPlan | None = None,
) -> StageOutput | None:
    out = pipeline.reasons_stage(ingested, conversations, cfg, model, backend, plan=plan)
    return _log(out) if out is not None else None


@task(name="dataset", cache_policy=NONE)
def dataset_task(
    ingested: IngestOutput,
    inputs: StageOutput,
    conversations: StageOutput,
    cfg: DatasetConfig,
    reasons: StageOutput | None = None,
) -> StageOutput:
    return _log(pipeline.dataset_stage(ingested, inputs, conversations, cfg, reasons))


@task(name="teacher_logprobs", cache_policy=NONE, tags=["genpi-generation"])
def teacher_logprobs_task(
    ingested: IngestOutput, dataset: StageOutput, cfg: TrainConfig, model: ModelConfig
) -> StageOutput:
    return _log(pipeline.teacher_logprobs_stage(ingested, dataset, cfg, model))


@task(name="train", cache_policy=NONE, tags=["genpi-training"])
def train_task(
    ingested: IngestOutput,
    dataset: StageOutput,
    cfg: TrainConfig,
    model: ModelConfig,
    plan: IncrementalPlan | None = None,
) -> StageOutput:
    # the distillation term reads the teacher's log-probs from a stage of their own: a task run of its own in the UI
    logprobs = teacher_logprobs_task(ingested, dataset, cfg, model) if cfg.distill_weight > 0 else None
    return _log(pipeline.train_stage(ingested, dataset, cfg, model, teacher_logprobs=logprobs, plan=plan))


@task(name="safety-nets", cache_policy=NONE)
def safety_task(
    ingested: IngestOutput, plan: IncrementalPlan, evaluated: StageOutput, cfg: PipelineConfig
) -> IncrementalPlan:
    """Keep the incremental result, or say why a full run replaces it (genpi_core/incremental/safety.py)."""
    plan = pipeline.safety_stage(ingested, plan, evaluated, cfg)
    message = f"incremental build of {ingested.name} {ingested.version[:12]}: {plan.outcome}"
    if plan.fallback_reason:
        message += f" ({plan.fallback_reason})"
    (get_run_logger().warning if plan.outcome == "fell back" else get_run_logger().info)(message)
    return plan


@task(name="task-success", cache_policy=NONE, tags=["genpi-generation"])
def task_eval_task(
    ingested: IngestOutput,
    train: StageOutput,
    tasks_path: str,
    cfg: TaskEvalConfig,
    model: ModelConfig,
    backend: BackendConfig,
    allowed_root: str,
) -> StageOutput:
    return _log(pipeline.task_eval_stage(ingested, train, tasks_path, cfg, model, backend, allowed_root=allowed_root))


@task(name="evaluate", cache_policy=NONE, tags=["genpi-generation"], **_RETRY)
def evaluate_task(
    ingested: IngestOutput,
    dataset: StageOutput,
    train: StageOutput,
    cfg: EvaluateConfig,
    model: ModelConfig,
    backend: BackendConfig,
    plan: IncrementalPlan | None = None,
) -> StageOutput:
    return _log(pipeline.evaluate_stage(ingested, dataset, train, cfg, model, backend, plan=plan))


@task(name="promote", cache_policy=NONE)
def promote_task(ingested: IngestOutput, evaluated: StageOutput, train: StageOutput, cfg: PromoteConfig) -> StageOutput:
    out = pipeline.promote_stage(ingested, evaluated, train, cfg)
    get_run_logger().info(
        "promote %s %s: %s",
        ingested.name,
        ingested.version[:12],
        "promoted" if out.rows.get("promoted") else "not promoted (below the bar)",
    )
    if out.rows.get("promoted") and not out.reused:
        emit_promoted(ingested)  # a running `genpi serve` swaps it in (deployment serve-swap)
    return _log(out)


PROMOTED_EVENT = "genpi.adapter.promoted"


def emit_promoted(ingested: IngestOutput) -> None:
    from prefect.events import emit_event

    from tasks.watch import prompt_resource

    emit_event(
        event=PROMOTED_EVENT,
        resource=prompt_resource(ingested.name, ingested.version),
        payload={"name": ingested.name, "version": ingested.version, "version12": ingested.version[:12]},
    )


def spec_run_name(spec_path: str) -> str:
    """`<prompt name>-<version12>` of the spec at ``spec_path`` (``invalid-spec-<stem>`` when it does not load),
    so the Prefect UI says which prompt version a flow run built."""
    from pathlib import Path

    from genpi_core.ingest import SpecError, load_spec, spec_version

    try:
        spec = load_spec(spec_path)
    except SpecError:
        return f"invalid-spec-{Path(spec_path).stem}"
    return f"{spec.name}-{spec_version(spec)[:12]}"

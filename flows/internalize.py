"""The flows: `internalize` (prompt spec in, evaluated and gated LoRA adapter out) and one flow per stage.

Each stage flow runs the stages it depends on first; finished ones are reused from the run store
(manifests keyed by prompt version, config section and input hashes), so `genpi-train` on a synthesized
run only trains, and any flow re-run on a finished version does no work. Flow runs are named
`<prompt name>-<version12>`.

An edited prompt whose parent version is usable is built incrementally (genpi_core/incremental/): the
`plan` task decides and says why, the run is renamed `<name>-<version12> (incremental from <parent12>)`,
the stages take over what still holds from the parent, and `safety-nets` either keeps the result or falls
back to a full build, with the reason in the report. A newer edit of the same prompt cancels this run.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from schemas.config import PipelineConfig
from schemas.stages import IncrementalPlan, IngestOutput, StageOutput
from tasks.artifacts import publish_task
from tasks.incremental import cancel_superseded, name_run
from tasks.stages import (
    conversations_task,
    dataset_task,
    evaluate_task,
    ingest_task,
    inputs_task,
    plan_task,
    promote_task,
    reasons_task,
    safety_task,
    spec_run_name,
    task_eval_task,
    train_task,
)
from tasks.trust import trusted_spec_path


def _run_name() -> str:
    from prefect.runtime import flow_run

    return spec_run_name(flow_run.parameters["spec_path"])


def _plan(spec_path: str, c: PipelineConfig) -> tuple[IngestOutput, IncrementalPlan | None]:
    """Ingest and decide how to build: the plan to build with when incremental, else None."""
    spec_path = str(Path(trusted_spec_path(spec_path, c)))  # deployment runs: the service's policy (tasks/trust.py)
    ingested, plan = plan_task(spec_path, c)
    return ingested, plan.active()


def _synthesize(
    ingested: IngestOutput, c: PipelineConfig, plan: IncrementalPlan | None = None
) -> tuple[StageOutput, StageOutput, StageOutput | None]:
    """The synth stages of an ingested version; the generator (pseudo inputs, reasons) may be another engine."""
    generator = c.synth.generator.resolve(c.model, c.backend)
    inputs = inputs_task(ingested, c.synth.inputs, *generator, plan=plan)
    conversations = conversations_task(ingested, inputs, c.synth, c.model, c.backend, plan=plan)  # role-swapped
    reasons = reasons_task(ingested, conversations, c.synth.reasons, *generator, plan=plan)  # feeds PG
    return inputs, conversations, reasons


def _dataset(ingested: IngestOutput, c: PipelineConfig, plan: IncrementalPlan | None = None) -> StageOutput:
    """Synthesis, then the dataset stage (checked splits and quarantine); each is reused when already finished."""
    inputs, conversations, reasons = _synthesize(ingested, c, plan)
    return dataset_task(ingested, inputs, conversations, c.dataset, reasons)


def _build(ingested: IngestOutput, c: PipelineConfig, plan: IncrementalPlan | None) -> tuple[StageOutput, StageOutput]:
    """(adapter, evaluation) of an ingested version, incrementally with ``plan``, else in full."""
    dataset = _dataset(ingested, c, plan)
    adapter = train_task(ingested, dataset, c.train, c.model, plan=plan)
    return adapter, evaluate_task(ingested, dataset, adapter, c.evaluate, c.model, c.backend, plan=plan)


@flow(name="genpi-internalize", flow_run_name=_run_name, log_prints=True)
def internalize_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> StageOutput:
    """Internalize the prompt in `spec_path`: synthesize data, train the adapter, evaluate it, gate it.
    An edit of a prompt already internalized is built incrementally from its parent when that is safe."""
    ingested, plan = _plan(spec_path, config)
    cancel_superseded(ingested)
    if plan is not None:
        name_run(plan)
        adapter, evaluated = _build(ingested, config, plan)
        plan = safety_task(ingested, plan, evaluated, config).active()
    if plan is None:
        adapter, evaluated = _build(ingested, config, None)
    promoted = promote_task(ingested, evaluated, adapter, config.promote)
    publish_task(ingested, evaluated, promoted)
    return evaluated


@flow(name="genpi-ingest", flow_run_name=_run_name, log_prints=True)
def ingest_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> IngestOutput:
    """Validate the spec, version it and count its prompt tokens (fails fast on a bad spec)."""
    spec_path = trusted_spec_path(spec_path, config)
    return ingest_task(str(Path(spec_path)), config.ingest, config.model, config.runs_dir)


@flow(name="genpi-synthesize", flow_run_name=_run_name, log_prints=True)
def synthesize_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> StageOutput:
    """Only the data: inputs, role-swapped conversations with teacher and base outputs, reasons."""
    ingested, plan = _plan(spec_path, config)
    return _synthesize(ingested, config, plan)[1]


@flow(name="genpi-dataset", flow_run_name=_run_name, log_prints=True)
def dataset_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> StageOutput:
    """Synthesized data checked and split into train/val/test, failures quarantined with reasons."""
    ingested, plan = _plan(spec_path, config)
    return _dataset(ingested, config, plan)


@flow(name="genpi-train", flow_run_name=_run_name, log_prints=True)
def train_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> StageOutput:
    """The adapter (data stages reused or built first)."""
    ingested, plan = _plan(spec_path, config)
    return train_task(ingested, _dataset(ingested, config, plan), config.train, config.model, plan=plan)


@flow(name="genpi-evaluate", flow_run_name=_run_name, log_prints=True)
def evaluate_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> StageOutput:
    """(Re-)evaluate a version's adapter with `evaluate.*` and gate it; changing only `evaluate.*` or
    `promote.*` re-runs only evaluation and the gate."""
    return internalize_pipeline.fn(spec_path, config)


@flow(name="genpi-task-success", flow_run_name=_run_name, log_prints=True)
def task_success_pipeline(
    spec_path: str, tasks_path: str = "examples/tasks/genpi_os/tasks.json", config: PipelineConfig = PipelineConfig()
) -> StageOutput:
    """Task success in a bubblewrap-sandboxed shell: base, teacher and the version's adapter play the AgentBench
    OS-format tasks in `tasks_path` (inside the worker's working directory); the adapter is trained first if needed."""
    ingested, plan = _plan(spec_path, config)
    adapter = train_task(ingested, _dataset(ingested, config, plan), config.train, config.model, plan=plan)
    return task_eval_task(
        ingested, adapter, tasks_path, config.tasks, config.model, config.backend, allowed_root=str(Path.cwd())
    )

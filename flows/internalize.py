"""The flows: `internalize` (prompt spec in, evaluated and gated LoRA adapter out) and one flow per stage.

Each stage flow runs the stages it depends on first; finished ones are reused from the run store
(manifests keyed by prompt version, config slice and input hashes), so `genpi-train` on a synthesized
run only trains, and any flow re-run on a finished version does no work. Flow runs are named
`<prompt name>-<version12>`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from genpi_core.ingest import SpecError, load_spec, spec_version
from genpi_core.pipeline import IngestOutput, StageOutput
from schemas.config import PipelineConfig
from tasks.artifacts import publish_task
from tasks.stages import (
    conversations_task, dataset_task, evaluate_task, ingest_task, inputs_task, promote_task, reasons_task, train_task,
)


def _run_name() -> str:
    """`<prompt name>-<version12>`, so the Prefect UI says which prompt version a run built."""
    from prefect.runtime import flow_run

    spec_path = flow_run.parameters["spec_path"]
    try:
        spec = load_spec(spec_path)
    except SpecError:
        return f"invalid-spec-{Path(spec_path).stem}"
    return f"{spec.name}-{spec_version(spec)[:12]}"


def _data(spec_path: str, config: PipelineConfig) -> tuple[IngestOutput, StageOutput]:
    """Ingest, synthesize and validate (the dataset stage); each is reused when already finished."""
    ingested = ingest_task(str(Path(spec_path)), config)
    inputs = inputs_task(ingested, config)
    conversations = conversations_task(ingested, inputs, config)  # role-swapped; teacher + base per agent turn
    reasons = reasons_task(ingested, conversations, config)        # feeds prompt generation (joint objective)
    return ingested, dataset_task(ingested, inputs, conversations, config, reasons)


@flow(name="genpi-internalize", flow_run_name=_run_name, log_prints=True)
def internalize_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> StageOutput:
    """Internalize the prompt in `spec_path`: synthesize data, train the adapter, evaluate it, gate it."""
    ingested, dataset = _data(spec_path, config)
    adapter = train_task(ingested, dataset, config)
    evaluated = evaluate_task(ingested, dataset, adapter, config)
    promoted = promote_task(ingested, evaluated, adapter, config)
    publish_task(ingested, evaluated, promoted)
    return evaluated


@flow(name="genpi-ingest", flow_run_name=_run_name, log_prints=True)
def ingest_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> IngestOutput:
    """Validate the spec, version it and count its prompt tokens (fails fast on a bad spec)."""
    return ingest_task(str(Path(spec_path)), config)


@flow(name="genpi-synthesize", flow_run_name=_run_name, log_prints=True)
def synthesize_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> StageOutput:
    """Only the data: inputs, role-swapped conversations with teacher and base outputs, reasons."""
    ingested = ingest_task(str(Path(spec_path)), config)
    inputs = inputs_task(ingested, config)
    conversations = conversations_task(ingested, inputs, config)
    reasons_task(ingested, conversations, config)
    return conversations


@flow(name="genpi-validate", flow_run_name=_run_name, log_prints=True)
def validate_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> StageOutput:
    """Synthesized data checked and split into train/val/test, failures quarantined with reasons."""
    return _data(spec_path, config)[1]


@flow(name="genpi-train", flow_run_name=_run_name, log_prints=True)
def train_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> StageOutput:
    """The adapter (data stages reused or built first)."""
    ingested, dataset = _data(spec_path, config)
    return train_task(ingested, dataset, config)


@flow(name="genpi-evaluate", flow_run_name=_run_name, log_prints=True)
def evaluate_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> StageOutput:
    """(Re-)evaluate a version's adapter with `evaluate.*` and gate it; changing only `evaluate.*` or
    `promote.*` re-runs only evaluation and the gate."""
    return internalize_pipeline.fn(spec_path, config)

"""The `internalize` flow: prompt spec in, evaluated LoRA adapter out. Reads like the pipeline it runs."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from genpi_core.ingest import SpecError, load_spec, spec_version
from genpi_core.pipeline import StageOutput
from schemas.config import PipelineConfig
from tasks.stages import (
    conversations_task, dataset_task, evaluate_task, ingest_task, inputs_task, reasons_task, train_task,
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


@flow(name="genpi-internalize", flow_run_name=_run_name, log_prints=True)
def internalize_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> StageOutput:
    """Internalize the prompt in `spec_path`: synthesize data, train the adapter, evaluate it."""
    spec_path = str(Path(spec_path))
    ingested = ingest_task(spec_path, config)
    inputs = inputs_task(ingested, config)
    conversations = conversations_task(ingested, inputs, config)  # role-swapped; teacher + base per agent turn
    reasons = reasons_task(ingested, conversations, config)        # feeds prompt generation (joint objective)
    dataset = dataset_task(ingested, inputs, conversations, config, reasons)
    adapter = train_task(ingested, dataset, config)
    return evaluate_task(ingested, dataset, adapter, config)


@flow(name="genpi-synthesize", flow_run_name=_run_name, log_prints=True)
def synthesize_pipeline(spec_path: str, config: PipelineConfig = PipelineConfig()) -> StageOutput:
    """Only the data: inputs, role-swapped conversations with teacher and base outputs, reasons."""
    spec_path = str(Path(spec_path))
    ingested = ingest_task(spec_path, config)
    inputs = inputs_task(ingested, config)
    conversations = conversations_task(ingested, inputs, config)
    reasons_task(ingested, conversations, config)
    return conversations

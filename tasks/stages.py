"""Thin Prefect tasks: one per stage, each calling exactly one genpi_core stage function.

Tasks pass paths (StageOutput), never tables or models. Resume lives in genpi_core's run store
(a finished stage is skipped by its manifest), so Prefect's own result cache is off: it would
have to hash configs and could disagree with the store about what is finished.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from genpi_core import pipeline
from genpi_core.pipeline import IngestOutput, StageOutput
from schemas.config import PipelineConfig


def _log(out: StageOutput) -> StageOutput:
    get_run_logger().info("%s %s: %s (%s)", out.stage, "reused" if out.reused else "done", out.dir, out.rows)
    return out


@task(name="ingest", cache_policy=NONE)
def ingest_task(spec_path: str, cfg: PipelineConfig) -> IngestOutput:
    out = pipeline.ingest_stage(spec_path, cfg)
    get_run_logger().info("prompt %s version %s: %d tokens", out.name, out.version[:12], out.prompt_tokens)
    return out


@task(name="inputs", cache_policy=NONE, tags=["genpi-generation"])
def inputs_task(ingested: IngestOutput, cfg: PipelineConfig) -> StageOutput:
    return _log(pipeline.inputs_stage(ingested, cfg))


@task(name="conversations", cache_policy=NONE, tags=["genpi-generation"])
def conversations_task(ingested: IngestOutput, inputs: StageOutput, cfg: PipelineConfig) -> StageOutput:
    return _log(pipeline.conversations_stage(ingested, inputs, cfg))


@task(name="reasons", cache_policy=NONE, tags=["genpi-generation"])
def reasons_task(ingested: IngestOutput, conversations: StageOutput, cfg: PipelineConfig) -> StageOutput | None:
    out = pipeline.reasons_stage(ingested, conversations, cfg)
    return _log(out) if out is not None else None


@task(name="dataset", cache_policy=NONE)
def dataset_task(ingested: IngestOutput, inputs: StageOutput, conversations: StageOutput, cfg: PipelineConfig,
                 reasons: StageOutput | None = None) -> StageOutput:
    return _log(pipeline.dataset_stage(ingested, inputs, conversations, cfg, reasons))


@task(name="train", cache_policy=NONE, tags=["genpi-training"])
def train_task(ingested: IngestOutput, dataset: StageOutput, cfg: PipelineConfig) -> StageOutput:
    return _log(pipeline.train_stage(ingested, dataset, cfg))


@task(name="evaluate", cache_policy=NONE, tags=["genpi-generation"])
def evaluate_task(ingested: IngestOutput, dataset: StageOutput, train: StageOutput, cfg: PipelineConfig) -> StageOutput:
    return _log(pipeline.evaluate_stage(ingested, dataset, train, cfg))

"""The teacher_logprobs stage in the chain: its own folder per dataset, reused by a second training run, and
handed to the trainer (which no longer recomputes the teacher)."""

from __future__ import annotations

import json

from genpi_core.ingest import run_ingest
from genpi_core.pipeline import teacher_logprobs_stage, train_stage
from genpi_core.store.tables import write_table
from schemas.config import IngestConfig, LoraConfig, ModelConfig, TrainConfig
from schemas.datasets import ExamplesSchema
from schemas.stages import IngestOutput, StageOutput
from tests.conftest import EXAMPLE_SPEC
from tests.unit.genpi_core.train.test_recipe import _examples


def test_distillation_runs_the_stage_once_and_training_reads_it(tmp_path, embedded_model_dir):
    ingested = run_ingest(EXAMPLE_SPEC, ModelConfig(), IngestConfig(), tmp_path / "runs")
    folder = ingested.run_dir / "dataset-small"
    folder.mkdir(parents=True)
    write_table(_examples(2), ExamplesSchema, folder / "train.parquet")
    write_table(_examples(1), ExamplesSchema, folder / "val.parquet")
    dataset = StageOutput(
        stage="dataset-small",
        dir=str(folder),
        files={"train": str(folder / "train.parquet"), "val": str(folder / "val.parquet")},
    )
    ingest = IngestOutput(
        name=ingested.spec.name,
        version=ingested.version,
        prompt_tokens=ingested.prompt_tokens,
        run_dir=str(ingested.run_dir),
        prompt_path=str(ingested.prompt_path),
    )
    cfg = TrainConfig(
        epochs=1, batch_size=2, prompt_generation=False, distill_weight=0.5, distill_top_k=4, lora=LoraConfig(rank=4)
    )
    trained = train_stage(ingest, dataset, cfg, ModelConfig(device="cpu"), variant="distill")
    stage_dir = ingested.run_dir / "teacher_logprobs-small"  # beside dataset-small, its own folder
    assert (stage_dir / "teacher_logprobs.parquet").is_file() and (stage_dir / "_manifest.json").is_file()
    job = json.loads((ingested.run_dir / "train-distill" / "_state" / "train_job.json").read_text())
    assert job["teacher_logprobs_path"] == str(stage_dir / "teacher_logprobs.parquet")
    metrics = json.loads(trained.path("metrics").read_text())
    assert metrics["objective"]["distill_weight"] == 0.5 and metrics["steps"] == 1
    again = teacher_logprobs_stage(ingest, dataset, cfg, ModelConfig(device="cpu"))
    assert again.reused and again.rows["rows"] > 0

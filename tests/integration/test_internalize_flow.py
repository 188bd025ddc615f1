"""End to end: the Prefect flow on the real embedded model with tiny settings, against a real
(temporary) Prefect API server; then a re-run that must reuse every finished stage."""

import json

import pandas as pd
import pytest

from genpi_core.store.tables import read_table
from schemas.config import load_config
from schemas.datasets import (
    EpisodesSchema,
    EvalResultsSchema,
    ExamplesSchema,
    HeldOutSchema,
    InputsSchema,
    MessagesSchema,
    QuarantineSchema,
    ReasonsSchema,
    TargetsSchema,
    TrainLogSchema,
)
from schemas.summary import EvaluationSummary
from tests.conftest import EXAMPLE_SPEC, TINY_CONFIG

STAGES = ["ingest", "inputs", "conversations", "reasons", "dataset", "train", "evaluate"]


@pytest.mark.server
def test_flow_completes_and_every_table_validates(finished_run):
    cfg, run_dir, _ = finished_run
    assert run_dir.parent.name == "library-desk" and len(run_dir.name) == 12
    for stage in STAGES:
        assert (run_dir / stage / "_manifest.json").is_file(), stage
    inputs = read_table(run_dir / "inputs" / "inputs.parquet", InputsSchema)
    assert len(inputs) == cfg.synth.inputs.max_inputs and set(inputs["source"]) == {"pool"}
    episodes = read_table(run_dir / "conversations" / "episodes.parquet", EpisodesSchema)
    messages = read_table(run_dir / "conversations" / "messages.parquet", MessagesSchema)
    targets = read_table(run_dir / "conversations" / "targets.parquet", TargetsSchema)
    synth_quarantine = read_table(run_dir / "conversations" / "quarantine.parquet", QuarantineSchema)
    assert len(episodes) == len(inputs) and set(episodes["status"]) == {"ended"}
    assert set(messages["role"]) <= {"user", "assistant", "environment"} and targets["turn"].max() <= 1
    assert (targets["teacher_output"].str.startswith("Topic:")).mean() > (
        targets["base_output"].str.startswith("Topic:")
    ).mean()
    # every first agent turn is either a target or quarantined with a reason
    first_turns = targets[targets["turn"] == 0]
    assert len(first_turns) + synth_quarantine["error"].str.startswith("turn 0:").sum() == len(inputs)
    reasons = read_table(run_dir / "reasons" / "reasons.parquet", ReasonsSchema)
    reasons_quarantine = read_table(run_dir / "reasons" / "quarantine.parquet", QuarantineSchema)
    assert len(reasons) + len(reasons_quarantine) == len(first_turns)
    train = read_table(run_dir / "dataset" / "train.parquet", ExamplesSchema)
    val = read_table(run_dir / "dataset" / "val.parquet", ExamplesSchema)
    quarantine = read_table(run_dir / "dataset" / "quarantine.parquet", QuarantineSchema)
    sft = pd.concat([train, val])[lambda df: df["objective"] == "sft"]
    assert len(sft) + len(quarantine) == len(targets)  # every agent turn accounted for
    pg = pd.concat([train, val])[lambda df: df["objective"] == "pg"]  # one prompt-generation example per usable episode
    assert set(pg["conversation_id"]) == set(sft[sft["example_id"].str.endswith(":0")]["conversation_id"])
    assert (pg["target"].str.contains("Harbor Lane")).all() and set(pg["reason"]) - {""} <= set(reasons["reason"])
    metrics = json.loads((run_dir / "train" / "metrics.json").read_text())
    assert metrics["objective"]["prompt_generation"] and metrics["objective"]["weights"] == {"sft": 0.7, "pg": 0.3}
    test = read_table(run_dir / "dataset" / "test.parquet", HeldOutSchema)
    assert not set(test["input"]) & set(inputs["text"])  # evaluation inputs are never trained on
    read_table(run_dir / "train" / "train_log.parquet", TrainLogSchema)
    assert (run_dir / "train" / "adapter" / "adapter_config.json").is_file()
    results = read_table(run_dir / "evaluate" / "eval_results.parquet", EvalResultsSchema)
    assert set(results["variant"]) == {"base", "teacher", "student"}
    summary = EvaluationSummary.load(run_dir / "evaluate" / "summary.json")
    v = summary.variants
    assert v["teacher"].format > v["base"].format  # the prompt measurably changes behaviour
    assert summary.prefill_tokens_saved_per_request > 1000
    report = (run_dir / "evaluate" / "report.md").read_text()
    assert "strict-success recovery" in report and "| teacher |" in report
    assert (run_dir / "evaluate" / "compliance.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.server
def test_rerun_reuses_every_finished_stage(finished_run):
    from genpi_core.pipeline import run_pipeline

    cfg, run_dir, _ = finished_run
    before = {s: (run_dir / s / "_manifest.json").read_text() for s in STAGES}
    run_pipeline(EXAMPLE_SPEC, cfg)
    assert {s: (run_dir / s / "_manifest.json").read_text() for s in STAGES} == before


@pytest.mark.server
@pytest.mark.slow  # over 50 s in the default run (docs/testing.md, session 6 timings)
def test_changed_eval_config_reruns_only_evaluation(finished_run):
    from genpi_core.pipeline import run_pipeline

    cfg, run_dir, _ = finished_run
    before = {s: (run_dir / s / "_manifest.json").read_text() for s in STAGES}
    changed = load_config(TINY_CONFIG, [f"runs_dir={cfg.runs_dir}", "evaluate.max_examples=2"])
    run_pipeline(EXAMPLE_SPEC, changed)
    after = {s: (run_dir / s / "_manifest.json").read_text() for s in STAGES}
    assert [s for s in STAGES if before[s] != after[s]] == ["evaluate"]
    assert len(pd.read_parquet(run_dir / "evaluate" / "eval_results.parquet")) == 3 * 2

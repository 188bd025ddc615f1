"""The Python API (genpi.internalize / evaluate / load_student) on the finished run of conftest.py."""

import pandas as pd
import pytest

import genpi
from schemas.summary import EvaluationSummary
from tests.conftest import EXAMPLE_SPEC

STAGES = ["ingest", "inputs", "conversations", "reasons", "dataset", "train", "evaluate", "promote"]


@pytest.mark.server
def test_internalize_returns_the_run_and_a_rerun_reuses_every_stage(finished_run):
    cfg, run_dir, _ = finished_run
    # another test may have re-evaluated this run with another config: the first call brings it back to cfg
    first = genpi.internalize(EXAMPLE_SPEC, cfg, use_prefect=False)
    before = {s: (run_dir / s / "_manifest.json").read_text() for s in STAGES}
    run = genpi.internalize(EXAMPLE_SPEC, cfg)  # through the Prefect flow, like the CLI
    assert {s: (run_dir / s / "_manifest.json").read_text() for s in STAGES} == before  # nothing recomputed
    assert run == first and run.run_dir == run_dir and (run.adapter_dir / "adapter_config.json").is_file()
    assert run.report == run_dir / "evaluate" / "report.md" and run.report.is_file()
    assert run.summary == EvaluationSummary.load(run_dir / "evaluate" / "summary.json")


@pytest.mark.server
def test_internalize_with_overrides_validates_them(finished_run):
    cfg, _, _ = finished_run
    with pytest.raises(ValueError, match="train.epochz"):
        genpi.internalize(EXAMPLE_SPEC, cfg, overrides=["train.epochz=3"], use_prefect=False)


@pytest.mark.server
def test_evaluate_returns_the_typed_summary_of_the_run(finished_run):
    cfg, run_dir, _ = finished_run
    summary = genpi.evaluate(run_dir, cfg)
    assert summary == EvaluationSummary.load(run_dir / "evaluate" / "summary.json")
    assert set(summary.variants) == {"base", "teacher", "student"}


@pytest.mark.server
def test_load_student_applies_the_adapter_and_replies_as_the_evaluation_did(finished_run):
    import torch

    cfg, run_dir, _ = finished_run
    with genpi.load_student(run_dir) as student:
        model, tokenizer = student
        assert any("lora_" in name for name, _ in model.named_parameters())
        ids = torch.tensor([tokenizer("Can I renew a book twice?").input_ids])
        with torch.no_grad():
            adapted = model(input_ids=ids).logits
            with model.disable_adapter():
                plain = model(input_ids=ids).logits
        assert (adapted - plain).abs().max() > 1e-3  # the trained adapter changes the model

    genpi.evaluate(run_dir, cfg)  # the evaluation on disk is the one of cfg
    results = pd.read_parquet(run_dir / "evaluate" / "eval_results.parquet")
    student_rows = results[results["variant"] == "student"]
    with genpi.load_student(run_dir, merge=cfg.evaluate.merge_adapter) as student:
        replies = [
            student.generate(text, max_new_tokens=cfg.evaluate.sampling.max_new_tokens)
            for text in student_rows["input"]
        ]
    same = sum(reply == scored for reply, scored in zip(replies, student_rows["output"]))
    # the evaluation generated these in one left-padded batch, here one at a time: float rounding may flip a
    # greedy token now and then, so allow one of the held-out replies to differ
    assert same >= len(replies) - 1, list(zip(replies, student_rows["output"]))

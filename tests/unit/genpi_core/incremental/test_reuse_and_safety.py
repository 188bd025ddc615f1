"""What an incremental run takes over from its parent (inputs, base replies, reasons) and the paired safety net,
on real tables written through their schemas; no model is needed."""

from __future__ import annotations

import json

import pandas as pd

from genpi_core.incremental.reuse import base_cache, changed_lines, reason_cache, unchanged_teacher_replies
from genpi_core.incremental.safety import paired_difference
from genpi_core.store.tables import write_table
from genpi_core.synth.inputs import generator_request, run_inputs
from genpi_core.synth.reasons import run_reasons
from schemas.config import InputsConfig, SamplingConfig
from schemas.datasets import InputsSchema, ReasonsSchema, TargetsSchema


def _context(text: str) -> str:
    return json.dumps([{"role": "user", "content": text}], ensure_ascii=False)


def _targets(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "conversation_id": [f"c-{i}" for i in range(len(rows))],
            "turn": 0,
            "context": [_context(q) for q, _, _ in rows],
            "teacher_output": [t for _, t, _ in rows],
            "teacher_finish": "stop",
            "base_output": [b for _, _, b in rows],
            "base_finish": "stop",
            "produced_by": "test",
        }
    )


class CountingGenerator:
    """A fake generator (no model runs here): answers every request with a numbered reason and counts them."""

    name = "fake-generator"

    def __init__(self) -> None:
        self.asked: list = []

    def generate(self, requests, sampling, desc=""):
        from genpi_core.generation.base import Completion

        self.asked += requests
        return [Completion(f"reason {len(self.asked)}", "stop", 1, 1, 0.0) for _ in requests]


def test_reasons_are_asked_again_only_where_the_teacher_reply_changed(tmp_path, example_spec):
    parent = _targets([("hours?", "Topic: hours\nAnswer: 9 am", "We open at 9"), ("fee?", "$2", "Two dollars")])
    write_table(
        pd.DataFrame({"conversation_id": ["c-0", "c-1"], "turn": 0, "reason": ["why 0", "why 1"], "produced_by": "g"}),
        ReasonsSchema,
        tmp_path / "parent_reasons.parquet",
    )
    cache = reason_cache(parent, tmp_path / "parent_reasons.parquet")
    new = _targets([("hours?", "Topic: hours\nAnswer: 9 am", "We open at 9"), ("fee?", "$3", "Two dollars")])
    write_table(new, TargetsSchema, tmp_path / "targets.parquet")
    generator = CountingGenerator()
    rows = run_reasons(example_spec, tmp_path / "targets.parquet", generator, SamplingConfig(), tmp_path, reuse=cache)
    assert rows["reasons_reused"] == 1 and rows["reasons_generated"] == 1 and len(generator.asked) == 1
    reasons = pd.read_parquet(tmp_path / "reasons.parquet").set_index("conversation_id")
    assert reasons.loc["c-0", "reason"] == "why 0" and reasons.loc["c-0", "produced_by"] == "g"
    assert reasons.loc["c-1", "reason"] == "reason 1"
    assert "$3" in generator.asked[0][0]["content"]  # asked about the changed reply


def test_base_replies_and_unchanged_teacher_replies_are_keyed_by_the_exact_context():
    parent = _targets([("hours?", "9 am", "base 0"), ("fee?", "$2", "base 1")])
    cache = base_cache(parent)
    assert cache[_context("hours?")] == ("base 0", "stop") and _context("hours? ") not in cache
    new = _targets([("hours?", "9 am", "base 0"), ("fee?", "$3", "base 1"), ("new?", "x", "y")])
    assert unchanged_teacher_replies(new, dict(zip(parent["context"], parent["teacher_output"]))) == (1, 2)


def test_parent_inputs_are_kept_and_restamped(tmp_path, example_spec):
    parent = pd.DataFrame(
        {
            "prompt_version": "a" * 64,
            "input_id": ["i1", "i2"],
            "text": ["When do you open on Monday?", "Do you have Wi-Fi?"],
            "source": "generated",
            "generator": "old-generator",
            "dedup_key": ["when do you open on monday?", "do you have wi-fi?"],
        }
    )
    write_table(parent, InputsSchema, tmp_path / "parent.parquet")
    cfg = InputsConfig(source="generate", max_inputs=1)
    rows = run_inputs(example_spec, "b" * 64, cfg, None, tmp_path, parent_inputs=tmp_path / "parent.parquet")
    kept = pd.read_parquet(tmp_path / "inputs.parquet")
    assert rows["reused_from_parent"] == 1 and rows["generated_used"] == 0  # max_inputs caps the parent's share
    assert set(kept["prompt_version"]) == {"b" * 64} and set(kept["generator"]) == {"old-generator"}


def test_the_edit_request_shows_the_changed_lines(example_spec):
    diff = {"added": ["- Replacement library card: $3."], "removed": ["- Replacement library card: $2."]}
    ask = generator_request(example_spec, ["How much is a new card?"], 4, changed_lines(diff))[0]["content"]
    assert "+ - Replacement library card: $3." in ask and "- - Replacement library card: $2." in ask
    assert "Write 4 new" in ask and "depends on the changed lines" in ask


def _results(path, scores: dict[str, float]) -> None:
    pd.DataFrame(
        {"variant": "student", "input": list(scores), "strict_success": [bool(v) for v in scores.values()]}
    ).to_parquet(path)


def test_the_paired_difference_pairs_by_input(tmp_path):
    _results(tmp_path / "old.parquet", {f"q{i}": 1 for i in range(10)})
    _results(tmp_path / "same.parquet", {f"q{i}": 1 for i in range(10)})
    _results(tmp_path / "worse.parquet", {f"q{i}": int(i < 5) for i in range(10)})
    same = paired_difference(tmp_path / "old.parquet", tmp_path / "same.parquet", 200, 0.95)
    assert same["difference"] == 0 and same["difference_ci"] == [0.0, 0.0] and same["paired_inputs"] == 10
    worse = paired_difference(tmp_path / "old.parquet", tmp_path / "worse.parquet", 200, 0.95)
    assert worse["difference"] == -0.5 and worse["difference_ci"][1] < -0.1

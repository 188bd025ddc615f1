"""Input synthesis on the real embedded model: pool, generated, both; every row accounted for."""

import json

import pandas as pd

from genpi_core.synth import dedup_key, run_inputs, run_replies
from genpi_core.tables import read_table
from schemas.config import InputsConfig, SamplingConfig
from schemas.datasets import InputsSchema, QuarantineSchema, RepliesSchema


def test_pool_inputs_are_deduplicated_and_recorded_as_pool(tmp_path, example_spec):
    spec = example_spec.model_copy(update={"inputs": example_spec.inputs.model_copy(
        update={"pool": ["Hello there", "hello   THERE", "When do you open?"]})})
    rows = run_inputs(spec, "v" * 64, InputsConfig(source="pool", max_inputs=10), None, tmp_path)
    inputs = read_table(tmp_path / "inputs.parquet", InputsSchema)
    quarantine = read_table(tmp_path / "quarantine.parquet", QuarantineSchema)
    assert rows["inputs"] == 2 and set(inputs["source"]) == {"pool"} and set(inputs["generator"]) == {"spec"}
    assert list(quarantine["error"]) == ["exact duplicate of an earlier input"]
    assert dedup_key(" Hello\tthere ") == "hello there"


def test_generated_inputs_come_from_the_model_and_bad_ones_are_quarantined(tmp_path, example_spec, transformers_backend):
    cfg = InputsConfig(source="both", max_inputs=8, num_generated=6,
                       sampling=SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=40, seed=3))
    rows = run_inputs(example_spec, "v" * 64, cfg, transformers_backend, tmp_path)
    inputs = read_table(tmp_path / "inputs.parquet", InputsSchema)
    quarantine = read_table(tmp_path / "quarantine.parquet", QuarantineSchema)
    generated = inputs[inputs["source"] == "generated"]
    assert set(generated["generator"]) <= {transformers_backend.name}
    # generated inputs come first and the pool tops up to the cap; every generated text is used or quarantined
    assert rows["inputs"] == 8 and (inputs["source"] == "pool").sum() == 8 - len(generated)
    quarantined_generated = [r for r in quarantine["raw"] if json.loads(r).get("source") == "generated"]
    assert len(generated) + len(quarantined_generated) == 6
    assert all(quarantine["error"].str.len() > 0)


def test_teacher_and_base_replies_differ_in_format(tmp_path, example_spec, transformers_backend):
    run_inputs(example_spec, "v" * 64, InputsConfig(source="pool", max_inputs=4), None, tmp_path)
    sampling = SamplingConfig(max_new_tokens=32)
    (tmp_path / "t").mkdir()
    (tmp_path / "b").mkdir()
    run_replies("teacher", example_spec, tmp_path / "inputs.parquet", sampling, transformers_backend, tmp_path / "t")
    run_replies("base", example_spec, tmp_path / "inputs.parquet", sampling, transformers_backend, tmp_path / "b")
    teacher = read_table(tmp_path / "t" / "replies.parquet", RepliesSchema)
    base = read_table(tmp_path / "b" / "replies.parquet", RepliesSchema)
    assert list(teacher["input_id"]) == list(base["input_id"])
    assert teacher["output"].str.startswith("Topic:").sum() >= 3
    assert not base["output"].str.startswith("Topic:").any()
    assert (teacher["prompt_tokens"] > base["prompt_tokens"] + 1000).all()
    assert pd.Series(teacher["context"]).equals(pd.Series(base["context"]))  # contexts are stored without the prompt

"""Dataset build on real Parquet tables: quarantine reasons, splits by conversation, held-out inputs."""

import json

import pandas as pd

from genpi_core.dataset import run_dataset
from genpi_core.store.tables import read_table, write_table
from genpi_core.synth.inputs import run_inputs
from schemas.config import DatasetConfig, InputsConfig
from schemas.datasets import (
    ExamplesSchema,
    HeldOutSchema,
    InputsSchema,
    QuarantineSchema,
    ReasonsSchema,
    TargetsSchema,
)
from schemas.spec import PromptSpec

SPEC = PromptSpec.model_validate(
    {
        "name": "t",
        "prompt": {"system": "Start every reply with OK."},
        "checks": [{"type": "must_start_with", "value": "OK"}],
        "inputs": {"pool": [f"question number {i}" for i in range(10)]},  # no eval set: the pool is split
    }
)


def _targets(inputs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for n, row in enumerate(inputs.itertuples()):
        for turn in range(2):
            reply = "OK fine" if (n + turn) % 4 else "no format"
            finish = "length" if n == 3 and turn == 1 else "stop"
            rows.append(
                {
                    "conversation_id": f"c-{row.input_id}",
                    "turn": turn,
                    "context": json.dumps([{"role": "user", "content": row.text}]),
                    "teacher_output": reply,
                    "teacher_finish": finish,
                    "base_output": "b",
                    "base_finish": "stop",
                    "produced_by": "test",
                }
            )
    return pd.DataFrame(rows)


def test_quarantine_splits_and_held_out_pool(tmp_path):
    run_inputs(SPEC, "v" * 64, InputsConfig(max_inputs=10), None, tmp_path)
    inputs = read_table(tmp_path / "inputs.parquet", InputsSchema)
    write_table(_targets(inputs), TargetsSchema, tmp_path / "targets.parquet")
    reasons = pd.DataFrame(
        {
            "conversation_id": [f"c-{i}" for i in inputs["input_id"]],
            "turn": 0,
            "reason": "It asks for OK.",
            "produced_by": "test",
        }
    ).iloc[:6]
    write_table(reasons, ReasonsSchema, tmp_path / "reasons.parquet")
    rows = run_dataset(
        SPEC,
        DatasetConfig(val_fraction=0.2),
        tmp_path / "inputs.parquet",
        tmp_path / "targets.parquet",
        tmp_path / "ds",
        reasons_path=tmp_path / "reasons.parquet",
    )
    train = read_table(tmp_path / "ds" / "train.parquet", ExamplesSchema)
    val = read_table(tmp_path / "ds" / "val.parquet", ExamplesSchema)
    test = read_table(tmp_path / "ds" / "test.parquet", HeldOutSchema)
    quarantine = read_table(tmp_path / "ds" / "quarantine.parquet", QuarantineSchema)
    assert set(quarantine["error"]) == {
        "teacher reply fails checks: 0:must_start_with",
        "teacher reply truncated at the length cap",
    }
    sft = lambda df: df[df["objective"] == "sft"]  # noqa: E731
    pg = lambda df: df[df["objective"] == "pg"]  # noqa: E731
    assert (sft(train)["target"] == "OK fine").all() and (sft(val)["target"] == "OK fine").all()
    # the pool-split test inputs (first fifth of the inputs) never reach training, and no episode straddles splits
    assert set(test["source"]) == {"pool_split"} and len(test) == 2
    held = {f"c-{i}" for i in inputs["input_id"].iloc[:2]}
    conv = lambda df: set(df["conversation_id"])  # noqa: E731
    assert not conv(train) & held and not conv(val) & held and not conv(train) & conv(val)
    assert (
        rows["train"]
        + rows["val"]
        - rows["train_pg"]
        - rows["val_pg"]
        + rows["quarantined"]
        + sum(
            1
            for t in _targets(inputs).itertuples()
            if t.conversation_id in held and t.teacher_output == "OK fine" and t.teacher_finish == "stop"
        )
        == 20
    )
    # prompt generation: one example per episode whose first turn is usable; target = the prompt, reason beside it
    everything = pd.concat([train, val])
    usable_first = set(sft(everything)[sft(everything)["example_id"].str.endswith(":0")]["conversation_id"])
    assert set(pg(everything)["conversation_id"]) == usable_first
    assert (pg(everything)["target"] == "[system]\nStart every reply with OK.").all()
    with_reason = pg(everything)[pg(everything)["reason"] != ""]
    assert set(with_reason["conversation_id"]) == usable_first & set(reasons["conversation_id"])
    question = json.loads(pg(everything)["messages"].iloc[0])[0]["content"]
    assert "question number" in question and "Without any context" in question


def test_a_spec_with_no_way_to_get_eval_inputs_is_named():
    from genpi_core.dataset import eval_inputs_problem

    bare = PromptSpec.model_validate({"name": "bare", "prompt": {"system": "Be terse."}})
    one = PromptSpec.model_validate({"name": "one", "prompt": {"system": "Be terse."}, "inputs": {"pool": ["hi"]}})
    two = PromptSpec.model_validate(
        {"name": "two", "prompt": {"system": "Be terse."}, "inputs": {"pool": ["hi", "hello there"]}}
    )
    pool = InputsConfig(source="pool")
    problem = eval_inputs_problem(bare, pool)
    assert problem and problem.startswith("inputs.eval") and "source=pool with 0 pool" in problem
    assert "1 pool input" in (eval_inputs_problem(one, pool) or "")
    assert eval_inputs_problem(two, pool) is None  # a pool split: one held out, one to train on
    assert eval_inputs_problem(bare, InputsConfig(source="generate")) is None  # generated inputs are split
    assert eval_inputs_problem(two, InputsConfig(source="generate", num_generated=0)) is not None

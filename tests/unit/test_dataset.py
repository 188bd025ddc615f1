"""Dataset build on real Parquet tables: quarantine reasons, splits by conversation, held-out inputs."""

import json

import pandas as pd

from genpi_core.dataset import run_dataset
from genpi_core.synth import run_inputs
from genpi_core.tables import read_table, write_table
from schemas.config import DatasetConfig, InputsConfig
from schemas.datasets import ExamplesSchema, HeldOutSchema, InputsSchema, QuarantineSchema, TargetsSchema
from schemas.spec import PromptSpec

SPEC = PromptSpec.model_validate({
    "name": "t", "prompt": {"system": "Start every reply with OK."},
    "checks": [{"type": "must_start_with", "value": "OK"}],
    "inputs": {"pool": [f"question number {i}" for i in range(10)]},  # no eval set: the pool is split
})


def _targets(inputs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for n, row in enumerate(inputs.itertuples()):
        for turn in range(2):
            reply = "OK fine" if (n + turn) % 4 else "no format"
            finish = "length" if n == 3 and turn == 1 else "stop"
            rows.append({"conversation_id": f"c-{row.input_id}", "turn": turn,
                         "context": json.dumps([{"role": "user", "content": row.text}]),
                         "teacher_output": reply, "teacher_finish": finish, "base_output": "b", "base_finish": "stop",
                         "produced_by": "test"})
    return pd.DataFrame(rows)


def test_quarantine_splits_and_held_out_pool(tmp_path):
    run_inputs(SPEC, "v" * 64, InputsConfig(max_inputs=10), None, tmp_path)
    inputs = read_table(tmp_path / "inputs.parquet", InputsSchema)
    write_table(_targets(inputs), TargetsSchema, tmp_path / "targets.parquet")
    rows = run_dataset(SPEC, DatasetConfig(val_fraction=0.2), tmp_path / "inputs.parquet", tmp_path / "targets.parquet", tmp_path / "ds")
    train = read_table(tmp_path / "ds" / "train.parquet", ExamplesSchema)
    val = read_table(tmp_path / "ds" / "val.parquet", ExamplesSchema)
    test = read_table(tmp_path / "ds" / "test.parquet", HeldOutSchema)
    quarantine = read_table(tmp_path / "ds" / "quarantine.parquet", QuarantineSchema)
    assert set(quarantine["error"]) == {"teacher reply fails checks: 0:must_start_with", "teacher reply truncated at the length cap"}
    assert (train["target"] == "OK fine").all() and (val["target"] == "OK fine").all()
    # the pool-split test inputs (first fifth of the inputs) never reach training, and no episode straddles splits
    assert set(test["source"]) == {"pool_split"} and len(test) == 2
    held = {f"c-{i}" for i in inputs["input_id"].iloc[:2]}
    conv = lambda df: set(df["example_id"].str.rsplit(":", n=1).str[0])  # noqa: E731
    assert not conv(train) & held and not conv(val) & held and not conv(train) & conv(val)
    assert rows["train"] + rows["val"] + rows["quarantined"] + sum(
        1 for t in _targets(inputs).itertuples() if t.conversation_id in held and t.teacher_output == "OK fine"
        and t.teacher_finish == "stop") == 20

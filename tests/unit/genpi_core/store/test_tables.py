"""Validated Parquet I/O and quarantine (real files, real pandera)."""

import pandas as pd
import pytest

from genpi_core.store.tables import TableError, partition_valid, read_table, write_table
from schemas.datasets import ExamplesSchema, InputsSchema

ROW = {
    "prompt_version": "a" * 64,
    "input_id": "i1",
    "text": "hello",
    "source": "pool",
    "generator": "spec",
    "dedup_key": "hello",
}


def test_roundtrip(tmp_path):
    path = tmp_path / "inputs.parquet"
    assert write_table(pd.DataFrame([ROW]), InputsSchema, path) == 1
    assert read_table(path, InputsSchema).to_dict(orient="records") == [ROW]


def test_invalid_rows_are_refused_before_writing(tmp_path):
    path = tmp_path / "inputs.parquet"
    with pytest.raises(TableError, match=r"inputs.parquet does not match InputsSchema: source"):
        write_table(pd.DataFrame([{**ROW, "source": "scraped"}]), InputsSchema, path)
    assert not path.exists()


def test_truncated_file_is_detected_with_its_name(tmp_path):
    path = tmp_path / "inputs.parquet"
    write_table(pd.DataFrame([ROW]), InputsSchema, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(TableError, match="inputs.parquet: unreadable Parquet"):
        read_table(path, InputsSchema)


def test_foreign_table_is_detected_on_read(tmp_path):
    path = tmp_path / "inputs.parquet"
    pd.DataFrame([{"unexpected": 1}]).to_parquet(path)
    with pytest.raises(TableError, match="does not match InputsSchema"):
        read_table(path, InputsSchema)


def test_partition_sends_bad_rows_to_quarantine_with_reason():
    df = pd.DataFrame(
        [
            {
                "example_id": "a",
                "conversation_id": "c-a",
                "objective": "sft",
                "reason": "",
                "messages": "[]",
                "target": "fine",
                "weight": 1.0,
            },
            {
                "example_id": "b",
                "conversation_id": "c-b",
                "objective": "sft",
                "reason": "",
                "messages": "not json",
                "target": "x",
                "weight": 1.0,
            },
            {
                "example_id": "c",
                "conversation_id": "c-c",
                "objective": "sft",
                "reason": "",
                "messages": "[]",
                "target": "",
                "weight": 1.0,
            },
        ]
    )
    good, quarantine = partition_valid(df, ExamplesSchema, "examples", "example_id")
    assert list(good["example_id"]) == ["a"]
    assert dict(zip(quarantine["row_key"], quarantine["error"])) == {
        "b": "messages: messages_are_json",
        "c": "target: str_length(1, None)",
    }
    assert len(good) + len(quarantine) == len(df)  # nothing disappears

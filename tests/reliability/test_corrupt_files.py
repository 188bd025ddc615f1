"""Corrupt or foreign files in a finished run folder: each is detected on read with an error naming the
file, or (where the design is to recompute a stage whose output no longer matches its manifest) the
stage is recomputed to the same rows; nothing damaged is ever used silently.

One real run (ingest, inputs, conversations on the real embedded model, dataset) is built once per
module with tiny settings; every test damages its own copy of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from genpi_core import pipeline
from genpi_core.ingest import SpecError, load_ingested
from genpi_core.promote import promoted
from genpi_core.store.stage import Stage, tree_sha256
from genpi_core.store.tables import TableError, read_table
from schemas.artifacts import (
    EPISODES_FILE,
    INPUTS_FILE,
    MANIFEST,
    MESSAGES_FILE,
    QUARANTINE_FILE,
    TARGETS_FILE,
    TEST_FILE,
    TRAIN_FILE,
    VAL_FILE,
)
from schemas.config import PipelineConfig, load_config
from schemas.datasets import ExamplesSchema, HeldOutSchema, InputsSchema, TargetsSchema
from schemas.stages import StageOutput
from tests.unit.genpi_core.test_promote import _fake_run as promote_run

GENPI = str(Path(sys.executable).with_name("genpi"))
ROOT = Path(__file__).resolve().parents[2]

SPEC = {
    "name": "corrupt-demo",
    "prompt": {"system": "You are a terse assistant. Start every reply with 'OK:' and answer in one short sentence."},
    "checks": [{"type": "must_start_with", "value": "OK:"}],
    "inputs": {
        "pool": ["What is two plus two?", "Name a colour.", "Say hello.", "What is the capital of France?"],
        "eval": [{"text": "What day comes after Monday?", "facts": ["tuesday"]}],
    },
}
OVERRIDES = [
    "synth.inputs.max_inputs=4",
    "synth.conversations.max_turns=1",
    "synth.conversations.environment.max_new_tokens=8",
    "synth.teacher.max_new_tokens=48",
    "synth.base.max_new_tokens=8",
    "synth.reasons.enabled=false",
    "dataset.val_fraction=0.3",
    "dataset.require_teacher_checks=false",
]
# the finished tables of the data stages, with the schema each is read with
TABLES = {
    "inputs/" + INPUTS_FILE: InputsSchema,
    "conversations/" + TARGETS_FILE: TargetsSchema,
    "dataset/" + TRAIN_FILE: ExamplesSchema,
    "dataset/" + VAL_FILE: ExamplesSchema,
    "dataset/" + TEST_FILE: HeldOutSchema,
}


def _cfg(runs_dir: Path):
    return load_config(ROOT / "configs" / "tiny.yaml", [*OVERRIDES, f"runs_dir={runs_dir}"])


def _data_stages(spec_path: Path, runs_dir: Path) -> dict[str, StageOutput]:
    cfg = _cfg(runs_dir)
    ingested = pipeline.ingest_stage(spec_path, cfg.ingest, cfg.model, cfg.runs_dir)
    inputs = pipeline.inputs_stage(ingested, cfg.synth.inputs, *cfg.synth.generator.resolve(cfg.model, cfg.backend))
    conversations = pipeline.conversations_stage(ingested, inputs, cfg.synth, cfg.model, cfg.backend)
    dataset = pipeline.dataset_stage(ingested, inputs, conversations, cfg.dataset)
    return {"inputs": inputs, "conversations": conversations, "dataset": dataset}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, embedded_model_dir):
    """(spec path, runs dir, run dir, frames of every table): a real finished run up to the dataset."""
    base = tmp_path_factory.mktemp("finished")
    spec_path = base / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    runs = base / "runs"
    outputs = _data_stages(spec_path, runs)
    run_dir = Path(outputs["dataset"].dir).parent
    frames = {rel: pq.read_table(run_dir / rel).to_pandas() for rel in TABLES}
    assert len(frames["dataset/" + TRAIN_FILE]) + len(frames["dataset/" + VAL_FILE]) >= 1
    return spec_path, runs, run_dir, frames


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A private copy of the finished run: (spec path, runs dir, run dir, original frames)."""
    spec_path, runs, run_dir, frames = finished_run
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    return spec_path, copy, copy / run_dir.relative_to(runs), frames


def _same_rows(run_dir: Path, frames: dict[str, pd.DataFrame]) -> int:
    """Every table equals the uninterrupted run's; returns the rows compared (0 lost, 0 duplicated)."""
    n = 0
    for rel, frame in frames.items():
        now = read_table(run_dir / rel, TABLES[rel])
        pd.testing.assert_frame_equal(now.reset_index(drop=True), read_table_like(frame, TABLES[rel]))
        n += len(now)
    return n


def read_table_like(frame: pd.DataFrame, schema) -> pd.DataFrame:
    return schema.validate(frame.copy(), lazy=True).reset_index(drop=True)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_type(path: Path, column: str) -> None:
    """Rewrite the table with ``column`` stored as integers (a plausible foreign/hand-made table)."""
    df = pq.read_table(path).to_pandas()
    df[column] = range(len(df))
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)


def _foreign(path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2, 3], "value": ["a", "b", "c"]}), path)


# a string column per table that plain coercion would have accepted as integers ("0", "1", ...)
_STR_COLUMN = {
    INPUTS_FILE: "text",
    TARGETS_FILE: "produced_by",
    TRAIN_FILE: "conversation_id",
    VAL_FILE: "conversation_id",
    TEST_FILE: "example_id",
}
DAMAGE = {
    "truncated Parquet": lambda p: _truncate(p),
    "wrong column type": lambda p: _wrong_type(p, _STR_COLUMN[p.name]),
    "foreign Parquet (other columns)": _foreign,
}


def test_damaged_tables_are_refused_on_read_naming_the_file(run_copy, faults):
    """Read path: every data table, damaged three ways, fails with TableError naming the file."""
    _, _, run_dir, _ = run_copy
    tried = 0
    for label, damage in DAMAGE.items():
        for rel, schema in TABLES.items():
            path = run_dir / rel
            backup = path.read_bytes()
            damage(path)
            with pytest.raises(TableError) as err:
                read_table(path, schema)
            assert str(path) in str(err.value), (label, rel, str(err.value))
            if label == "wrong column type":
                assert "wrong column type" in str(err.value)
            tried += 1
            path.write_bytes(backup)
    faults.add(
        "corrupt file",
        "truncated / wrong-type / foreign Parquet table read by a stage",
        "half the bytes cut; a column rewritten as int64; a foreign table with other columns, on "
        f"{len(TABLES)} tables of a finished run",
        tried,
        f"{tried}/{tried} refused with TableError naming the file",
    )


@pytest.mark.parametrize(
    "rel", ["inputs/" + INPUTS_FILE, "dataset/" + TRAIN_FILE, "dataset/" + VAL_FILE], ids=["inputs", "train", "val"]
)
def test_damaged_output_of_a_finished_stage_is_recomputed_to_the_same_rows(run_copy, rel, faults):
    """Pipeline path: the manifest's output hash no longer matches, so the stage (and only what depends on
    it) is recomputed; the re-run's tables equal the uninterrupted run's, row for row."""
    spec_path, runs, run_dir, frames = run_copy
    damaged = 0
    for label, damage in [*DAMAGE.items(), ("deleted output", lambda p: p.unlink())]:
        damage(run_dir / rel)
        stage = Stage(run_dir, rel.split("/")[0], {}, {})
        assert rel.split("/")[1] in stage.changed_outputs()
        outputs = _data_stages(spec_path, runs)
        assert not outputs[rel.split("/")[0]].reused, label  # recomputed, never reused
        assert outputs["conversations"].reused  # the model stage upstream is not redone
        rows = _same_rows(run_dir, frames)
        damaged += 1
    faults.add(
        "corrupt file",
        f"damaged output of a finished stage ({rel})",
        "truncated, column retyped, foreign table, deleted; then the pipeline re-run",
        damaged,
        f"stage recomputed each time; {rows} rows equal to the uninterrupted run; 0 rows lost",
    )


def _edit_manifest(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


MANIFEST_EDITS = {
    "rows changed": lambda m: m["rows"].update({k: (v or 0) + 1 for k, v in m["rows"].items()}),
    "key changed": lambda m: m.update(key="0" * 64),
    "output hash changed": lambda m: m["outputs"].update({k: "f" * 64 for k in m["outputs"]}),
    "config changed": lambda m: (
        m["config"].update(val_fraction=0.49) if "val_fraction" in m["config"] else m["config"].update(x=1)
    ),
}


@pytest.mark.parametrize("stage_name", ["inputs", "conversations", "dataset"])
def test_hand_edited_manifest_is_an_error_naming_it(run_copy, stage_name, faults):
    spec_path, runs, run_dir, _ = run_copy
    path = run_dir / stage_name / MANIFEST
    original = path.read_text()
    tried = 0
    for label, edit in [*MANIFEST_EDITS.items(), ("broken JSON", None)]:
        if edit is None:
            path.write_text(original[: len(original) // 2])
        else:
            _edit_manifest(path, edit)
        with pytest.raises(ValueError) as err:
            _data_stages(spec_path, runs)
        assert str(path) in str(err.value), (label, str(err.value))
        assert "delete" in str(err.value)  # says how to recover
        tried += 1
        path.write_text(original)
    assert _data_stages(spec_path, runs)[stage_name].reused  # the restored manifest is trusted again
    faults.add(
        "corrupt file",
        f"hand-edited {stage_name}/_manifest.json",
        "rows, key, output hashes or config edited (still valid JSON); JSON cut in half; then the pipeline re-run",
        tried,
        f"{tried}/{tried} refused with an error naming the manifest; nothing reused",
    )


def test_manifest_without_checksum_is_recomputed_not_trusted(run_copy, faults):
    spec_path, runs, run_dir, frames = run_copy
    path = run_dir / "dataset" / MANIFEST
    _edit_manifest(path, lambda m: m.pop("checksum"))
    outputs = _data_stages(spec_path, runs)
    assert not outputs["dataset"].reused and outputs["conversations"].reused
    assert json.loads(path.read_text())["checksum"]
    _same_rows(run_dir, frames)
    faults.add(
        "corrupt file",
        "manifest without its checksum (older genpi or edited)",
        "`checksum` key removed",
        1,
        "stage recomputed to the same rows, never trusted",
    )


def _genpi_train(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [GENPI, "train", str(run_dir), "--set", "train.epochs=1"], capture_output=True, text=True, timeout=300
    )


def test_cli_train_refuses_a_damaged_dataset_naming_the_file(run_copy, faults):
    """`genpi train RUN` reads a finished run without re-running it: damage must stop it before training."""
    _, _, run_dir, _ = run_copy
    cases = [
        ("dataset/" + TRAIN_FILE, _truncate),
        ("dataset/" + VAL_FILE, lambda p: _wrong_type(p, "conversation_id")),
        ("dataset/" + TEST_FILE, _foreign),
        ("ingest/prompt.json", lambda p: p.write_text('{"spec": {}}')),
        ("dataset/" + MANIFEST, lambda p: _edit_manifest(p, MANIFEST_EDITS["rows changed"])),
        ("dataset/" + TRAIN_FILE, lambda p: p.unlink()),
    ]
    for rel, damage in cases:
        path = run_dir / rel
        backup = path.read_bytes()
        damage(path)
        out = _genpi_train(run_dir)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "Traceback" not in out.stderr and f"{path.parent}" in out.stderr, out.stderr[-2000:]
        assert path.name in out.stderr or str(path) in out.stderr, out.stderr[-2000:]
        path.write_bytes(backup)
        assert not (run_dir / "train" / MANIFEST).exists()
    faults.add(
        "corrupt file",
        "damaged table, prompt.json or manifest under `genpi train RUN`",
        "truncated / retyped / foreign / deleted table, emptied prompt.json, edited manifest",
        len(cases),
        f"{len(cases)}/{len(cases)} exit 2 naming the file, no traceback, nothing trained",
    )


def test_unreadable_ingested_prompt_names_the_file(run_copy):
    _, _, run_dir, _ = run_copy
    path = run_dir / "ingest" / "prompt.json"
    path.write_bytes(b"\x00\xff garbage")
    with pytest.raises(SpecError, match=str(path)):
        load_ingested(path)


def test_no_stale_temp_files_or_partial_tables_in_the_finished_run(finished_run):
    _, runs, run_dir, _ = finished_run
    assert not [p for p in runs.rglob(".tmp-*")]
    for stage in ("ingest", "inputs", "conversations", "dataset"):
        assert Stage(run_dir, stage, {}, {}).changed_outputs() == []
    for rel in (f"conversations/{MESSAGES_FILE}", f"conversations/{EPISODES_FILE}", f"dataset/{QUARANTINE_FILE}"):
        pq.read_table(run_dir / rel)


def test_a_damaged_adapter_is_refused_before_promotion(tmp_path, faults):
    """Bytes of a finished run's adapter flipped on disk after training: the gate refuses it, naming the file,
    and the promoted pointer stays on the version it named before."""
    cfg = PipelineConfig(runs_dir=str(tmp_path))
    good = promote_run(tmp_path, "a" * 64, student=0.79)
    pipeline.promote_stage(*good, cfg.promote)
    pointer = promoted(tmp_path, "desk")
    assert pointer["adapter_sha256"] == tree_sha256(Path(good[2].files["adapter"]))
    later = promote_run(tmp_path, "c" * 64, student=0.80)
    weights = Path(later[2].files["adapter"]) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the hash its training recorded") as info:
        pipeline.promote_stage(*later, cfg.promote)
    assert str(weights.parent) in str(info.value)
    assert promoted(tmp_path, "desk") == pointer
    assert not (tmp_path / "desk" / ("c" * 12) / "promote" / "_manifest.json").exists()
    faults.add(
        "corrupt file",
        "adapter of a finished run damaged before promotion",
        "one byte of adapter_model.safetensors flipped after its training stage finished (the check is by hash, "
        "so the file's content does not matter: a stand-in adapter folder)",
        1,
        "promotion refused naming the adapter and its manifest; promoted.json still names the earlier version, "
        "whose adapter_sha256 it records for servers",
    )

"""Prompt lineage: a new version records its parent (the promoted version, else the latest finished one) and
what the edit changed, by dialogue turn and by line; `genpi adapters` shows it."""

from __future__ import annotations

import json
from pathlib import Path

from genpi.cli import main
from genpi_core.ingest import run_ingest
from genpi_core.lineage import prompt_diff
from genpi_core.promote import list_adapters
from genpi_core.store.stage import Stage, atomic_write_json, file_sha256
from schemas.artifacts import PROMOTED_FILE
from schemas.config import IngestConfig, ModelConfig
from tests.conftest import EXAMPLE_SPEC

OLD_FACT = "Address: Harbor Lane Public Library, 214 Harbor Lane, Port Ellery."


def _version(folder: Path, text: str, runs: Path):
    spec = folder / f"v{len(list(folder.glob('*.yaml')))}.yaml"
    spec.write_text(text)
    return run_ingest(spec, ModelConfig(), IngestConfig(), runs)


def _finish_evaluation(run_dir: Path) -> None:
    stage = Stage(run_dir, "evaluate", {}, {})
    stage.begin()
    stage.finish([])


def test_each_version_records_its_parent_and_the_lines_the_edit_changed(tmp_path, embedded_model_dir, capsys):
    runs, specs = tmp_path / "runs", tmp_path / "specs"
    specs.mkdir()
    original = EXAMPLE_SPEC.read_text()
    assert OLD_FACT in original
    first = _version(specs, original, runs)
    lineage = json.loads((first.run_dir / "ingest" / "lineage.json").read_text())
    assert lineage == {"parent_version": None, "parent_source": None, "diff": None}  # the first version
    record = json.loads(first.prompt_path.read_text())  # names the spec by file name and bytes, not where it lives
    assert record["source"] == "v0.yaml" and str(tmp_path) not in json.dumps(record)
    assert record["source_sha256"] == file_sha256(specs / "v0.yaml")

    _finish_evaluation(first.run_dir)
    second = _version(specs, original.replace("214 Harbor Lane", "9 Quay Street"), runs)
    lineage = json.loads((second.run_dir / "ingest" / "lineage.json").read_text())
    assert lineage["parent_version"] == first.version and lineage["parent_source"] == "latest finished"
    diff = lineage["diff"]
    assert diff["lines_added"] == 1 and diff["lines_removed"] == 1
    assert "9 Quay Street" in diff["added"][0] and "214 Harbor Lane" in diff["removed"][0]
    assert diff["turns"] == [{"turn": 0, "role": "user", "change": "changed"}]

    # once a version is promoted, the next edit descends from it, not from the latest one
    atomic_write_json(
        runs / first.spec.name / PROMOTED_FILE,
        {
            "name": first.spec.name,
            "version": first.version,
            "version12": first.version[:12],
            "run_dir": str(first.run_dir),
        },
    )
    _finish_evaluation(second.run_dir)
    third = _version(specs, original.replace("214 Harbor Lane", "10 Quay Street"), runs)
    lineage = json.loads((third.run_dir / "ingest" / "lineage.json").read_text())
    assert lineage["parent_version"] == first.version and lineage["parent_source"] == "promoted"

    rows = {r.version12: r for r in list_adapters(runs, first.spec.name)}
    assert rows[third.version[:12]].parent_version12 == first.version[:12]
    assert rows[third.version[:12]].lines_changed == 2 and rows[first.version[:12]].parent_version12 is None
    assert main(["adapters", "--runs-dir", str(runs)]) == 0
    assert f"{first.version[:12]} (2)" in capsys.readouterr().out


def test_pure_logic_the_diff_names_added_and_removed_turns(example_spec):
    prompt = example_spec.prompt
    shorter = prompt.model_copy(update={"dialogue": prompt.dialogue[:-2]})
    diff = prompt_diff(prompt, shorter)
    assert [t["change"] for t in diff["turns"]] == ["removed", "removed"] and diff["lines_added"] == 0
    assert prompt_diff(prompt, prompt) == {
        "turns": [],
        "lines_added": 0,
        "lines_removed": 0,
        "added": [],
        "removed": [],
    }

"""The watcher's decisions (genpi_core.watch): a changed spec is announced once; unchanged, already internalized
and invalid specs are skipped with the reason."""

import shutil

from genpi_core.ingest import load_spec, spec_version
from genpi_core.watch import mark_announced, scan
from tests.conftest import EXAMPLE_SPEC


def _setup(tmp_path):
    prompts, runs = tmp_path / "prompts", tmp_path / "runs"
    prompts.mkdir()
    spec = prompts / "desk.yaml"
    shutil.copy(EXAMPLE_SPEC, spec)
    return prompts, runs, spec


def test_a_new_spec_is_announced_once_then_unchanged(tmp_path):
    prompts, runs, spec = _setup(tmp_path)
    first = scan(prompts, runs)
    assert [(c.name, c.version, c.previous_version) for c in first.changes] == [
        ("library-desk", spec_version(load_spec(spec)), None)
    ]
    mark_announced(first.changes, runs)
    second = scan(prompts, runs)
    assert not second.changes and "unchanged" in second.skipped[str(spec.resolve())]


def test_an_edit_is_a_change_and_whitespace_is_not(tmp_path):
    prompts, runs, spec = _setup(tmp_path)
    first = scan(prompts, runs)
    mark_announced(first.changes, runs)
    spec.write_text(spec.read_text().replace("description: A help-desk", "description:    A help-desk") + "\n\n")
    assert not scan(prompts, runs).changes  # the normalized spec (its version) is the same
    spec.write_text(spec.read_text().replace("(555) 014-2290", "(555) 014-2291"))
    changed = scan(prompts, runs).changes
    assert len(changed) == 1 and changed[0].previous_version == first.changes[0].version
    assert changed[0].version != first.changes[0].version


def test_already_internalized_versions_and_invalid_files_are_skipped(tmp_path):
    prompts, runs, spec = _setup(tmp_path)
    version = spec_version(load_spec(spec))
    done = runs / "library-desk" / version[:12] / "evaluate"
    done.mkdir(parents=True)
    (done / "_manifest.json").write_text("{}")
    (prompts / "broken.yaml").write_text("name: [unclosed\n")
    (prompts / ".hidden").mkdir()
    shutil.copy(EXAMPLE_SPEC, prompts / ".hidden" / "x.yaml")
    result = scan(prompts, runs)
    assert not result.changes
    assert "already internalized" in result.skipped[str(spec.resolve())]
    assert "not a valid spec" in result.skipped[str((prompts / "broken.yaml").resolve())]
    assert len(result.skipped) == 2  # hidden folders are not scanned

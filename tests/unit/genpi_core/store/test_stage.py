"""Run store: atomic writes, stage completeness, resume, and what a kill leaves behind (real processes)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from genpi_core.store.stage import Stage, atomic_dir, atomic_write_text
from schemas.artifacts import MANIFEST


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "out.txt"
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_a_folder_that_refuses_new_files_is_named_in_the_error(tmp_path, monkeypatch):
    """A FAKE read-only folder (root ignores chmod): mkstemp fails with EROFS, as on a read-only mount."""
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".tmp-out.txtabc123"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OSError, match=r"cannot write .*/out\.txt: Read-only file system") as err:
        atomic_write_text(tmp_path / "out.txt", "hello")
    assert err.value.errno == errno.EROFS and ".tmp-" not in str(err.value)


def test_atomic_dir_replaces_whole_folder_or_nothing(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights.bin").write_text("half of v2")
            raise RuntimeError("killed mid-save")
    assert (target / "weights.bin").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def _finish_stage(run_dir: Path, config: dict, inputs: dict) -> Stage:
    stage = Stage(run_dir, "demo", config, inputs)
    stage.begin()
    atomic_write_text(stage.dir / "out.txt", "result")
    stage.finish(["out.txt"], rows={"rows": 1})
    return stage


def test_complete_stage_is_recognized_and_changes_invalidate_it(tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("v1")
    _finish_stage(tmp_path / "run", {"lr": 1}, {"input": source})
    assert Stage(tmp_path / "run", "demo", {"lr": 1}, {"input": source}).is_complete()
    assert not Stage(tmp_path / "run", "demo", {"lr": 2}, {"input": source}).is_complete()  # config changed
    source.write_text("v2")
    assert not Stage(tmp_path / "run", "demo", {"lr": 1}, {"input": source}).is_complete()  # input changed


def test_edited_output_makes_stage_incomplete(tmp_path):
    stage = _finish_stage(tmp_path, {}, {})
    (stage.dir / "out.txt").write_text("tampered")
    assert not Stage(tmp_path, "demo", {}, {}).is_complete()


def test_manifest_records_provenance(tmp_path):
    stage = _finish_stage(tmp_path, {"lr": 1}, {})
    manifest = json.loads((stage.dir / MANIFEST).read_text())
    assert manifest["config"] == {"lr": 1} and manifest["rows"] == {"rows": 1}
    assert set(manifest["outputs"]) == {"out.txt"} and "torch" in manifest["versions"]


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from genpi_core.store.stage import Stage, atomic_write_bytes
    stage = Stage(Path(sys.argv[1]), "demo", {}, {})
    stage.begin()
    atomic_write_bytes(stage.dir / "first.txt", b"done")
    # a large file written in pieces, the way a slow writer would; the parent kills us midway
    import os, tempfile
    fd, tmp = tempfile.mkstemp(prefix=".tmp-second.txt", dir=stage.dir)
    with os.fdopen(fd, "wb") as handle:
        print("writing", flush=True)
        for _ in range(1000):
            handle.write(b"x" * 100_000)
            handle.flush()
            time.sleep(0.01)
    """
)


def test_stage_killed_mid_write_is_not_complete_and_reruns(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stage = Stage(tmp_path, "demo", {}, {})
    assert (stage.dir / "first.txt").exists() and not (stage.dir / MANIFEST).exists()
    assert not (stage.dir / "second.txt").exists()  # only a .tmp- file, never the finished name
    assert not stage.is_complete()
    stage.begin()  # the re-run starts clean: no leftover can pass for output
    assert list(stage.dir.iterdir()) == []
    atomic_write_text(stage.dir / "second.txt", "ok")
    stage.finish(["second.txt"])
    assert Stage(tmp_path, "demo", {}, {}).is_complete()


def test_checkpoint_survives_a_restart_only_under_the_same_key(tmp_path):
    stage = Stage(tmp_path, "synth", {"turns": 2}, {})
    stage.begin(keep_checkpoint=True)
    atomic_write_text(stage.dir / "_state" / "progress.json", '{"completed_steps": 1}')
    atomic_write_text(stage.dir / "partial.parquet", "half")
    Stage(tmp_path, "synth", {"turns": 2}, {}).begin(keep_checkpoint=True)  # killed, re-run, same key
    assert (stage.dir / "_state" / "progress.json").is_file() and not (stage.dir / "partial.parquet").exists()
    Stage(tmp_path, "synth", {"turns": 3}, {}).begin(keep_checkpoint=True)  # config changed: start over
    assert not (stage.dir / "_state" / "progress.json").exists()
    Stage(tmp_path, "synth", {"turns": 3}, {}).begin()  # a non-resumable stage never keeps a checkpoint
    assert list(stage.dir.iterdir()) == []


def test_bumping_a_stage_kinds_code_version_recomputes_it_and_its_checkpoint(tmp_path, monkeypatch):
    from genpi_core.store import stage as stage_module

    def finished(name: str) -> Stage:
        stage = Stage(tmp_path, name, {"lr": 1}, {})
        stage.begin(keep_checkpoint=True)
        (stage.dir / "_state").mkdir(exist_ok=True)
        (stage.dir / "_state" / "step-3.pt").write_text("old dose")
        stage.finish([])
        return stage

    unversioned_key = Stage(tmp_path, "train-joint-s0", {"lr": 1}, {}).key
    finished("train-joint-s0")
    finished("inputs")
    monkeypatch.setitem(stage_module.STAGE_CODE_VERSIONS, "train", 2)  # the trainer's objective changed
    bumped = Stage(tmp_path, "train-joint-s0", {"lr": 1}, {})
    assert bumped.key != unversioned_key and not bumped.is_complete()
    bumped.begin(keep_checkpoint=True)  # a checkpoint written under the old code is not resumed
    assert not (bumped.dir / "_state" / "step-3.pt").exists()
    assert Stage(tmp_path, "inputs", {"lr": 1}, {}).is_complete()  # other kinds keep their finished work

"""Disk full and unwritable run folders, made real: a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored, so
writes fail with EFBIG) on the `genpi` process, a small tmpfs as the run folder (ENOSPC; needs
permission to mount, skipped otherwise) and a file where the run folder should be.

Each must give a clear error naming the file or folder, leave no manifest for the failed stage and
no partial file under a final name, and a re-run with room must complete.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from genpi_core.store.stage import Stage, atomic_write_bytes
from schemas.artifacts import MANIFEST

GENPI = str(Path(sys.executable).with_name("genpi"))
SPEC = {
    "name": "disk-demo",
    "prompt": {"system": "You are a terse assistant. Answer in one short sentence."},
    "inputs": {
        "pool": ["What is two plus two?", "Name a colour.", "Say hello."],
        "eval": [{"text": "What day comes after Monday?", "facts": ["tuesday"]}],
    },
}
SETS = [
    "synth.inputs.max_inputs=3",
    "synth.conversations.max_turns=1",
    "synth.conversations.environment.max_new_tokens=8",
    "synth.teacher.max_new_tokens=48",
    "synth.base.max_new_tokens=8",
    "synth.reasons.enabled=false",
]
STAGES = ("ingest", "inputs", "conversations")


def _limit(max_bytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return apply


def _synthesize(spec: Path, runs: Path, preexec=None) -> subprocess.CompletedProcess:
    args = [GENPI, "synthesize", str(spec), "--no-prefect", "--runs-dir", str(runs)]
    for item in SETS:
        args += ["--set", item]
    return subprocess.run(
        args, capture_output=True, text=True, timeout=600, preexec_fn=preexec, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )


@pytest.fixture
def spec(tmp_path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def _check_nothing_partial(runs: Path) -> list[str]:
    """No temp file left, every Parquet file readable, every manifest's outputs intact; returns finished stages."""
    assert not list(runs.rglob(".tmp-*")), list(runs.rglob(".tmp-*"))
    for table in runs.rglob("*.parquet"):
        pq.read_table(table)  # a partial file under a final name would fail here
    finished = []
    for manifest in runs.rglob(MANIFEST):
        stage = Stage(manifest.parent.parent, manifest.parent.name, {}, {})
        assert stage.changed_outputs() == [], manifest
        finished.append(stage.name)
    return finished


def _assert_clear_error(out: subprocess.CompletedProcess, runs: Path, reason: str) -> None:
    assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "genpi: error: " in out.stderr and "cannot write " + str(runs) in out.stderr, out.stderr[-2000:]
    assert reason in out.stderr and "nothing was written under that name" in out.stderr, out.stderr[-2000:]


def test_atomic_write_under_a_file_size_limit_names_the_file_and_leaves_nothing(tmp_path, faults):
    """In a child process (the limit must not touch pytest): EFBIG on write, no temp file, no final file."""
    target = tmp_path / "stage" / "table.parquet"
    code = (
        "import sys; from pathlib import Path; from genpi_core.store.stage import atomic_write_bytes\n"
        "try:\n    atomic_write_bytes(Path(sys.argv[1]), b'x' * 100_000)\n"
        "except OSError as exc:\n    print(exc); sys.exit(3)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120, preexec_fn=_limit(4096)
    )
    assert out.returncode == 3, out.stderr
    assert f"cannot write {target}: File too large" in out.stdout
    assert list(target.parent.iterdir()) == []
    atomic_write_bytes(target, b"ok")  # without the limit the same write succeeds
    assert target.read_bytes() == b"ok"
    faults.add(
        "disk",
        "file size limit hit while writing a table",
        "RLIMIT_FSIZE=4 KiB in a child process (EFBIG)",
        1,
        "OSError naming the file; no temp or final file left",
    )


def test_run_folder_that_is_a_file_is_a_clear_error(tmp_path, spec, faults):
    runs = tmp_path / "runs"
    runs.write_text("not a folder")
    out = _synthesize(spec, runs)
    assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert str(runs) in out.stderr and ("Not a directory" in out.stderr or "File exists" in out.stderr), out.stderr[
        -2000:
    ]
    assert runs.read_text() == "not a folder"
    faults.add(
        "disk",
        "run folder is not writable (a file where the folder should be)",
        "runs_dir points at a file",
        1,
        "clear error naming the path, exit != 0, no traceback",
    )


def test_file_size_limit_during_synthesis_then_rerun_completes(tmp_path, spec, embedded_model_dir, faults):
    """The real CLI under a file-size limit fails at the first file over it; a re-run with room completes."""
    runs = tmp_path / "runs"
    out = _synthesize(spec, runs, preexec=_limit(1024))
    _assert_clear_error(out, runs, "File too large")
    finished = _check_nothing_partial(runs)
    assert set(finished) < set(STAGES)  # the stage that hit the limit has no manifest
    again = _synthesize(spec, runs)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(_check_nothing_partial(runs)) == set(STAGES)
    faults.add(
        "disk",
        "file size limit during `genpi synthesize`",
        "RLIMIT_FSIZE=1 KiB on the CLI process (EFBIG)",
        1,
        "exit 1 naming the file, no manifest for the failed stage, no partial file; re-run completed",
    )


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


def _remount_and_rerun(mount: Path, options: str, spec: Path, runs: Path) -> None:
    """Give the file system room (or writes) back; the re-run must then finish every stage, nothing partial."""
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)
    again = _synthesize(spec, runs)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(_check_nothing_partial(runs)) == set(STAGES)


@pytest.mark.reliability
def test_disk_full_at_several_points_of_synthesis_then_rerun_completes(tmp_path, spec, embedded_model_dir, faults):
    """A real full disk: the run folder is a tmpfs too small for the run; each size fails at a later write."""
    sizes = ["8k", "24k", "48k"]
    failed_at = []
    for size in sizes:
        mount = tmp_path / f"fs-{size}"
        if not _mount_tmpfs(mount, size):
            pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
        try:
            runs = mount / "runs"
            out = _synthesize(spec, runs)
            if out.returncode == 0:  # everything fitted: nothing to check at this size
                failed_at.append(None)
                continue
            _assert_clear_error(out, runs, "No space left on device")
            finished = _check_nothing_partial(runs)
            failed_at.append(next(s for s in STAGES if s not in finished))
            _remount_and_rerun(mount, "size=64m", spec, runs)
        finally:
            subprocess.run(["umount", str(mount)], capture_output=True)
    injected = [s for s in failed_at if s]
    assert injected, f"no size made the run fail: {failed_at}"
    faults.add(
        "disk",
        "disk full during `genpi synthesize`",
        f"run folder on a tmpfs of {', '.join(sizes)} (ENOSPC), then remounted larger",
        len(injected),
        f"failed in stages {injected}: exit 1 naming the file, no manifest for the failed stage, "
        "no partial file; every re-run completed",
    )


@pytest.mark.reliability
def test_read_only_run_folder_is_a_clear_error_then_rerun_completes(tmp_path, spec, embedded_model_dir, faults):
    """A truly unwritable run folder (chmod means nothing to root): a tmpfs remounted read-only (EROFS)."""
    mount = tmp_path / "fs-ro"
    if not _mount_tmpfs(mount, "64m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        runs = mount / "runs"
        runs.mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        out = _synthesize(spec, runs)
        assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr[-3000:]
        assert "genpi: error: " in out.stderr and "Read-only file system" in out.stderr, out.stderr[-2000:]
        assert str(runs) in out.stderr, out.stderr[-2000:]
        assert list(runs.iterdir()) == []
        _remount_and_rerun(mount, "rw", spec, runs)
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)
    faults.add(
        "disk",
        "run folder not writable (read-only file system)",
        "run folder on a tmpfs remounted read-only (EROFS), then read-write",
        1,
        "exit != 0 naming the run folder, no traceback, nothing written; re-run completed",
    )


# ---- training checkpoints and evaluation writes -------------------------------------------------------


def _free_bytes(mount: Path) -> int:
    st = os.statvfs(mount)
    return st.f_bavail * st.f_frsize


def _used_bytes(mount: Path) -> int:
    st = os.statvfs(mount)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


MARGIN = {"train": 256 << 10, "evaluate": 8 << 10}  # room left: less than a checkpoint / the evaluation's files


@pytest.mark.reliability
def test_disk_full_and_read_only_in_training_and_evaluation_then_rerun_completes(tmp_path, faults):
    """The whole pipeline on a tmpfs; at the door of train and of evaluate (held shut through the stage's lock,
    tests/reliability/kill_harness.py) the disk is made full (the tmpfs shrunk to what is used plus ``MARGIN``,
    so the trainer's checkpoints or the evaluation's tables do not fit) or the stage folder read-only (a
    read-only bind mount of it: a remount of the whole tmpfs is refused while the pipeline holds files open).
    Each time: a clear error naming the file, the stages finished before untouched, nothing partial; after
    the last fault a re-run completes and reuses what finished."""
    from tests.reliability import kill_harness as kh

    mount = tmp_path / "fs"
    if not _mount_tmpfs(mount, "1g"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    config = tmp_path / "kills.yaml"
    config.write_text(kh.CONFIG_YAML)
    runs, log = mount / "runs", tmp_path / "pipeline.log"
    run_dir = kh.run_dir_of(runs)
    cases = [("train", "full"), ("train", "read-only"), ("evaluate", "full"), ("evaluate", "read-only")]
    reasons = {"full": "No space left on device", "read-only": "Read-only file system"}
    seen = []
    try:
        for stage, fault in cases:
            gate = kh.Gate(kh.lock_path(run_dir, stage))
            start = log.stat().st_size if log.exists() else 0
            proc = kh.start(config, runs, log)
            try:
                assert gate.wait_for(proc, 1800), f"pipeline exited before {stage}:\n{kh.tail(log)}"
                before = kh.finished_at(run_dir)
                target = run_dir / stage
                if fault == "full":
                    size = _used_bytes(mount) + MARGIN[stage]
                    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)
                else:
                    target.mkdir(exist_ok=True)
                    subprocess.run(["mount", "--bind", str(target), str(target)], check=True)
                    subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
                gate.open()
                code = proc.wait(timeout=1800)
            finally:
                gate.open()
                kh.kill_group(proc.pid)
                proc.wait()
                if fault == "full":
                    subprocess.run(["mount", "-o", "remount,size=1g", str(mount)], check=True)
                else:
                    subprocess.run(["umount", str(run_dir / stage)], capture_output=True)
            out = log.read_bytes()[start:].decode(errors="replace")  # offsets in bytes: progress bars are UTF-8
            assert code in (1, 2), f"{stage}/{fault}: exit {code}\n{out[-3000:]}"
            assert "Traceback" not in out and "genpi: error: " in out, f"{stage}/{fault}:\n{out[-3000:]}"
            message = out[out.rindex("genpi: error: ") :].splitlines()[0]
            # the file it names is in the run folder: the stage's own, or a cache it writes first (replay/)
            assert reasons[fault] in message and str(run_dir) in message, message
            after = kh.finished_at(run_dir)
            assert {s: after.get(s) for s in before} == before, (before, after)  # nothing finished was lost
            assert stage not in after
            _check_nothing_partial(runs)
            seen.append((stage, fault, message.removeprefix("genpi: error: ").replace(str(run_dir), "RUN")[:200]))
        trained_at = kh.finished_at(run_dir)["train"]
        assert kh.finish(config, runs, log) == 0, kh.tail(log)
        done = kh.finished_at(run_dir)
        assert {"train", "evaluate", "promote"} <= set(done) and done["train"] == trained_at
        _check_nothing_partial(runs)
    finally:
        subprocess.run(["umount", "-R", str(mount)], capture_output=True)
    for stage, fault, message in seen:
        faults.add(
            "disk",
            f"{'disk full' if fault == 'full' else 'read-only stage folder'} during {stage}",
            f"`genpi internalize` held at the {stage} door, then "
            + (
                f"the run's tmpfs shrunk to its usage + {MARGIN[stage] >> 10} KiB (ENOSPC)"
                if fault == "full"
                else f"a read-only bind mount of {stage}/ (EROFS)"
            ),
            1,
            f'exit 1, no traceback: "{message}" (RUN: the run folder); earlier stages untouched, nothing partial; the final re-run '
            "completed and reused the finished training",
        )

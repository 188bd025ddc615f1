"""Concurrency: runs that share a runs folder take turns per stage (``store.file_lock``), so two flows for
the same prompt version build ONE adapter, two different prompts never touch each other's folders, and
the ``.lock`` files a run leaves behind (also after ``kill -9``) never block a re-run.

Real processes only. The fast tests drive the stage lock with a cheap stage body in several Python
processes; the long ones (``reliability`` marker) start real ``genpi internalize`` processes on the
embedded model with configs/smoke.yaml.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genpi_core.store.tables import read_table
from schemas.artifacts import (
    EPISODES_FILE,
    EVAL_RESULTS_FILE,
    INPUTS_FILE,
    MESSAGES_FILE,
    QUARANTINE_FILE,
    TARGETS_FILE,
    TEST_FILE,
    TRAIN_FILE,
    TRAIN_LOG_FILE,
    VAL_FILE,
)
from schemas.datasets import (
    EpisodesSchema,
    EvalResultsSchema,
    ExamplesSchema,
    HeldOutSchema,
    InputsSchema,
    MessagesSchema,
    QuarantineSchema,
    TargetsSchema,
    TrainLogSchema,
)

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
LIBRARY = ROOT / "examples" / "prompts" / "library_desk.yaml"
HOTEL = ROOT / "examples" / "prompts" / "hotel_concierge.yaml"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PYTHONUNBUFFERED": "1",
}

# One stage run through the real pipeline._run (lock, completeness check, begin, finish): the body takes
# `hold` seconds and appends this process's id to a shared log, so the tests can count who did the work.
_STAGE_SCRIPT = """
import os, sys, time
from pathlib import Path
from genpi_core.pipeline import _run
from genpi_core.store.stage import Stage
run_dir, hold = Path(sys.argv[1]), float(sys.argv[2])
stage = Stage(run_dir, "work", {"k": 1}, {})
def work(out_dir):
    with open(run_dir / "did_work.log", "a") as log:
        log.write(f"{os.getpid()}\\n")
    time.sleep(hold)
    (out_dir / "out.txt").write_text("done by %d" % os.getpid())
    return {"rows": 1}
print("READY", flush=True)
out = _run(stage, {"out": "out.txt"}, work)
print("REUSED" if out.reused else "DID", flush=True)
"""


def _stage_process(run_dir: Path, hold: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _STAGE_SCRIPT, str(run_dir), str(hold)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_racing_processes_run_a_stage_once(tmp_path, faults):
    """Four processes start the same stage at once: one does the work, three wait and reuse it."""
    procs = [_stage_process(tmp_path, hold=1.5) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e for _, e in outs]
    verdicts = sorted(o.split()[-1] for o, _ in outs)
    assert verdicts == ["DID", "REUSED", "REUSED", "REUSED"]
    assert len((tmp_path / "did_work.log").read_text().split()) == 1
    manifest = json.loads((tmp_path / "work" / "_manifest.json").read_text())
    assert manifest["rows"] == {"rows": 1} and (tmp_path / ".work.lock").is_file()
    faults.add(
        "concurrency",
        "same stage started by 4 processes at once",
        "4 Python processes run pipeline._run on one run folder simultaneously",
        4,
        "work done once, 3 reused; 1 manifest",
    )


def test_lock_of_a_killed_holder_does_not_block(tmp_path, faults):
    """kill -9 of the process holding the stage lock mid-work: the lock dies with it (flock), the stale
    .lock file stays on disk, and a re-run does the stage from a clean folder and finishes."""
    holder = _stage_process(tmp_path, hold=60)
    assert holder.stdout.readline().strip() == "READY"
    deadline = time.monotonic() + 60
    while not (tmp_path / "did_work.log").is_file():  # the holder is inside the stage body, lock held
        assert time.monotonic() < deadline and holder.poll() is None
        time.sleep(0.1)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (tmp_path / ".work.lock").is_file() and not (tmp_path / "work" / "_manifest.json").exists()
    started = time.monotonic()
    again = _stage_process(tmp_path, hold=0.1)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert out.split()[-1] == "DID" and time.monotonic() - started < 60
    assert len((tmp_path / "did_work.log").read_text().split()) == 2
    assert (tmp_path / "work" / "out.txt").read_text() == f"done by {again.pid}"
    rerun = _stage_process(tmp_path, hold=0.1)  # and a third run just reuses it, lock file and all
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0 and out.split()[-1] == "REUSED"
    faults.add(
        "concurrency",
        "stale .lock file after kill -9 of the lock holder",
        "SIGKILL of a process inside a locked stage, then 2 re-runs",
        1,
        "lock released with the process; re-run finished the stage; next run reused it",
    )


_TABLES = {
    ("inputs", INPUTS_FILE): InputsSchema,
    ("inputs", QUARANTINE_FILE): QuarantineSchema,
    ("conversations", MESSAGES_FILE): MessagesSchema,
    ("conversations", TARGETS_FILE): TargetsSchema,
    ("conversations", EPISODES_FILE): EpisodesSchema,
    ("conversations", QUARANTINE_FILE): QuarantineSchema,
    ("dataset", TRAIN_FILE): ExamplesSchema,
    ("dataset", VAL_FILE): ExamplesSchema,
    ("dataset", TEST_FILE): HeldOutSchema,
    ("dataset", QUARANTINE_FILE): QuarantineSchema,
    ("train", TRAIN_LOG_FILE): TrainLogSchema,
    ("evaluate", EVAL_RESULTS_FILE): EvalResultsSchema,
}


def _internalize(spec: Path, runs: Path, home: Path, prefect: bool, log: Path) -> subprocess.Popen:
    home.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(ROOT / ".venv" / "bin" / "genpi"),
        "internalize",
        str(spec),
        "--config",
        str(SMOKE),
        "--runs-dir",
        str(runs),
    ]
    env = {**ENV, "PREFECT_HOME": str(home)}  # each flow gets its own temporary Prefect server and database
    return subprocess.Popen(
        cmd + ([] if prefect else ["--no-prefect"]), cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def _run_dir(runs: Path, name: str) -> Path:
    found = [p for p in (runs / name).iterdir() if p.is_dir()]
    assert len(found) == 1, found  # one prompt version, one run folder
    return found[0]


@pytest.mark.reliability
def test_parallel_flows_one_adapter_and_no_interference(tmp_path, faults):
    """Three `genpi internalize` processes at once on one runs folder: two Prefect flows for the same
    prompt version (library-desk) and a third for another prompt (hotel-concierge). The same-version
    pair trains once (one says `train done`, the other `train reused`, one manifest), every process
    exits 0, each run folder holds only its own prompt's tables, all of which validate; a later re-run
    reuses everything and the .lock files left behind do not block it."""
    runs = tmp_path / "runs"
    logs = [tmp_path / f"{n}.log" for n in ("lib-a", "lib-b", "hotel")]
    procs = [
        _internalize(LIBRARY, runs, tmp_path / "home-a", True, logs[0]),
        _internalize(LIBRARY, runs, tmp_path / "home-b", True, logs[1]),
        _internalize(HOTEL, runs, tmp_path / "home-c", False, logs[2]),
    ]
    try:
        codes = [p.wait(timeout=1800) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], [t[-3000:] for t in texts]

    # the same-version pair: every stage done by exactly one flow, the other reused it
    for stage in ("inputs", "conversations", "dataset", "train", "evaluate"):
        verdicts = [re.findall(rf"\b{stage} (done|reused):", t) for t in texts[:2]]
        assert sorted(v[-1] for v in verdicts) == ["done", "reused"], (stage, verdicts)
    library = _run_dir(runs, "library-desk")
    assert sorted(p.name for p in library.glob("train*")) == ["train"]
    manifest = json.loads((library / "train" / "_manifest.json").read_text())
    adapters = {
        line.split("adapter:")[1].strip() for t in texts[:2] for line in t.splitlines() if line.startswith("adapter:")
    }
    assert adapters == {str(library / "train" / "adapter")} and (library / "train" / "adapter").is_dir()

    # no interference: each folder holds its own prompt's tables only, and every table validates
    hotel = _run_dir(runs, "hotel-concierge")
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["hotel-concierge", "library-desk"]
    for run_dir, spec in ((library, LIBRARY), (hotel, HOTEL)):
        version = json.loads((run_dir / "ingest" / "prompt.json").read_text()).get("version", run_dir.name)
        assert version.startswith(run_dir.name)
        for (stage, name), schema in _TABLES.items():
            df = read_table(run_dir / stage / name, schema)
            if name == INPUTS_FILE:
                assert set(df["prompt_version"]) == {version}
                from genpi_core.ingest import load_spec

                assert set(df["text"]) <= set(load_spec(spec).inputs.pool)  # smoke.yaml: pool inputs only
        assert json.loads((run_dir / "promote" / "_manifest.json").read_text())["stage"] == "promote"
    lib_inputs = set(read_table(library / "inputs" / INPUTS_FILE, InputsSchema)["text"])
    hotel_inputs = set(read_table(hotel / "inputs" / INPUTS_FILE, InputsSchema)["text"])
    assert not lib_inputs & hotel_inputs

    # re-run with the lock files in place: everything reused, nothing rewritten
    locks = sorted(p.name for p in library.glob(".*.lock"))
    assert ".train.lock" in locks
    finished = {p.parent.name: json.loads(p.read_text())["finished_at"] for p in library.glob("*/_manifest.json")}
    again = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "genpi"),
            "internalize",
            str(LIBRARY),
            "--config",
            str(SMOKE),
            "--runs-dir",
            str(runs),
            "--no-prefect",
        ],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert {
        p.parent.name: json.loads(p.read_text())["finished_at"] for p in library.glob("*/_manifest.json")
    } == finished
    assert json.loads((library / "train" / "_manifest.json").read_text()) == manifest
    faults.add(
        "concurrency",
        "two flows for the same prompt version at once",
        "2 `genpi internalize` Prefect flows started together on one runs folder",
        2,
        "both exit 0; every stage done once and reused once; 1 adapter",
    )
    faults.add(
        "concurrency",
        "two different prompts in parallel",
        "library-desk and hotel-concierge internalized at the same time in one runs folder",
        2,
        f"both complete; each folder only its own tables; {2 * len(_TABLES)} tables validate",
    )
    faults.add(
        "concurrency",
        "re-run over the .lock files of finished runs",
        f"`genpi internalize` again after the parallel runs ({len(locks)} lock files present)",
        1,
        "exit 0; every stage reused, manifests unchanged",
    )

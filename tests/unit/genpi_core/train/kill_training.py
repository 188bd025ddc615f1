"""A training child process killed with SIGKILL (no chance to clean up) once its checkpoint reaches a step."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from genpi_core.train.job import TrainJob
from schemas.artifacts import CHECKPOINT_DIR, LATEST_CHECKPOINT, TRAIN_JOB_FILE


def kill_at_checkpoint(job: TrainJob, step: int, timeout_s: float = 300) -> int | None:
    """Start ``python -m genpi_core.train.job`` for ``job``; SIGKILL its process group as soon as the newest
    checkpoint is at ``step`` or later. Returns that checkpoint's step, or None if the run ended first."""
    state = Path(job.out_dir) / CHECKPOINT_DIR
    state.mkdir(parents=True, exist_ok=True)
    (state / TRAIN_JOB_FILE).write_text(job.model_dump_json())
    proc = subprocess.Popen(
        [sys.executable, "-m", "genpi_core.train.job", "--job", str(state / TRAIN_JOB_FILE)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    killed_after, deadline = None, time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        pointer = state / LATEST_CHECKPOINT
        if pointer.is_file() and int(pointer.read_text().rsplit("-", 1)[1]) >= step:
            os.killpg(proc.pid, signal.SIGKILL)  # mid-run, no chance to clean up
            killed_after = int(pointer.read_text().rsplit("-", 1)[1])
            break
        time.sleep(0.02)
    proc.wait(30)
    return killed_after

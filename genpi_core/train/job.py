"""Training in its own process: the job file, the launcher, and the entry point.

The train stage writes a ``TrainJob`` (JSON) and runs this module as a child process, one or
several (``accelerate launch`` for DDP), so the parent never holds the model's training memory and
gets it all back when the child exits. The child writes the adapter and metrics into the stage
folder; the parent only reads paths. The child's output is streamed to the parent's stderr and
kept in ``train.log``.

Entry point (also what ``accelerate launch`` runs):
    python -m genpi_core.train.job --job JOB.json
    accelerate launch --multi_gpu --num_processes 2 -m genpi_core.train.job --job JOB.json   (GPUs, or gloo on CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from pydantic import BaseModel

from genpi_core.processes import child_setup, die_with_parent
from genpi_core.store.stage import atomic_write_json
from schemas.artifacts import TRAIN_JOB_FILE, TRAIN_PROCESS_LOG
from schemas.config import ModelConfig, TrainConfig

EXIT_OS_ERROR = 74  # EX_IOERR: an OSError in the trainer (a checkpoint or the adapter did not fit, read-only folder)
OS_ERROR_PREFIX = "genpi-train: error: "


class TrainJob(BaseModel):
    """Everything a training process needs, as paths and configs."""

    model: ModelConfig
    train: TrainConfig
    train_path: str
    val_path: str
    prompt_path: str = ""  # ingested prompt.json; needed for prompt_in_context and on-policy distillation
    teacher_logprobs_path: str = ""  # the teacher_logprobs stage's table; needed for train.distill_weight > 0
    out_dir: str


def _prompt_messages(prompt_path: str) -> list:
    if not prompt_path:
        return []
    from genpi_core.ingest import load_ingested
    from genpi_core.prompt.views import prompt_messages

    spec, _ = load_ingested(prompt_path)
    return prompt_messages(spec.prompt)


def run_job(job: TrainJob) -> dict:
    from genpi_core.train.recipe import run_finetune

    return run_finetune(
        job.model,
        job.train,
        Path(job.train_path),
        Path(job.val_path),
        _prompt_messages(job.prompt_path),
        Path(job.out_dir),
        teacher_logprobs_path=Path(job.teacher_logprobs_path) if job.teacher_logprobs_path else None,
    )


def launch_command(job_path: Path, job: TrainJob) -> list[str]:
    """One process, or ``accelerate launch`` with N data-parallel processes (gloo on CPU)."""
    entry = ["-m", "genpi_core.train.job", "--job", str(job_path)]
    if job.train.accelerate_config:  # the user's accelerate config (DDP, FSDP, ...), the process count from ours
        return [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            job.train.accelerate_config,
            "--num_processes",
            str(job.train.num_processes),
            *entry,
        ]
    if job.train.num_processes == 1:
        return [sys.executable, *entry]
    # `--multi_gpu` also on CPU machines: accelerate's `--cpu` flag would run ONE process (its simple launcher,
    # multi-CPU there means MPI); torch.distributed.run starts N and Accelerator(cpu=True) then uses gloo.
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(job.train.num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *entry,
    ]


def launch(job: TrainJob, state_dir: Path) -> Path:
    """Run the job in child process(es); raise with the log's tail if they fail. Returns metrics.json's path."""
    from schemas.artifacts import METRICS_FILE

    state_dir.mkdir(parents=True, exist_ok=True)
    job_path = state_dir / TRAIN_JOB_FILE
    atomic_write_json(job_path, job)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if job.train.num_processes > 1:  # split the cores between processes instead of oversubscribing them
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // job.train.num_processes)))
    log_path = state_dir / TRAIN_PROCESS_LOG
    tail: deque[str] = deque(maxlen=40)
    with open(log_path, "a", encoding="utf-8", buffering=1) as log:  # line-buffered: a full disk fails here
        proc = subprocess.Popen(
            launch_command(job_path, job),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            preexec_fn=child_setup(),  # a killed pipeline takes its trainer with it
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sys.stderr.write(line)
                tail.append(line)
                try:
                    log.write(line)
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot write {log_path}: {exc.strerror or exc}") from exc
            code = proc.wait()
        except BaseException:  # SIGTERM/Ctrl-C of the pipeline: the trainer goes now, not at process exit
            proc.kill()
            proc.wait()
            raise
    if code == EXIT_OS_ERROR:  # an OSError in the child (disk full, read-only): its last line names the file
        said = [line for line in tail if line.startswith(OS_ERROR_PREFIX)]
        raise OSError(
            said[-1].removeprefix(OS_ERROR_PREFIX).strip()
            if said
            else f"training stopped on an OSError; see {log_path}"
        )
    if code != 0:
        raise RuntimeError(f"training process exited with code {code}; full log: {log_path}\n" + "".join(tail)[-4000:])
    return Path(job.out_dir) / METRICS_FILE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train a genpi LoRA adapter from a job file (see genpi_core/train/job.py)."
    )
    parser.add_argument("--job", required=True, type=Path, help="TrainJob JSON written by the train stage")
    args = parser.parse_args(argv)
    die_with_parent()  # under `accelerate launch` the parent is the launcher, which dies with the pipeline
    job = TrainJob.model_validate_json(args.job.read_text(encoding="utf-8"))
    try:
        metrics = run_job(job)
    except OSError as exc:  # one clear line for the launcher instead of a traceback it would have to parse
        print(f"{OS_ERROR_PREFIX}{exc}", flush=True)
        sys.exit(EXIT_OS_ERROR)
    if metrics:
        print(json.dumps({k: metrics[k] for k in ("steps", "final_loss", "train_seconds")}), flush=True)


if __name__ == "__main__":
    main()

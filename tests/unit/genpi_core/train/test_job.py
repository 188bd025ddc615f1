"""Training as real child processes: a run killed with SIGKILL resumes from its last checkpoint and ends
with the same adapter as a run never killed; `accelerate launch` with two CPU processes (gloo) trains
the same adapter as one process."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from genpi_core.prompt.pg_format import pg_question
from genpi_core.store.tables import write_table
from genpi_core.train.job import TrainJob, launch
from schemas.artifacts import ADAPTER_DIR, CHECKPOINT_DIR
from schemas.config import LoraConfig, ModelConfig, TrainConfig
from schemas.datasets import ExamplesSchema
from tests.unit.genpi_core.train.kill_training import kill_at_checkpoint

ACCELERATE = Path(__file__).resolve().parents[4] / "configs" / "accelerate"
TOPICS = ["hours", "cards", "printing", "rooms", "events", "loans", "fines", "kids"]


def _data(folder: Path) -> tuple[Path, Path]:
    def rows(ids):
        out = []
        for i in ids:
            topic = TOPICS[i % len(TOPICS)]
            out.append(
                {
                    "example_id": f"c{i}:0",
                    "conversation_id": f"c{i}",
                    "objective": "sft",
                    "messages": json.dumps([{"role": "user", "content": f"A question about {topic}?"}]),
                    "target": f"Topic: {topic}\nAnswer: Ask the desk about {topic}.",
                    "reason": "",
                    "weight": 1.0,
                }
            )
            out.append(
                {
                    "example_id": f"c{i}:pg",
                    "conversation_id": f"c{i}",
                    "objective": "pg",
                    "messages": json.dumps(pg_question(f"A question about {topic}?", "Hello!", f"Topic: {topic}")),
                    "target": "[user]\nReply as 'Topic: x' then 'Answer: y'.",
                    "reason": "It sets the format.",
                    "weight": 1.0,
                }
            )
        return pd.DataFrame(out)

    folder.mkdir(parents=True, exist_ok=True)
    write_table(rows(range(6)), ExamplesSchema, folder / "train.parquet")
    write_table(rows(range(6, 8)), ExamplesSchema, folder / "val.parquet")
    return folder / "train.parquet", folder / "val.parquet"


def _job(data: Path, out: Path, **train) -> TrainJob:
    train_path, val_path = _data(data)
    cfg = TrainConfig(
        epochs=2,
        batch_size=2,
        pg_per_step=1,
        learning_rate=5e-3,
        checkpoint_every=2,
        lora=LoraConfig(rank=4, alpha=8),
        **train,
    )
    return TrainJob(
        model=ModelConfig(device="cpu"), train=cfg, train_path=str(train_path), val_path=str(val_path), out_dir=str(out)
    )


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / ADAPTER_DIR / "adapter_model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _share_beyond(a: dict, b: dict, tolerance: float) -> float:
    """The share of adapter elements that differ by more than `tolerance`."""
    beyond = sum(int(((a[k] - b[k]).abs() > tolerance).sum()) for k in a)
    return beyond / sum(b[k].numel() for k in b)


def _relative_diff(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over all adapter tensors together."""
    diff = sum(((a[k] - b[k]) ** 2).sum().item() for k in a) ** 0.5
    return diff / sum((b[k] ** 2).sum().item() for k in b) ** 0.5


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embedded_model_dir):
    """One uninterrupted single-process run: the adapter every other run must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    job = _job(root / "data", root / "out")
    metrics = json.loads(launch(job, root / "out" / CHECKPOINT_DIR).read_text())
    assert metrics["steps"] == 6 and metrics["resumed_at_step"] is None
    return root / "out", metrics


def test_killed_training_resumes_and_ends_with_the_same_adapter(tmp_path, reference):
    ref_out, ref_metrics = reference
    out = tmp_path / "out"
    job = _job(tmp_path / "data", out)
    state = out / CHECKPOINT_DIR
    killed_after = kill_at_checkpoint(job, 2, timeout_s=240)
    assert killed_after is not None, "the run finished before a mid-run checkpoint could be killed"
    assert not (out / ADAPTER_DIR).exists()

    metrics = json.loads(launch(job, state).read_text())
    assert metrics["resumed_at_step"] >= killed_after and metrics["steps"] == ref_metrics["steps"]
    assert _max_diff(_adapter(out), _adapter(ref_out)) < 1e-5
    log = pd.read_parquet(out / "train_log.parquet")
    assert log["step"].is_monotonic_increasing and not log.duplicated(["step", "split"]).any()


def test_accelerate_launch_with_two_cpu_processes_trains_the_same_adapter(tmp_path, reference):
    """Through the checked-in DDP config (configs/accelerate/ddp.yaml): 2 gloo processes on this CPU."""
    ref_out, ref_metrics = reference
    job = _job(tmp_path / "data", tmp_path / "out", num_processes=2, accelerate_config=str(ACCELERATE / "ddp.yaml"))
    metrics = json.loads(launch(job, tmp_path / "out" / CHECKPOINT_DIR).read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == ref_metrics["steps"]
    # same global batches, gradients all-reduced: the adapter matches the one-process run up to float sums.
    # Adam divides by the gradient's running RMS, so float-order noise on a near-zero gradient can flip an
    # element's direction; each Adam step moves an element by about lr, so one element may drift by up to
    # steps * lr (CI once saw 1.5 steps). What must hold: the adapter as a whole within 1%, and such
    # drifting elements rare.
    two, one = _adapter(tmp_path / "out"), _adapter(ref_out)
    lr, steps = job.train.learning_rate, metrics["steps"]
    assert _max_diff(two, one) < steps * lr
    assert _share_beyond(two, one, lr / 2) < 1e-2
    assert _relative_diff(two, one) < 1e-2
    assert metrics["final_loss"] == pytest.approx(ref_metrics["final_loss"], rel=1e-3)


def test_accelerate_parses_the_checked_in_ddp_and_fsdp_configs(tmp_path):
    """Both configs load and pass accelerate's own launch validation (FSDP is not run here: no GPUs)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from genpi_core.train.job import launch_command

    kinds = {}
    for name in ("ddp", "fsdp"):
        path = ACCELERATE / f"{name}.yaml"
        kinds[name] = load_config_from_file(str(path)).distributed_type.value
        job = _job(tmp_path / name, tmp_path / name / "out", num_processes=2, accelerate_config=str(path))
        command = launch_command(tmp_path / "job.json", job)
        assert command[1:5] == ["-m", "accelerate.commands.launch", "--config_file", str(path)]
        args = launch_command_parser().parse_args(command[3:])  # what `accelerate launch` itself receives
        validated, _, _ = _validate_launch_command(args)
        assert validated.num_processes == 2
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP"}
    assert load_config_from_file(str(ACCELERATE / "fsdp.yaml")).fsdp_config["fsdp_use_orig_params"] is True


def test_a_failing_training_process_reports_its_log(tmp_path, embedded_model_dir):
    job = _job(tmp_path / "data", tmp_path / "out", max_seq_len=16)
    with pytest.raises(
        RuntimeError, match=r"training process exited with code 1; full log: .*train.log(.|\n)*max_seq_len=16"
    ):
        launch(job, tmp_path / "out" / CHECKPOINT_DIR)

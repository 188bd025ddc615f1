"""Warm start from a parent's adapter: its weights seed the run and the schedule shrinks to a share of the
parent's steps; another LoRA shape (or base model) trains from zero with the full schedule, saying why."""

from __future__ import annotations

import math

import pandas as pd
import torch
from safetensors.torch import load_file

from genpi_core.store.tables import write_table
from genpi_core.train.recipe import run_finetune
from schemas.config import LoraConfig, ModelConfig, TrainConfig, WarmStartConfig
from schemas.datasets import ExamplesSchema
from tests.unit.genpi_core.train.test_recipe import _examples

SMALL = LoraConfig(rank=4, alpha=8)


def _adapter(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_a_warm_start_begins_from_the_parent_and_trains_a_share_of_its_steps(tmp_path, embedded_model_dir):
    write_table(_examples(8), ExamplesSchema, tmp_path / "train.parquet")
    write_table(_examples(2), ExamplesSchema, tmp_path / "val.parquet")
    data = (tmp_path / "train.parquet", tmp_path / "val.parquet")
    parent_cfg = TrainConfig(epochs=2, batch_size=2, prompt_generation=False, learning_rate=5e-3, lora=SMALL)
    parent = run_finetune(ModelConfig(), parent_cfg, *data, [], tmp_path / "parent")
    assert parent["steps"] == 8 and parent["warm_start"] == {"used": False, "reason": "off"}

    # a learning rate too small to move anything: what the child ends with is what it started from
    child_cfg = parent_cfg.model_copy(
        update={
            "learning_rate": 1e-12,
            "warm_start": WarmStartConfig(from_adapter=str(tmp_path / "parent" / "adapter"), share=0.3),
        }
    )
    child = run_finetune(ModelConfig(), child_cfg, *data, [], tmp_path / "child")
    assert child["warm_start"]["used"] and child["steps"] == math.ceil(0.3 * 8) == 3
    ours, theirs = _adapter(tmp_path / "child"), _adapter(tmp_path / "parent")
    assert max((ours[k] - theirs[k]).abs().max().item() for k in theirs) < 1e-6
    assert max(t.abs().max().item() for k, t in theirs.items() if "lora_B" in k) > 0  # the parent did learn

    other_shape = child_cfg.model_copy(update={"lora": LoraConfig(rank=8, alpha=16)})
    fresh = run_finetune(ModelConfig(), other_shape, *data, [], tmp_path / "fresh")
    assert not fresh["warm_start"]["used"] and "LoRA shape" in fresh["warm_start"]["reason"]
    assert fresh["steps"] == 8  # the full schedule
    # from zero: lora_B starts at 0, and a 1e-12 learning rate leaves it there
    assert all(t.abs().max().item() < 1e-9 for k, t in _adapter(tmp_path / "fresh").items() if "lora_B" in k)
    log = pd.read_parquet(tmp_path / "child" / "train_log.parquet")
    assert list(log[log["split"] == "train"]["step"]) == [1, 2, 3]

"""Training mechanics on the real embedded model: loss masking, what moves, and the adapter it saves."""

import json

import pandas as pd
import pytest
import torch

from genpi_core.finetune import IGNORE, _collate, attach_lora, encode_example, run_finetune, train_loop
from genpi_core.models import load_model
from genpi_core.tables import write_table
from schemas.config import LoraConfig, ModelConfig, TrainConfig
from schemas.datasets import ExamplesSchema

MESSAGES = [{"role": "user", "content": "When do you open?"}]
TARGET = "Topic: hours\nAnswer: At 9 am."


def test_only_target_and_end_of_turn_carry_loss(tokenizer):
    ids, labels = encode_example(tokenizer, MESSAGES, TARGET)
    learned = [t for t, l in zip(ids, labels) if l != IGNORE]
    assert tokenizer.decode(learned) == TARGET + tokenizer.eos_token
    context = [t for t, l in zip(ids, labels) if l == IGNORE]
    assert tokenizer.decode(context).endswith("<|im_start|>assistant\n")  # exactly the generation prompt
    # the student's context is the no-prompt view: the template's default system line, nothing of ours
    assert "Harbor Lane" not in tokenizer.decode(context)


def test_padding_never_carries_loss_and_final_eos_keeps_its_label(tokenizer):
    a = encode_example(tokenizer, MESSAGES, TARGET)
    b = encode_example(tokenizer, MESSAGES, "Topic: other\nAnswer: Hello there, how can I help you today?")
    batch = _collate([a, b], tokenizer.pad_token_id)
    short = len(a[0])
    assert (batch["labels"][0, short:] == IGNORE).all() and (batch["attention_mask"][0, short:] == 0).all()
    # pad id == eos id on SmolLM2: the real end-of-turn label must survive anyway
    assert batch["labels"][0, short - 1].item() == tokenizer.eos_token_id


def test_lora_moves_only_adapter_weights(embedded_model_dir, tokenizer):
    model = attach_lora(load_model("embedded"), LoraConfig(rank=4, alpha=8))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = [encode_example(tokenizer, MESSAGES, TARGET)] * 2
    log = train_loop(model, rows, [], TrainConfig(epochs=2, batch_size=2, learning_rate=1e-2), tokenizer.pad_token_id)
    assert len(log) == 2 and log[1]["loss"] < log[0]["loss"]
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        if "lora_B" in name:
            assert moved, name  # lora_B starts at zero; training must move it
        elif "lora_" not in name:
            assert not moved, name


def _examples(n: int, target: str) -> pd.DataFrame:
    return pd.DataFrame({"example_id": [f"e{i}" for i in range(n)], "objective": "sft",
                         "messages": [json.dumps([{"role": "user", "content": f"question {i}"}]) for i in range(n)],
                         "target": target, "weight": 1.0})


def test_too_long_examples_fail_loudly(tmp_path, embedded_model_dir):
    write_table(_examples(2, "word " * 300), ExamplesSchema, tmp_path / "train.parquet")
    write_table(_examples(1, "ok"), ExamplesSchema, tmp_path / "val.parquet")
    with pytest.raises(ValueError, match=r"train.parquet: 2 example\(s\) exceed train.max_seq_len=64.*never cut silently"):
        run_finetune(ModelConfig(), TrainConfig(max_seq_len=64), tmp_path / "train.parquet", tmp_path / "val.parquet", tmp_path / "out")


def test_run_finetune_saves_a_loadable_adapter_and_loss_log(tmp_path, embedded_model_dir):
    from peft import PeftModel

    write_table(_examples(4, TARGET), ExamplesSchema, tmp_path / "train.parquet")
    write_table(_examples(2, TARGET), ExamplesSchema, tmp_path / "val.parquet")
    metrics = run_finetune(ModelConfig(), TrainConfig(epochs=1, batch_size=2, lora=LoraConfig(rank=4, alpha=8)),
                           tmp_path / "train.parquet", tmp_path / "val.parquet", tmp_path)
    assert metrics["steps"] == 2 and metrics["final_val_loss"] is not None
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    model = PeftModel.from_pretrained(load_model("embedded"), str(tmp_path / "adapter"))
    assert any("lora_A" in n for n, _ in model.named_parameters())

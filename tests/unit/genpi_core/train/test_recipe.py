"""Training mechanics on the real embedded model: what carries loss for each objective, the joint
loss, what moves, the prepended-prompt baseline, distillation, and the adapter it saves."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from genpi_core.generation.chat_template import text_token_ids
from genpi_core.generation.models import load_model
from genpi_core.prompt.pg_format import REASON_HEADER, pg_question, with_reason
from genpi_core.store.tables import write_table
from genpi_core.train.data import (
    IGNORE,
    Item,
    build_items,
    collate,
    encode_example,
    micro_batches,
    with_prompt_in_context,
)
from genpi_core.train.loss import loss_sums
from genpi_core.train.recipe import attach_lora, run_finetune
from genpi_core.train.teacher_logprobs import run_teacher_logprobs
from genpi_core.train.trainer import StepPlan, Trainer, pg_examples_per_step
from schemas.config import LoraConfig, ModelConfig, TrainConfig
from schemas.datasets import ExamplesSchema

MESSAGES = [{"role": "user", "content": "When do you open?"}]
TARGET = "Topic: hours\nAnswer: At 9 am."
PROMPT = [
    {"role": "user", "content": "You are the Harbor Lane help desk. Reply as 'Topic: x' then 'Answer: y'."},
    {"role": "assistant", "content": "Topic: ready\nAnswer: Understood."},
]
PROMPT_TEXT = "[user]\nYou are the Harbor Lane help desk.\n\n[assistant]\nTopic: ready"
SMALL = LoraConfig(rank=4, alpha=8)


def _learned(tokenizer, ids, labels) -> str:
    return tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE])


def test_only_target_and_end_of_turn_carry_loss(tokenizer):
    ids, labels = encode_example(tokenizer, MESSAGES, TARGET)
    assert _learned(tokenizer, ids, labels) == TARGET + tokenizer.eos_token
    context = [t for t, label in zip(ids, labels) if label == IGNORE]
    assert tokenizer.decode(context).endswith("<|im_start|>assistant\n")  # exactly the generation prompt
    # the student's context is the no-prompt view: the template's default system line, nothing of ours
    assert "Harbor Lane" not in tokenizer.decode(context)


def _examples(n: int, target: str = TARGET, pg: int = 0, reason: str = "") -> pd.DataFrame:
    sft = [
        {
            "example_id": f"c{i}:0",
            "conversation_id": f"c{i}",
            "objective": "sft",
            "messages": json.dumps([{"role": "user", "content": f"question {i}"}]),
            "target": target,
            "reason": "",
            "weight": 1.0,
        }
        for i in range(n)
    ]
    gen = [
        {
            "example_id": f"c{i}:pg",
            "conversation_id": f"c{i}",
            "objective": "pg",
            "messages": json.dumps(pg_question(f"question {i}", "Hi.", TARGET)),
            "target": PROMPT_TEXT,
            "reason": reason,
            "weight": 1.0,
        }
        for i in range(pg)
    ]
    return pd.DataFrame(sft + gen)


def test_pg_examples_learn_the_prompt_then_the_reason_and_nothing_of_the_question(tokenizer):
    df = _examples(1, pg=1, reason="The prompt asks for a topic line.")
    items = build_items(tokenizer, df, TrainConfig(), [], "train.parquet")
    pg = items["pg"][0]
    assert _learned(tokenizer, pg.ids, pg.labels) == (
        f"{PROMPT_TEXT}\n\n{REASON_HEADER}\nThe prompt asks for a topic line." + tokenizer.eos_token
    )
    assert "question 0" not in _learned(tokenizer, pg.ids, pg.labels)
    no_reason = build_items(tokenizer, df, TrainConfig(pg_reasons=False), [], "x")["pg"][0]
    assert _learned(tokenizer, no_reason.ids, no_reason.labels) == PROMPT_TEXT + tokenizer.eos_token
    assert with_reason("p", "  ") == "p"
    sft_only = build_items(tokenizer, df, TrainConfig(prompt_generation=False), [], "x")
    assert len(sft_only["sft"]) == 1 and sft_only["pg"] == []


def test_prompt_in_context_baseline_is_stable_and_masked(tokenizer):
    chosen = [with_prompt_in_context(f"c{i}:0", 0.5, 0) for i in range(400)]
    assert 0.4 < sum(chosen) / 400 < 0.6 and chosen == [with_prompt_in_context(f"c{i}:0", 0.5, 0) for i in range(400)]
    items = build_items(tokenizer, _examples(3), TrainConfig(prompt_in_context=1.0), PROMPT, "x")["sft"]
    for item in items:
        assert "Harbor Lane" in tokenizer.decode(item.ids)  # the prompt is in context...
        assert _learned(tokenizer, item.ids, item.labels) == TARGET + tokenizer.eos_token  # ...and carries no loss


def test_padding_never_carries_loss_and_final_eos_keeps_its_label(tokenizer):
    a = Item("a", *encode_example(tokenizer, MESSAGES, TARGET))
    b = Item("b", *encode_example(tokenizer, MESSAGES, "Topic: other\nAnswer: Hello there, how can I help you today?"))
    batch = collate([a, b], tokenizer.pad_token_id)
    short = len(a.ids)
    assert (batch["labels"][0, short:] == IGNORE).all() and (batch["attention_mask"][0, short:] == 0).all()
    # pad id == eos id on SmolLM2: the real end-of-turn label must survive anyway
    assert batch["labels"][0, short - 1].item() == tokenizer.eos_token_id


def test_micro_batches_respect_the_token_budget_and_keep_every_item():
    items = [Item(str(i), [1] * n, [1] * n) for i, n in enumerate([10, 300, 40, 900, 20])]
    batches = micro_batches(items, 400)
    assert sorted(it.example_id for b in batches for it in b) == sorted(it.example_id for it in items)
    assert all(len(b) == 1 or max(len(it.ids) for it in b) * len(b) <= 400 for b in batches)


def test_step_plan_is_deterministic_and_covers_each_epoch():
    items = {"sft": [Item(f"s{i}", [1], [1]) for i in range(10)], "pg": [Item(f"p{i}", [1], [1]) for i in range(3)]}
    plan = StepPlan(items, TrainConfig(batch_size=4, epochs=2, pg_per_step=1))
    assert plan.steps_per_epoch == 3 and plan.total == 6
    epoch = [it.example_id for s in range(3) for it in plan.step(s)["sft"]]
    assert sorted(epoch) == sorted(f"s{i}" for i in range(10))
    assert [it.example_id for it in plan.step(4)["pg"]] == [
        it.example_id for it in StepPlan(items, plan.cfg).step(4)["pg"]
    ]
    assert sorted(it.example_id for s in range(3) for it in plan.step(s)["pg"]) == ["p0", "p1", "p2"]
    sparse = StepPlan(items, TrainConfig(batch_size=4, epochs=2, pg_per_step=1, pg_every=2))
    assert [len(sparse.step(s)["pg"]) for s in range(6)] == [1, 0, 1, 0, 1, 0]
    assert sorted(it.example_id for s in (0, 2, 4) for it in sparse.step(s)["pg"]) == ["p0", "p1", "p2"]


def test_default_pg_dose_is_one_pg_example_per_pseudo_input_per_epoch():
    """Two agent turns per conversation: 2 SFT rows and 1 PG row per input; a step of 4 SFT rows takes 2 PG."""
    items = {"sft": [Item(f"s{i}", [1], [1]) for i in range(86)], "pg": [Item(f"p{i}", [1], [1]) for i in range(43)]}
    plan = StepPlan(items, TrainConfig(batch_size=4, epochs=2))
    assert plan.pg_per_step == 2 == pg_examples_per_step(plan.cfg, 86, 43) and plan.steps_per_epoch == 22
    seen = [it.example_id for s in range(plan.steps_per_epoch) for it in plan.step(s)["pg"]]
    assert set(seen) == {f"p{i}" for i in range(43)} and len(seen) == 44  # every input once, one drawn twice
    one_turn = {"sft": items["sft"][:43], "pg": items["pg"]}
    assert StepPlan(one_turn, TrainConfig(batch_size=4)).pg_per_step == 4  # one agent turn: as many as SFT
    assert StepPlan(items, TrainConfig(batch_size=4, pg_per_step=3)).pg_per_step == 3  # explicit wins


def test_joint_loss_is_the_weighted_sum_and_only_lora_moves(embedded_model_dir, tokenizer, tmp_path):
    from accelerate import Accelerator

    cfg = TrainConfig(epochs=2, batch_size=2, pg_per_step=1, learning_rate=1e-2, lora=SMALL)
    items = build_items(tokenizer, _examples(2, pg=2), cfg, [], "x")
    model = attach_lora(load_model("embedded"), SMALL)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = Trainer(model, Accelerator(cpu=True), items, {"sft": [], "pg": []}, cfg, tokenizer.pad_token_id, tmp_path)
    trainer.fit()
    train = [row for row in trainer.log if row["split"] == "train"]
    assert len(train) == 2
    for row in train:
        assert row["loss"] == pytest.approx(0.7 * row["sft_loss"] + 0.3 * row["pg_loss"], rel=1e-6)
    assert train[1]["sft_loss"] < train[0]["sft_loss"]
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        if "lora_B" in name:
            assert moved, name  # lora_B starts at zero; training must move it
        elif "lora_" not in name:
            assert not moved, name


def test_distillation_term_reads_the_teacher_logprobs_stage(tmp_path, embedded_model_dir, tokenizer):
    write_table(_examples(2), ExamplesSchema, tmp_path / "train.parquet")
    write_table(_examples(1), ExamplesSchema, tmp_path / "val.parquet")
    stage = run_teacher_logprobs(ModelConfig(), tmp_path / "train.parquet", PROMPT, 8, tmp_path / "logprobs")
    table = pd.read_parquet(tmp_path / "logprobs" / "teacher_logprobs.parquet")
    targets = len(text_token_ids(tokenizer, TARGET)) + 1  # the target's tokens and its end-of-turn
    assert stage == {"examples": 2, "rows": 2 * targets * 8, "top_k": 8}  # every target token (and EOS), k ranks
    sums = table.assign(p=np.exp(table["logprob"])).groupby(["example_id", "position"])["p"].sum()
    assert np.allclose(sums, 1.0, atol=1e-5)  # renormalised top-k
    path = tmp_path / "logprobs" / "teacher_logprobs.parquet"
    cfg = TrainConfig(epochs=1, batch_size=2, prompt_generation=False, distill_weight=0.5, distill_top_k=8, lora=SMALL)
    with pytest.raises(
        ValueError, match=r"teacher_logprobs\.parquet: example 'c0:0' has .* x 8 ranks, training expects .* x 4"
    ):
        run_finetune(
            ModelConfig(),
            cfg.model_copy(update={"distill_top_k": 4}),
            tmp_path / "train.parquet",
            tmp_path / "val.parquet",
            PROMPT,
            tmp_path / "bad",
            teacher_logprobs_path=path,
        )
    metrics = run_finetune(
        ModelConfig(),
        cfg,
        tmp_path / "train.parquet",
        tmp_path / "val.parquet",
        PROMPT,
        tmp_path / "out",
        teacher_logprobs_path=path,
    )
    log = pd.read_parquet(tmp_path / "out" / "train_log.parquet")
    row = log[log["split"] == "train"].iloc[0]
    assert row["distill_loss"] > 0  # KL over the teacher's renormalised top-k is positive for an untrained student
    assert row["loss"] == pytest.approx(row["sft_loss"] + 0.5 * row["distill_loss"], rel=1e-6)
    assert metrics["objective"]["distill_weight"] == 0.5


def test_too_long_examples_fail_loudly(tmp_path, embedded_model_dir):
    write_table(_examples(2, "word " * 300), ExamplesSchema, tmp_path / "train.parquet")
    write_table(_examples(1, "ok"), ExamplesSchema, tmp_path / "val.parquet")
    with pytest.raises(
        ValueError, match=r"train.parquet: 2 example\(s\) exceed train.max_seq_len=64.*never cut silently"
    ):
        run_finetune(
            ModelConfig(),
            TrainConfig(max_seq_len=64),
            tmp_path / "train.parquet",
            tmp_path / "val.parquet",
            [],
            tmp_path / "out",
        )


def test_run_finetune_saves_a_loadable_adapter_merged_model_and_loss_log(tmp_path, embedded_model_dir, tokenizer):
    from peft import PeftModel

    write_table(_examples(4, pg=2), ExamplesSchema, tmp_path / "train.parquet")
    write_table(_examples(2, pg=1), ExamplesSchema, tmp_path / "val.parquet")
    cfg = TrainConfig(epochs=1, batch_size=2, lora=SMALL, merge=True)
    metrics = run_finetune(ModelConfig(), cfg, tmp_path / "train.parquet", tmp_path / "val.parquet", [], tmp_path)
    assert metrics["steps"] == 2 and metrics["final_val_loss"] is not None
    assert metrics["train_examples"] == {"sft": 4, "pg": 2, "on_policy_contexts": 0, "pg_with_reason": 0}
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    model = PeftModel.from_pretrained(load_model("embedded"), str(tmp_path / "adapter"))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    merged = load_model(str(tmp_path / "merged"))
    ids = torch.tensor([encode_example(tokenizer, MESSAGES, TARGET)[0]])
    with torch.no_grad():  # the merged model computes what base + adapter computes
        assert torch.allclose(model(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-3)


def test_early_stopping_stops_and_keeps_the_best_adapter(tmp_path, embedded_model_dir, tokenizer):
    """Validation asks for the opposite answer to the one trained on, so its loss rises after the first
    epoch: patience 1 must stop on the second validation and restore the adapter of the first."""
    from peft import PeftModel

    write_table(_examples(4, "Answer: yes."), ExamplesSchema, tmp_path / "train.parquet")
    write_table(_examples(2, "Answer: no."), ExamplesSchema, tmp_path / "val.parquet")
    cfg = TrainConfig(
        epochs=5, batch_size=2, prompt_generation=False, learning_rate=5e-3, lora=SMALL, early_stopping_patience=1
    )
    metrics = run_finetune(
        ModelConfig(), cfg, tmp_path / "train.parquet", tmp_path / "val.parquet", [], tmp_path / "out"
    )
    log = pd.read_parquet(tmp_path / "out" / "train_log.parquet")
    val = log[log["split"] == "val"]
    assert metrics["stopped_early"] and metrics["planned_steps"] == 10
    assert metrics["steps"] == 4 and list(val["step"]) == [2, 4]  # stopped at the second validation
    assert val["sft_loss"].iloc[1] > val["sft_loss"].iloc[0]
    # the saved adapter is the best one (epoch 1): its validation loss is the first logged one
    model = PeftModel.from_pretrained(load_model("embedded"), str(tmp_path / "out" / "adapter"))
    items = build_items(tokenizer, pd.read_parquet(tmp_path / "val.parquet"), cfg, [], "val")["sft"]
    batch = collate(items, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE
    )
    assert loss.item() == pytest.approx(val["sft_loss"].iloc[0], rel=1e-3)


def test_qlora_says_what_is_missing_before_loading_anything(tmp_path):
    """QLoRA needs a CUDA GPU and bitsandbytes; this CPU machine has neither, so the real call must refuse
    early and name both. The reason text for the other combinations is checked as plain control logic."""
    from genpi_core.train.qlora import bitsandbytes_arguments, qlora_unavailable_reason

    cfg = TrainConfig(lora=LoraConfig(quantize_base="nf4"))
    with pytest.raises(RuntimeError, match=r"quantize_base='nf4' \(QLoRA\) needs a CUDA GPU.*genpi\[qlora\]"):
        run_finetune(
            ModelConfig(), cfg, tmp_path / "missing.parquet", tmp_path / "missing.parquet", [], tmp_path / "out"
        )
    assert not (tmp_path / "out").exists()
    assert qlora_unavailable_reason("nf4", True, True) is None
    only_package = qlora_unavailable_reason("int8", True, False)
    assert "bitsandbytes" in only_package and "CUDA" not in only_package
    args = bitsandbytes_arguments("nf4", "bfloat16")
    assert (
        args["load_in_4bit"]
        and args["bnb_4bit_quant_type"] == "nf4"
        and args["bnb_4bit_compute_dtype"] is torch.bfloat16
    )
    assert bitsandbytes_arguments("int8", "bfloat16") == {"load_in_8bit": True}


def test_chunked_target_loss_matches_full_logits_in_value_and_gradient(tokenizer, embedded_model_dir):
    """The memory-saving path (hidden states, target rows only, small chunks, recomputed in backward)
    must give the loss and LoRA gradients of the plain full-logits computation."""
    model = attach_lora(load_model("embedded"), SMALL).train()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)  # non-zero, so lora_A gets a gradient too
    items = [
        Item("a", *encode_example(tokenizer, MESSAGES, TARGET)),
        Item("b", *encode_example(tokenizer, MESSAGES, "Topic: other\nAnswer: Hello there, how can I help you?")),
    ]
    generator = torch.Generator().manual_seed(0)
    for item in items:
        n = sum(1 for label in item.labels[1:] if label != IGNORE)
        item.teacher_ids = torch.randint(0, 49152, (n, 4), generator=generator)
        item.teacher_logprobs = torch.log_softmax(torch.randn(n, 4, generator=generator), dim=-1)

    def lora_grads(ce, kl):
        model.zero_grad()
        (ce + kl).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ce, kl = loss_sums(model, items, tokenizer.pad_token_id, "cpu", distill=True, chunk_tokens=5)
    chunked = lora_grads(ce, kl)
    assert isinstance(model.get_base_model().get_output_embeddings(), torch.nn.Linear)  # the head is restored
    batch = collate(items, tokenizer.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    ref_ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    student = torch.log_softmax(logits[labels != IGNORE], dim=-1)
    ids, logprobs = torch.cat([it.teacher_ids for it in items]), torch.cat([it.teacher_logprobs for it in items])
    ref_kl = (logprobs.exp() * (logprobs - student.gather(-1, ids))).sum()
    assert ce.item() == pytest.approx(ref_ce.item(), rel=1e-5) and kl.item() == pytest.approx(ref_kl.item(), rel=1e-5)
    for name, grad in lora_grads(ref_ce, ref_kl).items():
        relative_error = ((chunked[name] - grad).norm() / grad.norm()).item()
        assert relative_error < 1e-3, (name, relative_error)  # float32 sums in another order

"""On-policy prompt distillation: the divergence and its gradient, prefix-shared teacher scoring against
plain scoring on the real embedded model, the step plan of each schedule, a run through run_finetune,
and a run killed in the middle of its on-policy phase that resumes to the same adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from genpi_core.generation.models import load_model
from genpi_core.generation.prefix_attention import ATTN_NAME
from genpi_core.ingest import run_ingest
from genpi_core.prompt.views import prompt_messages
from genpi_core.store.tables import write_table
from genpi_core.train.data import Item
from genpi_core.train.job import TrainJob, launch
from genpi_core.train.on_policy import (
    OnPolicy,
    Sample,
    build_contexts,
    divergence,
    divergence_sum,
    register_prefix_attention,
    union_bins,
    with_tail,
)
from genpi_core.train.recipe import attach_lora
from genpi_core.train.trainer import StepPlan
from schemas.artifacts import ADAPTER_DIR, CHECKPOINT_DIR
from schemas.config import IngestConfig, LoraConfig, ModelConfig, OnPolicyConfig, TrainConfig
from schemas.datasets import ExamplesSchema
from tests.unit.genpi_core.train.kill_training import kill_at_checkpoint

SMALL = LoraConfig(rank=4, alpha=8)
QUESTIONS = ["When do you open?", "Can I print here?", "How long can I keep a book?", "Do you have rooms?"]


# --- the divergence, on toy distributions -----------------------------------------------------------------


def test_reverse_kl_is_zero_with_zero_gradient_when_the_distributions_are_equal():
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(0))
    student = logits.clone().requires_grad_(True)
    loss = divergence(torch.log_softmax(student, -1), torch.log_softmax(logits, -1), beta=1.0).sum()
    loss.backward()
    assert abs(loss.item()) < 1e-6 and student.grad.abs().max().item() < 1e-6


def test_reverse_kl_moves_the_student_toward_the_teacher():
    generator = torch.Generator().manual_seed(1)
    teacher = torch.log_softmax(torch.randn(3, 7, generator=generator) * 3, -1)
    student = torch.randn(3, 7, generator=generator).requires_grad_(True)
    optimizer = torch.optim.SGD([student], lr=0.5)
    losses = []
    for _ in range(200):
        loss = divergence(torch.log_softmax(student, -1), teacher, beta=1.0).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.01 * losses[0]
    # reverse KL seeks the teacher's mode: the student puts its mass where the teacher does
    assert torch.equal(student.argmax(-1), teacher.argmax(-1))


def test_beta_selects_forward_kl_reverse_kl_or_the_generalized_jsd():
    generator = torch.Generator().manual_seed(2)
    s, t = (torch.log_softmax(torch.randn(4, 9, generator=generator), -1) for _ in range(2))
    forward = (t.exp() * (t - s)).sum(-1)
    reverse = (s.exp() * (s - t)).sum(-1)
    assert torch.allclose(divergence(s, t, 0.0), forward) and torch.allclose(divergence(s, t, 1.0), reverse)
    jsd = divergence(s, t, 0.5)
    assert torch.allclose(jsd, divergence(t, s, 0.5), atol=1e-6)  # symmetric at beta = 0.5
    assert (jsd >= 0).all() and (jsd <= math.log(2) + 1e-6).all()


def test_top_k_bins_keep_each_token_once_and_the_rest_in_a_tail_bucket():
    generator = torch.Generator().manual_seed(3)
    s, t = (torch.log_softmax(torch.randn(6, 10, generator=generator), -1) for _ in range(2))
    bins, keep = union_bins(t.topk(4, -1).indices, s.topk(4, -1).indices)
    assert bins.shape == (6, 8) and (keep.sum(-1) <= 8).all() and (keep.sum(-1) >= 4).all()
    for row in range(6):
        assert sorted(set(bins[row].tolist())) == bins[row][keep[row]].tolist()  # repeats dropped
    binned_s, binned_t = with_tail(s.gather(-1, bins), keep), with_tail(t.gather(-1, bins), keep)
    assert torch.allclose(binned_s.exp().sum(-1), torch.ones(6), atol=1e-6)
    # with k = the whole vocabulary, the binned divergence is the full one
    full_bins, full_keep = union_bins(t.topk(10, -1).indices, s.topk(10, -1).indices)
    whole = divergence(with_tail(s.gather(-1, full_bins), full_keep), with_tail(t.gather(-1, full_bins), full_keep), 1)
    assert torch.allclose(whole, divergence(s, t, 1.0), atol=1e-5)
    assert (divergence(binned_s, binned_t, 1.0) >= -1e-6).all()


def test_step_plan_mixes_on_policy_contexts_or_gives_them_a_phase_of_their_own():
    sft = [Item(f"s{i}", [1], [1]) for i in range(4)]
    contexts = [f"c{i}" for i in range(3)]
    mixed = StepPlan(
        {"sft": sft, "pg": [], "on_policy": contexts},
        TrainConfig(
            batch_size=2, epochs=1, prompt_generation=False, on_policy=OnPolicyConfig(enabled=True, contexts_per_step=2)
        ),
    )
    assert mixed.total == 2 and all(len(mixed.step(s)["on_policy"]) == 2 and mixed.step(s)["sft"] for s in range(2))
    after = StepPlan(
        {"sft": sft, "pg": [], "on_policy": contexts},
        TrainConfig(
            batch_size=2,
            epochs=1,
            prompt_generation=False,
            on_policy=OnPolicyConfig(enabled=True, schedule="after", contexts_per_step=2, epochs=2),
        ),
    )
    assert after.joint_total == 2 and after.total == 2 + 2 * 2
    assert not after.step(1)["on_policy"] and after.step(2)["on_policy"] and not after.step(2)["sft"]
    drawn = [c for s in range(2, 4) for c in after.step(s)["on_policy"]]
    assert set(contexts) <= set(drawn)  # a pass covers every context
    budget = StepPlan(
        {"sft": sft, "pg": [], "on_policy": contexts},
        TrainConfig(
            batch_size=2,
            epochs=1,
            max_steps=5,
            prompt_generation=False,
            on_policy=OnPolicyConfig(enabled=True, schedule="after", contexts_per_step=2),
        ),
    )
    assert (budget.joint_total, budget.on_policy_total, budget.total) == (2, 3, 5)
    longer = StepPlan({"sft": sft, "pg": [], "on_policy": contexts}, mixed.cfg.model_copy(update={"max_steps": 5}))
    assert longer.total == 5 and all(longer.step(s)["sft"] and longer.step(s)["on_policy"] for s in range(5))
    alone = StepPlan(
        {"sft": [], "pg": [], "on_policy": contexts},
        TrainConfig(sft=False, prompt_generation=False, on_policy=OnPolicyConfig(enabled=True, contexts_per_step=2)),
    )
    assert alone.total == 2 and alone.steps_per_epoch == 2
    with pytest.raises(ValueError, match="on_policy.enabled"):
        TrainConfig(sft=False, prompt_generation=False)


# --- on the real embedded model ---------------------------------------------------------------------------


def _examples(n: int) -> pd.DataFrame:
    rows = []
    for i in range(n):
        question = QUESTIONS[i % len(QUESTIONS)]
        messages = [{"role": "user", "content": question}]
        if i % 2:  # a role-swapped multi-turn context: the environment's turn is reused from synthesis
            messages += [
                {"role": "assistant", "content": "Topic: desk\nAnswer: Ask me anything."},
                {"role": "user", "content": f"Thanks. {question}"},
            ]
        rows.append(
            {
                "example_id": f"c{i}:0",
                "conversation_id": f"c{i}",
                "objective": "sft",
                "messages": json.dumps(messages),
                "target": "Topic: desk\nAnswer: At 9 am.",
                "reason": "",
                "weight": 1.0,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, embedded_model_dir):
    from tests.conftest import EXAMPLE_SPEC

    return run_ingest(EXAMPLE_SPEC, ModelConfig(), IngestConfig(), tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def student(embedded_model_dir):
    model = attach_lora(load_model("embedded", attn_implementation=register_prefix_attention()), SMALL)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(0))  # a student that differs
    return model


def test_prefix_shared_teacher_scoring_matches_plain_scoring(student, tokenizer, ingested):
    prompt = prompt_messages(ingested.spec.prompt)
    contexts = build_contexts(tokenizer, _examples(4), prompt, 16, 4096, "train.parquet")
    on_policy = OnPolicy(student, tokenizer, contexts, OnPolicyConfig(enabled=True, max_new_tokens=12), "cpu")
    assert on_policy.prefix_len > 500  # the prompt is shared, and long
    samples = on_policy.prepare(contexts, seed=0)
    assert all(s.reply_len >= 1 for s in samples)
    assert student.config._attn_implementation == ATTN_NAME
    with torch.no_grad(), student.disable_adapter():
        for context, sample in zip(contexts, samples):
            reply = sample.ids[sample.reply_start :]
            ids = torch.tensor([context.teacher_ids + reply])
            logits = student(input_ids=ids).logits[0, -len(reply) - 1 : -1].float()
            plain = torch.log_softmax(logits, -1)
            assert (plain - sample.teacher).abs().max().item() < 1e-4
            # the teacher scored the student's own tokens, not its own
            assert tokenizer.decode(reply).strip() or reply[-1] in on_policy.eos_ids


def test_the_summed_divergence_matches_full_logits_and_its_sign_moves_the_student(student, tokenizer, ingested):
    prompt = prompt_messages(ingested.spec.prompt)
    contexts = build_contexts(tokenizer, _examples(2), prompt, 8, 4096, "x")
    cfg = OnPolicyConfig(enabled=True, max_new_tokens=8, top_k=16)
    samples = OnPolicy(student, tokenizer, contexts, cfg, "cpu").prepare(contexts, seed=1)
    binned = divergence_sum(student, samples, tokenizer.pad_token_id, "cpu", beta=1.0, chunk_tokens=3)
    assert binned.item() > 0 and binned.requires_grad
    full_samples = OnPolicy(student, tokenizer, contexts, OnPolicyConfig(enabled=True, max_new_tokens=8), "cpu")
    unbinned = [
        Sample(s.example_id, s.ids, s.reply_start, t)
        for s, t in zip(
            samples,
            full_samples.score(
                [c.teacher_ids + s.ids[s.reply_start :] for c, s in zip(contexts, samples)],
                [s.reply_len for s in samples],
            ),
        )
    ]
    full = divergence_sum(student, unbinned, tokenizer.pad_token_id, "cpu", beta=1.0)
    reference = 0.0
    for s in unbinned:
        logits = student(input_ids=torch.tensor([s.ids])).logits[0, s.reply_start - 1 : -1].float()
        reference += divergence(torch.log_softmax(logits, -1), s.teacher, 1.0).sum()
    assert full.item() == pytest.approx(reference.item(), rel=1e-4)
    assert binned.item() <= full.item() * 1.0001  # merging tokens into one bucket never increases a KL


def _write(folder: Path, n: int) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    write_table(_examples(n), ExamplesSchema, folder / "train.parquet")
    write_table(_examples(2), ExamplesSchema, folder / "val.parquet")
    return folder / "train.parquet", folder / "val.parquet"


def _job(root: Path, ingested, train: dict | None = None, **on_policy) -> TrainJob:
    train_path, val_path = _write(root / "data", 4)
    cfg = TrainConfig(
        epochs=1,
        batch_size=2,
        prompt_generation=False,
        learning_rate=5e-3,
        checkpoint_every=1,
        lora=SMALL,
        on_policy=OnPolicyConfig(enabled=True, contexts_per_step=2, max_new_tokens=8, **on_policy),
        **(train or {}),
    )
    return TrainJob(
        model=ModelConfig(device="cpu"),
        train=cfg,
        train_path=str(train_path),
        val_path=str(val_path),
        prompt_path=str(ingested.prompt_path),
        out_dir=str(root / "out"),
    )


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / ADAPTER_DIR / "adapter_model.safetensors"))


def test_mixed_on_policy_training_logs_its_term_and_moves_the_adapter(tmp_path, ingested):
    """Also: a step budget past one epoch (max_steps) and snapshots of the adapter along the way."""
    job = _job(tmp_path, ingested, train={"max_steps": 3, "snapshots": 2}, weight=0.5)
    metrics = json.loads(launch(job, tmp_path / "out" / CHECKPOINT_DIR).read_text())
    assert metrics["steps"] == 3 and metrics["on_policy_steps"] == 3 and metrics["planned_steps"] == 3
    assert metrics["snapshots"] == ["step-000002", "step-000003"] and metrics["elapsed_seconds"] > 0
    snapshot = tmp_path / "out" / CHECKPOINT_DIR / "snapshots" / "step-000002"
    assert (snapshot / "adapter_model.safetensors").is_file()
    assert json.loads((snapshot / "snapshot.json").read_text())["step"] == 2
    assert metrics["train_examples"]["on_policy_contexts"] == 4 and metrics["objective"]["on_policy"]["weight"] == 0.5
    log = pd.read_parquet(tmp_path / "out" / "train_log.parquet")
    train = log[log["split"] == "train"]
    assert (train["on_policy_loss"] > 0).all() and train["elapsed_s"].is_monotonic_increasing
    for row in train.itertuples():
        assert row.loss == pytest.approx(row.sft_loss + 0.5 * row.on_policy_loss, rel=1e-6)
    assert any(t.abs().max().item() > 0 for k, t in _adapter(tmp_path / "out").items() if "lora_B" in k)


@pytest.mark.slow  # over 50 s in the default run (docs/testing.md, session 6 timings)
def test_a_run_killed_in_its_on_policy_phase_resumes_to_the_same_adapter(tmp_path, ingested):
    """Joint phase (2 steps), then the on-policy phase (2 steps); SIGKILL once step 3 is checkpointed."""
    reference = _job(tmp_path / "reference", ingested, schedule="after", epochs=1)
    ref_metrics = json.loads(launch(reference, tmp_path / "reference" / "out" / CHECKPOINT_DIR).read_text())
    assert ref_metrics["steps"] == 4 and ref_metrics["on_policy_steps"] == 2

    job = _job(tmp_path / "killed", ingested, schedule="after", epochs=1)
    state = Path(job.out_dir) / CHECKPOINT_DIR
    killed_after = kill_at_checkpoint(job, 3)
    assert killed_after == 3, "the run was not killed inside its on-policy phase"
    metrics = json.loads(launch(job, state).read_text())
    assert metrics["resumed_at_step"] == 3 and metrics["steps"] == 4
    ours, theirs = _adapter(Path(job.out_dir)), _adapter(tmp_path / "reference" / "out")
    assert max((ours[k] - theirs[k]).abs().max().item() for k in theirs) < 1e-5


def test_on_policy_runs_under_accelerate_launch_with_two_cpu_processes(tmp_path, ingested):
    """Each rank samples and scores its share of the step's contexts; the gradient sync is the usual DDP one."""
    job = _job(tmp_path, ingested, train={"num_processes": 2})
    metrics = json.loads(launch(job, tmp_path / "out" / CHECKPOINT_DIR).read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 2 and metrics["on_policy_steps"] == 2
    log = pd.read_parquet(tmp_path / "out" / "train_log.parquet")
    assert (log[log["split"] == "train"]["on_policy_loss"] > 0).all()

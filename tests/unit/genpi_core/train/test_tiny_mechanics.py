"""Training mechanics on the tiny random-init model (tests/assets/tiny-causal-lm): label masking at the
token level, the chunked loss against plain full-logits cross-entropy, which weights an optimizer step
moves, and merging. Fast (the model has 2 layers, hidden 64); what training teaches is tested on the
real embedded model in tests/unit/genpi_core/train/test_recipe.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from genpi_core.generation.chat_template import chat_token_ids, text_token_ids
from genpi_core.generation.models import load_model, load_tokenizer
from genpi_core.train.data import IGNORE, Item, collate, encode_example
from genpi_core.train.loss import loss_sums
from genpi_core.train.recipe import attach_lora
from schemas.config import LoraConfig

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA = LoraConfig(rank=4, alpha=8, target_modules=LLAMA_LINEAR)
CONVERSATION = [
    {"role": "user", "content": "When do you open?"},
    {"role": "assistant", "content": "Topic: hours\nAnswer: At 9 am."},
    {"role": "user", "content": "And on Sunday?"},
]
EXAMPLES = [
    ([{"role": "user", "content": "When do you open?"}], "Topic: hours\nAnswer: At 9 am."),
    (CONVERSATION, "Topic: hours\nAnswer: Closed on Sundays."),
    ([{"role": "user", "content": "Can I renew a book online?"}], "Topic: loans\nAnswer: Yes, up to twice."),
]


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_lm_dir):
    return load_tokenizer(str(tiny_lm_dir))


@pytest.fixture(scope="module")
def batch(tiny_tokenizer) -> list[Item]:
    """Three examples of different lengths, so the batch is padded."""
    return [
        Item(f"e{i}", *encode_example(tiny_tokenizer, messages, target))
        for i, (messages, target) in enumerate(EXAMPLES)
    ]


def _tiny_lora(tiny_lm_dir):
    torch.manual_seed(0)
    return attach_lora(load_model(str(tiny_lm_dir), "float32", "cpu"), LORA)


def _steps(model, batch, pad_id, n: int, lr: float = 1e-2) -> list[float]:
    """``n`` AdamW steps on the mean target-token loss from the project's loss_sums; returns the losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    tokens = sum(1 for item in batch for label in item.labels[1:] if label != IGNORE)
    losses = []
    for _ in range(n):
        ce, _ = loss_sums(model, batch, pad_id, "cpu")
        loss = ce / tokens
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _full_logits_ce(model, batch, pad_id) -> torch.Tensor:
    tensors = collate(batch, pad_id)
    logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits[:, :-1].float()
    labels = tensors["labels"][:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


def test_labels_mask_the_context_and_learn_target_plus_end_token(tiny_tokenizer):
    tok = tiny_tokenizer
    ids, labels = encode_example(tok, CONVERSATION, "Topic: hours\nAnswer: <|im_start|>closed.")
    context = chat_token_ids(tok, CONVERSATION)
    target = text_token_ids(tok, "Topic: hours\nAnswer: <|im_start|>closed.")
    assert len(ids) == len(labels) == len(context) + len(target) + 1
    assert ids == context + target + [tok.eos_token_id]
    # every context position, the earlier assistant turn included, carries no loss
    assert labels[: len(context)] == [IGNORE] * len(context)
    # the target and one closing end-of-turn token are learned, each label the token itself
    assert labels[len(context) :] == target + [tok.eos_token_id]
    assert tok.convert_tokens_to_ids("<|im_start|>") not in target  # a control string in a target stays text


def test_lora_steps_move_only_adapter_weights(tiny_lm_dir, tiny_tokenizer, batch):
    model = _tiny_lora(tiny_lm_dir)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable if "lora_A" in n} == set(LLAMA_LINEAR)  # every projection wrapped
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    head = model.get_base_model().lm_head

    losses = _steps(model, batch, tiny_tokenizer.pad_token_id, 3)

    assert losses[-1] < losses[0]
    for name, p in model.named_parameters():
        moved = not torch.equal(before[name], p.detach())
        if "lora_" in name:
            assert moved, f"{name} did not move"  # B from zero at step 1, A once B is non-zero
        else:
            assert not moved, f"{name} is not an adapter weight but moved"
    # loss_sums swaps the output layer out for its forward and puts the same (tied) one back
    base = model.get_base_model()
    assert base.lm_head is head and base.lm_head.weight is base.model.embed_tokens.weight


@pytest.mark.parametrize("chunk_tokens", [1, 3, 7, 1024])
def test_chunked_loss_equals_full_logits_cross_entropy(tiny_lm_dir, tiny_tokenizer, batch, chunk_tokens):
    model = _tiny_lora(tiny_lm_dir)
    pad = tiny_tokenizer.pad_token_id
    _steps(model, batch, pad, 1)  # non-zero adapter, so the LoRA path is part of the comparison
    params = [p for p in model.parameters() if p.requires_grad]

    chunked, kl = loss_sums(model, batch, pad, "cpu", chunk_tokens=chunk_tokens)
    chunked_grads = torch.autograd.grad(chunked, params)
    full = _full_logits_ce(model, batch, pad)
    full_grads = torch.autograd.grad(full, params)

    assert kl is None
    assert chunked.item() == pytest.approx(full.item(), rel=1e-4)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, a, b in zip(names, chunked_grads, full_grads):  # same gradients too (chunks are recomputed in backward)
        assert (a - b).norm() <= 1e-4 * b.norm(), name


def test_merged_model_matches_the_adapter_model(tiny_lm_dir, tiny_tokenizer, batch):
    model = _tiny_lora(tiny_lm_dir)
    pad = tiny_tokenizer.pad_token_id
    tensors = collate(batch, pad)
    inputs = {"input_ids": tensors["input_ids"], "attention_mask": tensors["attention_mask"]}
    with torch.no_grad():
        base_logits = model(**inputs).logits  # lora_B starts at zero: the adapter is a no-op
    _steps(model, batch, pad, 1)
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)

    model.eval()
    merged = copy.deepcopy(model).merge_and_unload()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        adapter_logits = model(**inputs).logits
        merged_logits = merged(**inputs).logits
    assert not torch.allclose(adapter_logits, base_logits, atol=1e-4)  # the step changed the model...
    mask = tensors["attention_mask"].bool()
    torch.testing.assert_close(
        merged_logits[mask], adapter_logits[mask], rtol=1e-4, atol=1e-4
    )  # ...and merging keeps it

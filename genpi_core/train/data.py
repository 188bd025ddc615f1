"""Training examples as token ids: how a dataset row becomes (ids, labels), and how rows are batched.

Reads nothing from disk itself; ``build_items`` takes the validated examples table. Only target tokens
carry loss, and an example longer than ``max_seq_len`` is an error: never cut silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pandas as pd
import torch

from genpi_core.generation.base import Message
from genpi_core.generation.chat_template import chat_token_ids, text_token_ids
from genpi_core.prompt.pg_format import with_reason
from schemas.config import TrainConfig

IGNORE = -100  # label of a position that carries no loss (torch's cross-entropy default)


@dataclass
class Item:
    """One tokenized example: ids, labels (IGNORE outside the target) and, for distillation, the
    teacher's top-k token ids and log-probs at each target position."""

    example_id: str
    ids: list[int]
    labels: list[int]
    teacher_ids: torch.Tensor | None = None
    teacher_logprobs: torch.Tensor | None = None


def encode_example(tokenizer, messages: list[Message], target: str) -> tuple[list[int], list[int]]:
    """Token ids and labels: context masked, target + closing end-of-turn learned.

    The context is rendered exactly as generation renders it (chat template + generation prompt),
    so the student learns to continue the same prefix it will see at inference time. Control strings
    inside messages or the target stay text (genpi_core.prompt.views), so the only special tokens are the template's.
    """
    context_ids = chat_token_ids(tokenizer, messages)
    target_ids = text_token_ids(tokenizer, target) + [tokenizer.eos_token_id]
    return context_ids + target_ids, [IGNORE] * len(context_ids) + target_ids


def with_prompt_in_context(example_id: str, share: float, seed: int) -> bool:
    """Whether this SFT example is trained with the prompt in context (the prepended-prompt baseline).

    A stable hash of the id, so the same examples are chosen in every process and every resume.
    """
    if share <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def build_items(
    tokenizer, df: pd.DataFrame, cfg: TrainConfig, prompt: list[Message], where: str
) -> dict[str, list[Item]]:
    """Tokenize the enabled objectives' examples; every over-long example is reported at once."""
    items: dict[str, list[Item]] = {"sft": [], "pg": []}
    too_long = []
    for row in df.itertuples():
        messages = json.loads(row.messages)
        if row.objective == "sft":
            if not cfg.sft:
                continue
            if with_prompt_in_context(row.example_id, cfg.prompt_in_context, cfg.seed):
                messages = prompt + messages
            target = row.target
        else:
            if not cfg.prompt_generation:
                continue
            target = with_reason(row.target, row.reason) if cfg.pg_reasons else row.target
        ids, labels = encode_example(tokenizer, messages, target)
        if len(ids) > cfg.max_seq_len:
            too_long.append(f"{row.example_id} ({len(ids)} tokens)")
        items[row.objective].append(Item(row.example_id, ids, labels))
    if too_long:
        raise ValueError(
            f"{where}: {len(too_long)} example(s) exceed train.max_seq_len={cfg.max_seq_len}: {', '.join(too_long[:5])}. "
            "Raise train.max_seq_len, or train without prompt generation (train.prompt_generation=false) "
            "if the prompt itself is too long; examples are never cut silently"
        )
    return items


def collate(batch: list[Item], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(item.ids) for item in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, item in enumerate(batch):  # right padding; labels come from the lists, not from ids != pad
        input_ids[i, : len(item.ids)] = torch.tensor(item.ids)
        labels[i, : len(item.labels)] = torch.tensor(item.labels)
        attention[i, : len(item.ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def micro_batches(items: list[Item], budget_tokens: int) -> list[list[Item]]:
    """Greedy split so each padded micro-batch holds at most ``budget_tokens`` (one long item may exceed it)."""
    batches: list[list[Item]] = []
    current: list[Item] = []
    for item in sorted(items, key=lambda it: len(it.ids)):
        width = max([len(item.ids)] + [len(it.ids) for it in current])
        if current and width * (len(current) + 1) > budget_tokens:
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches


def target_tokens(items: list[Item]) -> int:
    """Tokens that carry loss (labels shift by one: the first position predicts nothing)."""
    return sum(sum(1 for label in item.labels[1:] if label != IGNORE) for item in items)

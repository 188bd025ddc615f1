"""The teacher's log-probs on training targets: the same base model, adapter off, prompt in context.

Used by the optional distillation term (``train.distill_weight``); the home of the teacher-scoring step
that on-policy distillation will build on.
"""

from __future__ import annotations

import json

import pandas as pd
import torch
from tqdm.auto import tqdm

from genpi_core.generation.base import Message
from genpi_core.train.data import IGNORE, Item, encode_example


@torch.no_grad()
def add_teacher_topk(
    model, tokenizer, df: pd.DataFrame, items: list[Item], prompt: list[Message], top_k: int, device
) -> None:
    """The teacher (same base model, adapter off, prompt in context) top-k log-probs on each SFT target token.

    Top-k are renormalised to sum to one, so the term is a proper KL over the teacher's likely tokens.
    """
    rows = {r.example_id: r for r in df.itertuples()}
    model.eval()
    with model.disable_adapter():
        for item in tqdm(items, desc="teacher log-probs", unit="example", leave=False):
            row = rows[item.example_id]
            ids, labels = encode_example(tokenizer, prompt + json.loads(row.messages), row.target)
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float()
            keep = torch.tensor(labels[1:], device=device) != IGNORE
            top = torch.log_softmax(logits[keep], dim=-1).topk(top_k, dim=-1)
            item.teacher_ids = top.indices.cpu()
            item.teacher_logprobs = torch.log_softmax(top.values, dim=-1).cpu()
    model.train()

"""Stage teacher_logprobs: the prompted teacher's top-k log-probs on every SFT target token, computed once.

The teacher is the base model with the prompt in context (no adapter exists yet). Its log-probs on the
training targets do not depend on anything training changes, so they are a stage of their own: computed
once per (model, train table, k), stored as Parquet (schemas/teacher_logprobs.py), and read by every training
run that uses the distillation term (``train.distill_weight``), an ablation or a resumed run alike.

Reads: train.parquet and the ingested prompt. Writes: teacher_logprobs.parquet.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from genpi_core.generation.base import Message
from genpi_core.store.tables import read_table, write_table
from genpi_core.train.data import IGNORE, Item, encode_example
from schemas.config import ModelConfig
from schemas.datasets import ExamplesSchema
from schemas.teacher_logprobs import TEACHER_LOGPROBS_FILE, TeacherLogprobsSchema


@torch.no_grad()
def teacher_topk_rows(model, tokenizer, df: pd.DataFrame, prompt: list[Message], top_k: int, device) -> pd.DataFrame:
    """One row per (SFT example, target token, rank): the teacher's top-k, renormalised to sum to one, so the
    distillation term is a proper KL over the teacher's likely tokens."""
    rows: dict[str, list] = {"example_id": [], "position": [], "rank": [], "token_id": [], "logprob": []}
    sft = df[df["objective"] == "sft"]
    for row in tqdm(list(sft.itertuples()), desc="teacher log-probs", unit="example", leave=False):
        ids, labels = encode_example(tokenizer, prompt + json.loads(row.messages), row.target)
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float()
        keep = torch.tensor(labels[1:], device=device) != IGNORE
        top = torch.log_softmax(logits[keep], dim=-1).topk(top_k, dim=-1)
        logprobs = torch.log_softmax(top.values, dim=-1).clamp(max=0.0).cpu()
        positions, ranks = logprobs.shape
        rows["example_id"] += [row.example_id] * (positions * ranks)
        rows["position"] += [p for p in range(positions) for _ in range(ranks)]
        rows["rank"] += list(range(ranks)) * positions
        rows["token_id"] += top.indices.cpu().reshape(-1).tolist()
        rows["logprob"] += logprobs.reshape(-1).tolist()
    return pd.DataFrame(rows)


def run_teacher_logprobs(model_cfg: ModelConfig, train_path: Path, prompt: list[Message], top_k: int, out_dir: Path):
    """Load the base model, score the train table's SFT targets with the prompt in context, write the table."""
    from genpi_core.generation.models import load_model, load_tokenizer, pick_device

    tokenizer = load_tokenizer(model_cfg.name_or_path)
    model = load_model(model_cfg.name_or_path, model_cfg.dtype, model_cfg.device)
    table = teacher_topk_rows(
        model, tokenizer, read_table(train_path, ExamplesSchema), prompt, top_k, pick_device(model_cfg.device)
    )
    n = write_table(table, TeacherLogprobsSchema, out_dir / TEACHER_LOGPROBS_FILE)
    return {"examples": int(table["example_id"].nunique()), "rows": n, "top_k": top_k}


def attach_teacher_topk(items: list[Item], path: Path, top_k: int) -> None:
    """Give each SFT item the teacher's top-k from the stage's table; a missing example, a target of another
    length or another k is an error naming the file (the table belongs to another train table or tokenizer)."""
    table = read_table(path, TeacherLogprobsSchema).sort_values(["example_id", "position", "rank"])
    groups = {example_id: part for example_id, part in table.groupby("example_id", sort=False)}
    for item in items:
        part = groups.get(item.example_id)
        if part is None:
            raise ValueError(f"{path}: no teacher log-probs for example {item.example_id!r}; re-run the stage")
        targets = sum(1 for label in item.labels[1:] if label != IGNORE)
        ranks = int(part["rank"].max()) + 1
        if ranks != top_k or len(part) != targets * ranks:
            raise ValueError(
                f"{path}: example {item.example_id!r} has {len(part) // max(1, ranks)} target tokens x {ranks} ranks, "
                f"training expects {targets} x {top_k} (train.distill_top_k); re-run the teacher_logprobs stage"
            )
        item.teacher_ids = torch.tensor(part["token_id"].to_numpy().reshape(targets, ranks), dtype=torch.long)
        item.teacher_logprobs = torch.tensor(part["logprob"].to_numpy().reshape(targets, ranks), dtype=torch.float32)

"""Stage 4: train the LoRA adapter (skeleton objective: SFT on teacher replies, without the prompt).

Reads: train.parquet, val.parquet. Writes: ``adapter/`` (peft folder, renamed into place whole),
``train_log.parquet`` (loss per step), ``loss.png`` and ``metrics.json``.
Only the reply tokens (and the end-of-turn token that closes them) carry loss; the context is
masked. An example longer than ``max_seq_len`` is an error: never cut silently.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from genpi_core.models import load_model, load_tokenizer
from genpi_core.store import atomic_dir, atomic_save_figure, atomic_write_json
from genpi_core.tables import read_table, write_table
from schemas.config import LoraConfig, ModelConfig, TrainConfig
from schemas.datasets import TRAIN_LOG_FILE, ExamplesSchema, TrainLogSchema

ADAPTER_DIR = "adapter"
METRICS_FILE = "metrics.json"
LOSS_PLOT = "loss.png"
IGNORE = -100


def attach_lora(model, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def encode_example(tokenizer, messages: list[dict], target: str) -> tuple[list[int], list[int]]:
    """Token ids and labels: context masked, target + closing end-of-turn learned.

    The context is rendered exactly as generation renders it (chat template + generation prompt),
    so the student learns to continue the same prefix it will see at inference time.
    """
    context = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    target_ids = tokenizer(target, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return context_ids + target_ids, [IGNORE] * len(context_ids) + target_ids


def _encode_table(tokenizer, df: pd.DataFrame, max_len: int, where: str) -> list[tuple[list[int], list[int]]]:
    rows, too_long = [], []
    for row in df.itertuples():
        ids, labels = encode_example(tokenizer, json.loads(row.messages), row.target)
        if len(ids) > max_len:
            too_long.append(f"{row.example_id} ({len(ids)} tokens)")
        rows.append((ids, labels))
    if too_long:
        raise ValueError(
            f"{where}: {len(too_long)} example(s) exceed train.max_seq_len={max_len}: {', '.join(too_long[:5])}; "
            "raise train.max_seq_len (examples are never cut silently)"
        )
    return rows


def _collate(batch, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):  # right padding; labels come from the lists, not from ids != pad
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def _mean_loss(model, rows, batch_size: int, pad_id: int, device) -> float:
    model.eval()
    losses, weights = [], []
    for i in range(0, len(rows), batch_size):
        batch = _collate(rows[i : i + batch_size], pad_id)
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        losses.append(model(**{k: v.to(device) for k, v in batch.items()}).loss.item() * n)
        weights.append(n)
    model.train()
    return sum(losses) / max(1, sum(weights))


def train_loop(model, train_rows, val_rows, cfg: TrainConfig, pad_id: int) -> list[dict]:
    """Plain AdamW + warmup/cosine loop; returns the loss log (one row per step and per val pass)."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(total * cfg.warmup_fraction))
    rng = random.Random(cfg.seed)
    log: list[dict] = []
    model.train()
    step = 0
    with tqdm(total=total, desc="train", unit="step", leave=False) as bar:
        for epoch in range(cfg.epochs):
            order = list(range(len(train_rows)))
            rng.shuffle(order)
            for i in range(0, len(order), cfg.batch_size):
                batch = _collate([train_rows[j] for j in order[i : i + cfg.batch_size]], pad_id)
                lr = _lr_at(step, total, warmup, cfg.learning_rate)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                log.append({"step": step, "epoch": step / steps_per_epoch, "split": "train", "loss": loss.item(), "learning_rate": lr})
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
            if val_rows:
                val = _mean_loss(model, val_rows, cfg.batch_size, pad_id, device)
                log.append({"step": step, "epoch": float(epoch + 1), "split": "val", "loss": val, "learning_rate": 0.0})
    return log


def _plot_loss(log: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for split, marker in (("train", None), ("val", "o")):
        part = log[log["split"] == split]
        if len(part):
            ax.plot(part["step"], part["loss"], marker=marker, label=split)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (reply tokens)")
    ax.set_title("Adapter training loss")
    ax.legend()
    atomic_save_figure(fig, path)


def run_finetune(model_cfg: ModelConfig, cfg: TrainConfig, train_path: Path, val_path: Path, out_dir: Path) -> dict:
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(model_cfg.name_or_path)
    train_rows = _encode_table(tokenizer, read_table(train_path, ExamplesSchema), cfg.max_seq_len, str(train_path))
    val_rows = _encode_table(tokenizer, read_table(val_path, ExamplesSchema), cfg.max_seq_len, str(val_path))
    model = attach_lora(load_model(model_cfg.name_or_path, model_cfg.dtype, model_cfg.device), cfg.lora)
    started = time.perf_counter()
    log = train_loop(model, train_rows, val_rows, cfg, tokenizer.pad_token_id)
    seconds = time.perf_counter() - started
    with atomic_dir(out_dir / ADAPTER_DIR) as tmp:
        model.save_pretrained(tmp)
    log_df = pd.DataFrame(log)
    write_table(log_df, TrainLogSchema, out_dir / TRAIN_LOG_FILE)
    _plot_loss(log_df, out_dir / LOSS_PLOT)
    train_losses = log_df[log_df["split"] == "train"]["loss"]
    val_losses = log_df[log_df["split"] == "val"]["loss"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metrics = {
        "objective": cfg.objective,
        "steps": int(len(train_losses)),
        "train_examples": len(train_rows),
        "val_examples": len(val_rows),
        "first_loss": float(train_losses.iloc[0]),
        "final_loss": float(train_losses.iloc[-1]),
        "final_val_loss": float(val_losses.iloc[-1]) if len(val_losses) else None,
        "train_seconds": round(seconds, 2),
        "trainable_params": int(trainable),
        "train_tokens": int(sum(len(ids) for ids, _ in train_rows) * cfg.epochs),
    }
    atomic_write_json(out_dir / METRICS_FILE, metrics)
    return metrics

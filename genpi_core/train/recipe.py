"""Stage 4: train the LoRA adapter with GenPI's joint objective (docs/method.md).

Reads: train.parquet, val.parquet (SFT and PG examples) and the ingested prompt. Writes:
``adapter/`` (peft folder, renamed into place whole), optionally ``merged/``, ``train_log.parquet``,
``loss.png`` and ``metrics.json``; ``_state/checkpoint/`` holds the resumable training state.

Each optimizer step takes ``batch_size`` SFT examples and ``pg_per_step`` PG examples and minimises
``rho * L_sft + (1 - rho) * L_pg (+ distill_weight * L_kl)``, each term a mean over its target
tokens in the step. Only target tokens carry loss. Micro-batches bounded by ``micro_batch_tokens``
accumulate gradients, so a PG example holding a 2k-token prompt fits in memory. An example longer
than ``max_seq_len`` is an error: never cut silently.

The same code runs in one process or under ``accelerate launch`` (DDP): every rank sees the same
step plan and takes its share of each step's examples; losses are scaled by the step's global
token counts so the result does not depend on the number of processes. Checkpoints (adapter,
optimizer, RNG, log, early-stopping state) are written every ``checkpoint_every`` steps; the data
order is a pure function of (seed, epoch), so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from genpi_core.generation.base import Message
from genpi_core.generation.models import load_model, load_tokenizer, resolve_model
from genpi_core.store.stage import atomic_dir, atomic_save_figure, atomic_write_json
from genpi_core.store.tables import read_table, write_table
from genpi_core.train.data import build_items
from genpi_core.train.on_policy import OnPolicy, build_contexts, register_prefix_attention
from genpi_core.train.qlora import (
    check_qlora_available,
    load_quantized_base,
    merge_full_precision,
)
from genpi_core.train.teacher_logprobs import attach_teacher_topk
from genpi_core.train.trainer import Trainer
from genpi_core.train.warm_start import load_parent, plan_warm_start
from schemas.artifacts import (
    ADAPTER_DIR,
    CHECKPOINT_DIR,
    LOSS_PLOT,
    MERGED_DIR,
    METRICS_FILE,
    TRAIN_LOG_FILE,
)
from schemas.config import LoraConfig, ModelConfig, TrainConfig
from schemas.datasets import ExamplesSchema, TrainLogSchema


def attach_lora(model, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def _plot_loss(log: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    train, val = log[log["split"] == "train"], log[log["split"] == "val"]
    for column, label in (("loss", "joint"), ("sft_loss", "SFT"), ("pg_loss", "prompt generation")):
        if train[column].notna().any():
            ax.plot(train["step"], train[column], label=f"train {label}", alpha=1.0 if column == "loss" else 0.6)
    if len(val):
        ax.plot(val["step"], val["loss"], marker="o", label="val joint")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean token loss")
    ax.set_title("Adapter training loss")
    ax.legend()
    atomic_save_figure(fig, path)


def run_finetune(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    train_path: Path,
    val_path: Path,
    prompt: list[Message],
    out_dir: Path,
    on_step=None,
    teacher_logprobs_path: Path | None = None,
) -> dict:
    """Train (or resume) and write the adapter, log, plot and metrics. Safe under ``accelerate launch``."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from genpi_core.generation.models import pick_device

    check_qlora_available(cfg.lora.quantize_base)  # before any data or weights are read
    # no buffer broadcast in forward: ranks run different numbers of micro-batches per step, and the only
    # collective they must share is the one gradient all-reduce of each step's last backward
    accelerator = Accelerator(
        cpu=pick_device(model_cfg.device) == "cpu",
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(model_cfg.name_or_path)
    train_df, val_df = read_table(train_path, ExamplesSchema), read_table(val_path, ExamplesSchema)
    items = build_items(tokenizer, train_df, cfg, prompt, str(train_path))
    val_items = build_items(tokenizer, val_df, cfg, prompt, str(val_path))
    if not items["sft"] and not items["pg"]:
        raise ValueError(
            f"{train_path}: no examples for the enabled objectives (sft={cfg.sft}, prompt_generation={cfg.prompt_generation})"
        )
    quantize = cfg.lora.quantize_base
    if quantize:
        base = load_quantized_base(
            resolve_model(model_cfg.name_or_path), quantize, model_cfg.dtype, accelerator.local_process_index
        )
    else:
        # genpi's attention function is plain SDPA until asked to attend to a shared prefix (the teacher's prompt)
        attention = {"attn_implementation": register_prefix_attention()} if cfg.on_policy.enabled else {}
        base = load_model(model_cfg.name_or_path, model_cfg.dtype, model_cfg.device, **attention)
    model = attach_lora(base, cfg.lora)
    cfg, warm_start = plan_warm_start(cfg, model_cfg)  # a parent's adapter to start from, and a shorter schedule
    if warm_start["used"]:
        load_parent(model, Path(warm_start["from"]))
    if cfg.distill_weight > 0:  # the teacher_logprobs stage's table, computed once for every run on this data
        if teacher_logprobs_path is None:
            raise ValueError(f"{train_path}: train.distill_weight > 0 needs the teacher_logprobs stage's table")
        attach_teacher_topk(items["sft"], teacher_logprobs_path, cfg.distill_top_k)
    on_policy, contexts = None, []
    if cfg.on_policy.enabled:
        if not prompt:
            raise ValueError(f"{train_path}: train.on_policy needs the ingested prompt (the teacher's context)")
        contexts = build_contexts(
            tokenizer, train_df, prompt, cfg.on_policy.max_new_tokens, cfg.max_seq_len, str(train_path)
        )
        if not contexts:
            raise ValueError(
                f"{train_path}: train.on_policy needs SFT rows (their contexts are what the student answers)"
            )
        on_policy = OnPolicy(model, tokenizer, contexts, cfg.on_policy, accelerator.device)
    trainer = Trainer(
        model,
        accelerator,
        {**items, "on_policy": contexts},
        val_items,
        cfg,
        tokenizer.pad_token_id,
        out_dir / CHECKPOINT_DIR,
        on_policy,
    )
    resumed_at = trainer.step if trainer.try_resume() else None
    started = time.perf_counter()
    trainer.fit(on_step=on_step)
    seconds = time.perf_counter() - started
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return {}
    peft_model = trainer._peft_model()
    with atomic_dir(out_dir / ADAPTER_DIR) as tmp:
        peft_model.save_pretrained(tmp)
    log_df = pd.DataFrame(trainer.log).reindex(columns=list(TrainLogSchema.to_schema().columns))
    write_table(log_df, TrainLogSchema, out_dir / TRAIN_LOG_FILE)
    _plot_loss(log_df, out_dir / LOSS_PLOT)
    if cfg.merge:
        with atomic_dir(out_dir / MERGED_DIR) as tmp:
            if quantize:
                merge_full_precision(resolve_model(model_cfg.name_or_path), model_cfg.dtype, out_dir / ADAPTER_DIR, tmp)
            else:
                peft_model.merge_and_unload().save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    train_log, val_log = log_df[log_df["split"] == "train"], log_df[log_df["split"] == "val"]
    metrics = {
        "objective": {
            "sft": bool(items["sft"]),
            "prompt_generation": bool(items["pg"]),
            "pg_reasons": cfg.pg_reasons,
            "weights": trainer.weights,
            "distill_weight": cfg.distill_weight,
            "prompt_in_context": cfg.prompt_in_context,
            "on_policy": cfg.on_policy.model_dump(mode="json") if cfg.on_policy.enabled else None,
        },
        "warm_start": warm_start,
        "steps": int(len(train_log)),
        "planned_steps": trainer.plan.total,
        "on_policy_steps": int(
            sum(1 for r in trainer.log if r["split"] == "train" and r.get("on_policy_loss") is not None)
        ),
        "stopped_early": trainer.stopped_early,
        "resumed_at_step": resumed_at,
        "processes": accelerator.num_processes,
        "quantized_base": quantize,
        "train_examples": {
            "sft": len(items["sft"]),
            "pg": len(items["pg"]),
            "on_policy_contexts": len(contexts),
            "pg_with_reason": int(sum(1 for r in train_df.itertuples() if r.objective == "pg" and r.reason))
            if items["pg"] and cfg.pg_reasons
            else 0,
        },
        "val_examples": {"sft": len(val_items["sft"]), "pg": len(val_items["pg"])},
        "longest_example_tokens": max(
            [len(it.ids) for name in ("sft", "pg") for it in items[name]] + [len(c.teacher_ids) for c in contexts]
        ),
        "first_loss": float(train_log["loss"].iloc[0]),
        "final_loss": float(train_log["loss"].iloc[-1]),
        "final_val_loss": float(val_log["loss"].iloc[-1]) if len(val_log) else None,
        "train_seconds": round(seconds, 2),
        "elapsed_seconds": round(trainer.elapsed_s, 2),  # every process of the run, resumed ones included
        "snapshots": sorted(p.name for p in trainer.snapshot_dir.glob("step-*")) if cfg.snapshots else [],
        "tokens_per_second": round(trainer.tokens_seen / seconds, 1) if seconds > 0 and resumed_at is None else None,
        "trainable_params": int(sum(p.numel() for p in peft_model.parameters() if p.requires_grad)),
        "train_tokens": int(trainer.tokens_seen),
    }
    atomic_write_json(out_dir / METRICS_FILE, metrics)
    return metrics

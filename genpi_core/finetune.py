"""Stage 4: train the LoRA adapter with GenPI's joint objective (METHOD.md).

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

import hashlib
import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from genpi_core.chat import chat_token_ids, text_token_ids
from genpi_core.generation.base import Message
from genpi_core.models import load_model, load_tokenizer, resolve_model
from genpi_core.prompt_generation import with_reason
from genpi_core.quantized import check_qlora_available, load_quantized_base, merge_full_precision
from genpi_core.target_loss import CHUNK_TOKENS, IGNORE, chunked_target_sums, hidden_states_only, supports_chunked_output
from genpi_core.store import CHECKPOINT_DIR, atomic_dir, atomic_save_figure, atomic_write_json, atomic_write_text
from genpi_core.tables import read_table, write_table
from schemas.config import LoraConfig, ModelConfig, TrainConfig
from schemas.datasets import TRAIN_LOG_FILE, ExamplesSchema, TrainLogSchema

ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
METRICS_FILE = "metrics.json"
LOSS_PLOT = "loss.png"
CHECKPOINT = "checkpoint"
LATEST = "latest_checkpoint"


@dataclass
class Item:
    """One tokenized example: ids, labels (IGNORE outside the target) and, for distillation, the
    teacher's top-k token ids and log-probs at each target position."""

    example_id: str
    ids: list[int]
    labels: list[int]
    teacher_ids: torch.Tensor | None = None
    teacher_logprobs: torch.Tensor | None = None


def attach_lora(model, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules), task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def encode_example(tokenizer, messages: list[Message], target: str) -> tuple[list[int], list[int]]:
    """Token ids and labels: context masked, target + closing end-of-turn learned.

    The context is rendered exactly as generation renders it (chat template + generation prompt),
    so the student learns to continue the same prefix it will see at inference time. Control strings
    inside messages or the target stay text (genpi_core.chat), so the only special tokens are the template's.
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


def build_items(tokenizer, df: pd.DataFrame, cfg: TrainConfig, prompt: list[Message], where: str) -> dict[str, list[Item]]:
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


def loss_sums(model, batch: list[Item], pad_id: int, device, distill: bool = False,
              chunk_tokens: int = CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed cross-entropy over target tokens, and the summed KL(teacher || student) when asked.

    Only target positions are projected to the vocabulary, in chunks (genpi_core/target_loss.py);
    models that post-process logits take the plain full-logits path."""
    tensors = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
    labels = tensors["labels"][:, 1:]
    targets = labels != IGNORE  # target positions, in order across the batch (the teacher's top-k use it too)
    teacher_ids = torch.cat([item.teacher_ids for item in batch]).to(device) if distill else None
    teacher_logprobs = torch.cat([item.teacher_logprobs for item in batch]).to(device) if distill else None
    if supports_chunked_output(model):
        with hidden_states_only(model) as head:
            hidden = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
        ce, kl = chunked_target_sums(head, hidden[:, :-1][targets], labels[targets], teacher_ids, teacher_logprobs,
                                     chunk_tokens)
        return ce, kl if distill else None
    logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits[:, :-1].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    if not distill:
        return ce, None
    student = torch.log_softmax(logits[targets], dim=-1)
    kl = (teacher_logprobs.exp() * (teacher_logprobs - student.gather(-1, teacher_ids))).sum()
    return ce, kl


@torch.no_grad()
def add_teacher_topk(model, tokenizer, df: pd.DataFrame, items: list[Item], prompt: list[Message], top_k: int, device) -> None:
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


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


class StepPlan:
    """Which examples each optimizer step uses: a pure function of (seed, step), identical on every rank.

    An epoch is one pass over the SFT examples (PG examples alone when SFT is off); PG examples
    are drawn ``pg_per_step`` at a time, on every ``pg_every``-th step, from their own shuffled cycle.
    """

    def __init__(self, items: dict[str, list[Item]], cfg: TrainConfig) -> None:
        self.sft, self.pg, self.cfg = items["sft"], items["pg"], cfg
        self.pg_per_step = (cfg.pg_per_step or cfg.batch_size) if self.pg else 0
        main = len(self.sft) if self.sft else math.ceil(len(self.pg) / max(1, self.pg_per_step)) * cfg.batch_size
        self.steps_per_epoch = max(1, math.ceil(main / cfg.batch_size))
        self.total = self.steps_per_epoch * cfg.epochs

    @staticmethod
    def _order(n: int, seed: int) -> list[int]:
        order = list(range(n))
        random.Random(seed).shuffle(order)
        return order

    def step(self, step: int) -> dict[str, list[Item]]:
        out: dict[str, list[Item]] = {"sft": [], "pg": []}
        if self.sft:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = self._order(len(self.sft), self.cfg.seed * 1000 + epoch)
            out["sft"] = [self.sft[i] for i in order[within * self.cfg.batch_size : (within + 1) * self.cfg.batch_size]]
        if step % self.cfg.pg_every:
            return out
        for k in range(self.pg_per_step):
            cycle, within = divmod((step // self.cfg.pg_every) * self.pg_per_step + k, len(self.pg))
            out["pg"].append(self.pg[self._order(len(self.pg), self.cfg.seed * 1000 + 500 + cycle)[within]])
        return out


def objective_weights(cfg: TrainConfig, has_sft: bool, has_pg: bool) -> dict[str, float]:
    if has_sft and has_pg:
        return {"sft": cfg.sft_weight, "pg": round(1.0 - cfg.sft_weight, 12)}  # 0.3, not 0.30000000000000004
    return {"sft": 1.0 if has_sft else 0.0, "pg": 1.0 if has_pg else 0.0}


class Trainer:
    """The loop: plan, accumulate over micro-batches, clip, step; validate per epoch; checkpoint."""

    def __init__(self, model, accelerator, items, val_items, cfg: TrainConfig, pad_id: int, state_dir: Path) -> None:
        self.accelerator, self.cfg, self.pad_id, self.state_dir = accelerator, cfg, pad_id, state_dir
        self.plan = StepPlan(items, cfg)
        self.val_items = val_items
        self.weights = objective_weights(cfg, bool(items["sft"]), bool(items["pg"]))
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=0.0)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.device = accelerator.device
        self.warmup = max(1, int(self.plan.total * cfg.warmup_fraction))
        self.step = 0
        self.log: list[dict] = []
        self.best_val: float | None = None
        self.bad_evals = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_early = False
        self.tokens_seen = 0
        self._recomputing = False

    # --- state -----------------------------------------------------------------------------------
    def _peft_model(self):
        return self.accelerator.unwrap_model(self.model)

    def _adapter_state(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self._peft_model()).items()}

    def save_checkpoint(self) -> None:
        """A new ``checkpoint-<step>`` folder, then the ``latest`` pointer, then older folders go: a kill at any
        point leaves the previous checkpoint or the new one, never neither."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            name = f"{CHECKPOINT}-{self.step:06d}"
            with atomic_dir(self.state_dir / name) as tmp:
                torch.save({"adapter": self._adapter_state(), "optimizer": self.optimizer.state_dict(),
                            "rng": torch.get_rng_state(), "best_state": self.best_state}, tmp / "state.pt")
                atomic_write_json(tmp / "trainer_state.json", {
                    "step": self.step, "log": self.log, "best_val": self.best_val, "bad_evals": self.bad_evals,
                    "stopped_early": self.stopped_early, "tokens_seen": self.tokens_seen,
                })
            atomic_write_text(self.state_dir / LATEST, name)
            for old in self.state_dir.glob(f"{CHECKPOINT}-*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def try_resume(self) -> bool:
        pointer = self.state_dir / LATEST
        if not pointer.is_file():
            return False
        from peft import set_peft_model_state_dict

        folder = self.state_dir / pointer.read_text().strip()
        meta = json.loads((folder / "trainer_state.json").read_text())
        blob = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        set_peft_model_state_dict(self._peft_model(), blob["adapter"])
        self.optimizer.load_state_dict(blob["optimizer"])
        torch.set_rng_state(blob["rng"])
        self.best_state = blob["best_state"]
        self.step, self.log, self.best_val = meta["step"], meta["log"], meta["best_val"]
        self.bad_evals, self.stopped_early, self.tokens_seen = meta["bad_evals"], meta["stopped_early"], meta["tokens_seen"]
        return True

    # --- one step ----------------------------------------------------------------------------------
    def _checkpoint_activations(self, on: bool) -> None:
        """Recompute activations in backward for long micro-batches (PG examples hold the whole prompt):
        a 1.8k-token example then needs a fraction of the memory, for about a third more compute."""
        if on == self._recomputing:
            return
        base = self._peft_model().get_base_model()
        if on:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_disable()
        base.config.use_cache = False
        self._recomputing = on

    def _my_share(self, items: list[Item]) -> list[Item]:
        return items[self.accelerator.process_index :: self.accelerator.num_processes]

    def train_step(self) -> dict[str, float]:
        planned = self.plan.step(self.step)
        world = self.accelerator.num_processes
        counts = {name: target_tokens(batch) for name, batch in planned.items()}
        work = [(name, micro) for name, batch in planned.items() if batch and self.weights[name] > 0
                for micro in micro_batches(self._my_share(batch), self.cfg.micro_batch_tokens)]
        idle = not work  # this rank has no share this step: a zero-weight pass keeps DDP's gradient sync in step
        if idle:
            first = next(name for name, batch in planned.items() if batch)
            work = [(first, planned[first][:1])]
        sums = {"sft": 0.0, "pg": 0.0, "distill": 0.0}
        for i, (name, micro) in enumerate(work):
            distill = name == "sft" and self.cfg.distill_weight > 0
            sync = i == len(work) - 1
            self._checkpoint_activations(max(len(it.ids) for it in micro) > self.cfg.recompute_above_tokens)
            with nullcontext() if sync else self.accelerator.no_sync(self.model):
                ce, kl = loss_sums(self.model, micro, self.pad_id, self.device, distill=distill)
                loss = ce * self.weights[name] / max(1, counts[name])
                if kl is not None:
                    loss = loss + kl * self.cfg.distill_weight / max(1, counts[name])
                    sums["distill"] += kl.item()
                self.accelerator.backward(loss * world * (0.0 if idle else 1.0))  # DDP averages over ranks
            if not idle:
                sums[name] += ce.item()
                self.tokens_seen += sum(len(it.ids) for it in micro)
        self.accelerator.clip_grad_norm_(self.params, self.cfg.grad_clip)
        lr = lr_at(self.step, self.plan.total, self.warmup, self.cfg.learning_rate)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        reduced = self.accelerator.reduce(torch.tensor([sums["sft"], sums["pg"], sums["distill"]], device=self.device), "sum")
        return self._losses(dict(zip(("sft", "pg", "distill"), reduced.tolist())), counts) | {"learning_rate": lr}

    def _losses(self, sums: dict[str, float], counts: dict[str, int]) -> dict[str, float | None]:
        sft = sums["sft"] / counts["sft"] if counts.get("sft") and self.weights["sft"] > 0 else None
        pg = sums["pg"] / counts["pg"] if counts.get("pg") and self.weights["pg"] > 0 else None
        distill = sums["distill"] / counts["sft"] if sft is not None and self.cfg.distill_weight > 0 else None
        joint = sum(self.weights[n] * v for n, v in (("sft", sft), ("pg", pg)) if v is not None)
        if distill is not None:
            joint += self.cfg.distill_weight * distill
        return {"loss": joint, "sft_loss": sft, "pg_loss": pg, "distill_loss": distill}

    @torch.no_grad()
    def validate(self, include_pg: bool = True) -> dict[str, float | None] | None:
        """Validation losses. PG is validated on the final pass only when SFT is on: each PG example
        holds the whole prompt, and the SFT loss is what tracks the behaviour (and early stopping)."""
        if not any(self.val_items.values()):
            return None
        model = self._peft_model()  # not the DDP wrapper: no collective ops, whatever each rank's share
        model.eval()
        sums, counts = {"sft": 0.0, "pg": 0.0, "distill": 0.0}, {}
        for name, items in self.val_items.items():
            if name == "pg" and not include_pg and self.val_items["sft"]:
                continue
            counts[name] = target_tokens(items)
            for micro in micro_batches(self._my_share(items), self.cfg.micro_batch_tokens):
                sums[name] += loss_sums(model, micro, self.pad_id, self.device)[0].item()
        model.train()
        reduced = self.accelerator.reduce(torch.tensor([sums["sft"], sums["pg"], 0.0], device=self.device), "sum")
        return self._losses(dict(zip(("sft", "pg", "distill"), reduced.tolist())), counts)

    def _after_validation(self, val: dict) -> None:
        if self.cfg.early_stopping_patience is None:
            return
        watched = val["sft_loss"] if val["sft_loss"] is not None else val["loss"]
        if self.best_val is None or watched < self.best_val:
            self.best_val, self.bad_evals, self.best_state = watched, 0, self._adapter_state()
        else:
            self.bad_evals += 1
            self.stopped_early = self.bad_evals >= self.cfg.early_stopping_patience

    def fit(self, on_step=None) -> None:
        spe = self.plan.steps_per_epoch
        with tqdm(total=self.plan.total, initial=self.step, desc="train", unit="step", leave=False,
                  disable=not self.accelerator.is_main_process) as bar:
            while self.step < self.plan.total and not self.stopped_early:
                losses = self.train_step()
                self.step += 1
                self.log.append({"step": self.step, "epoch": self.step / spe, "split": "train", **losses})
                bar.set_postfix(loss=f"{losses['loss']:.3f}")
                bar.update()
                if self.step % spe == 0:
                    val = self.validate(include_pg=self.step == self.plan.total)
                    if val is not None:
                        self.log.append({"step": self.step, "epoch": self.step / spe, "split": "val", **val,
                                         "learning_rate": 0.0})
                        self._after_validation(val)
                if self.step % self.cfg.checkpoint_every == 0 or self.step % spe == 0:
                    self.save_checkpoint()
                if on_step is not None:
                    on_step(self.step)
        if self.best_state is not None:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self._peft_model(), self.best_state)  # early stopping keeps the best adapter


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


def run_finetune(model_cfg: ModelConfig, cfg: TrainConfig, train_path: Path, val_path: Path, prompt: list[Message],
                 out_dir: Path, on_step=None) -> dict:
    """Train (or resume) and write the adapter, log, plot and metrics. Safe under ``accelerate launch``."""
    from accelerate import Accelerator

    from genpi_core.models import pick_device

    from accelerate.utils import DistributedDataParallelKwargs

    check_qlora_available(cfg.lora.quantize_base)  # before any data or weights are read
    # no buffer broadcast in forward: ranks run different numbers of micro-batches per step, and the only
    # collective they must share is the one gradient all-reduce of each step's last backward
    accelerator = Accelerator(cpu=pick_device(model_cfg.device) == "cpu",
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(model_cfg.name_or_path)
    train_df, val_df = read_table(train_path, ExamplesSchema), read_table(val_path, ExamplesSchema)
    items = build_items(tokenizer, train_df, cfg, prompt, str(train_path))
    val_items = build_items(tokenizer, val_df, cfg, prompt, str(val_path))
    if not items["sft"] and not items["pg"]:
        raise ValueError(f"{train_path}: no examples for the enabled objectives (sft={cfg.sft}, prompt_generation={cfg.prompt_generation})")
    quantize = cfg.lora.quantize_base
    if quantize:
        base = load_quantized_base(resolve_model(model_cfg.name_or_path), quantize, model_cfg.dtype,
                                   accelerator.local_process_index)
    else:
        base = load_model(model_cfg.name_or_path, model_cfg.dtype, model_cfg.device)
    model = attach_lora(base, cfg.lora)
    if cfg.distill_weight > 0:
        add_teacher_topk(model, tokenizer, train_df, items["sft"], prompt, cfg.distill_top_k, accelerator.device)
    trainer = Trainer(model, accelerator, items, val_items, cfg, tokenizer.pad_token_id, out_dir / CHECKPOINT_DIR)
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
        "objective": {"sft": bool(items["sft"]), "prompt_generation": bool(items["pg"]), "pg_reasons": cfg.pg_reasons,
                      "weights": trainer.weights, "distill_weight": cfg.distill_weight,
                      "prompt_in_context": cfg.prompt_in_context},
        "steps": int(len(train_log)),
        "planned_steps": trainer.plan.total,
        "stopped_early": trainer.stopped_early,
        "resumed_at_step": resumed_at,
        "processes": accelerator.num_processes,
        "quantized_base": quantize,
        "train_examples": {"sft": len(items["sft"]), "pg": len(items["pg"]),
                           "pg_with_reason": int(sum(1 for r in train_df.itertuples() if r.objective == "pg" and r.reason))
                           if items["pg"] and cfg.pg_reasons else 0},
        "val_examples": {"sft": len(val_items["sft"]), "pg": len(val_items["pg"])},
        "longest_example_tokens": max(len(it.ids) for group in items.values() for it in group),
        "first_loss": float(train_log["loss"].iloc[0]),
        "final_loss": float(train_log["loss"].iloc[-1]),
        "final_val_loss": float(val_log["loss"].iloc[-1]) if len(val_log) else None,
        "train_seconds": round(seconds, 2),
        "tokens_per_second": round(trainer.tokens_seen / seconds, 1) if seconds > 0 and resumed_at is None else None,
        "trainable_params": int(sum(p.numel() for p in peft_model.parameters() if p.requires_grad)),
        "train_tokens": int(trainer.tokens_seen),
    }
    atomic_write_json(out_dir / METRICS_FILE, metrics)
    return metrics

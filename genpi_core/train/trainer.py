"""The optimization loop: which examples each step takes, micro-batch accumulation, validation, checkpoints.

The same loop runs in one process or under ``accelerate launch`` (DDP): every rank sees the same step
plan and takes its share of each step's examples. Checkpoints (adapter, optimizer, RNG, log, early-stopping
state) are written every ``checkpoint_every`` steps, and the data order is a pure function of (seed, epoch),
so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from genpi_core.store.stage import atomic_dir, atomic_torch_save, atomic_write_json, atomic_write_text
from genpi_core.train.data import Item, micro_batches, target_tokens
from genpi_core.train.loss import loss_sums
from genpi_core.train.on_policy import divergence_sum
from schemas.artifacts import (
    CHECKPOINT_PREFIX,
    CHECKPOINT_TENSORS,
    CHECKPOINT_TRAINER_STATE,
    LATEST_CHECKPOINT,
    SNAPSHOT_INFO,
    SNAPSHOTS_DIR,
)
from schemas.config import TrainConfig

_SUMS = ("sft", "pg", "distill", "on_policy")  # the per-step sums reduced over ranks, in this order


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def pg_examples_per_step(cfg: TrainConfig, n_sft: int, n_pg: int) -> int:
    """The paper's dose by default: each pseudo input gives one SFT and one PG example per epoch. SFT has a row per
    agent turn (a 2-turn conversation gives two) and PG one per conversation, so a step of ``batch_size`` SFT rows
    takes the matching share of PG rows, not ``batch_size`` of them (that would be twice the paper's dose on 2-turn
    conversations, and twice the CPU: each PG example holds the whole prompt)."""
    if cfg.pg_per_step is not None:
        return cfg.pg_per_step
    if not n_sft:
        return cfg.batch_size
    return max(1, math.ceil(cfg.batch_size * n_pg / n_sft))


class StepPlan:
    """Which examples each optimizer step uses: a pure function of (seed, step), identical on every rank.

    An epoch is one pass over the SFT examples (PG examples alone when SFT is off); PG examples
    are drawn ``pg_per_step`` at a time, on every ``pg_every``-th step, from their own shuffled cycle.
    On-policy contexts are drawn the same way: on every joint step (schedule ``mixed``), or in a phase
    of their own after the joint steps (``after``, or when they are the only objective).
    """

    def __init__(self, items: dict[str, list], cfg: TrainConfig) -> None:
        self.sft, self.pg, self.cfg = items["sft"], items["pg"], cfg
        self.contexts = items.get("on_policy", []) if cfg.on_policy.enabled else []
        self.pg_per_step = pg_examples_per_step(cfg, len(self.sft), len(self.pg)) if self.pg else 0
        self.per_step_contexts = min(cfg.on_policy.contexts_per_step, len(self.contexts))
        joint = bool(self.sft or self.pg)
        own_phase = bool(self.contexts) and (not joint or cfg.on_policy.schedule == "after")
        self.mixed = bool(self.contexts) and not own_phase
        self.joint_total = 0
        if joint:
            main = len(self.sft) if self.sft else math.ceil(len(self.pg) / max(1, self.pg_per_step)) * cfg.batch_size
            self.steps_per_epoch = max(1, math.ceil(main / cfg.batch_size))
            self.joint_total = self.steps_per_epoch * cfg.epochs
        on_policy_epoch = math.ceil(len(self.contexts) / max(1, self.per_step_contexts))
        if not joint:
            self.steps_per_epoch = max(1, on_policy_epoch)
        self.on_policy_total = on_policy_epoch * cfg.on_policy.epochs if own_phase else 0
        self.total = self.joint_total + self.on_policy_total
        if cfg.max_steps is not None:  # a fixed step budget (e.g. the same wall time as another variant)
            if own_phase:  # the on-policy phase gets what the joint phase leaves
                self.joint_total = min(self.joint_total, cfg.max_steps)
                self.on_policy_total = cfg.max_steps - self.joint_total
            else:  # the joint steps go on past their epochs (each epoch reshuffled)
                self.joint_total = cfg.max_steps
            self.total = cfg.max_steps

    @staticmethod
    def _order(n: int, seed: int) -> list[int]:
        order = list(range(n))
        random.Random(seed).shuffle(order)
        return order

    def _cycled(self, pool: list, draw: int, per_step: int, salt: int) -> list:
        """The ``draw``-th group of ``per_step`` items from a pool reshuffled on every pass over it."""
        picked = []
        for k in range(per_step):
            cycle, within = divmod(draw * per_step + k, len(pool))
            picked.append(pool[self._order(len(pool), self.cfg.seed * 1000 + salt + cycle)[within]])
        return picked

    def step(self, step: int) -> dict[str, list]:
        out: dict[str, list] = {"sft": [], "pg": [], "on_policy": []}
        if step >= self.joint_total:  # the on-policy phase of its own
            out["on_policy"] = self._cycled(self.contexts, step - self.joint_total, self.per_step_contexts, 700)
            return out
        if self.mixed:
            out["on_policy"] = self._cycled(self.contexts, step, self.per_step_contexts, 700)
        if self.sft:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = self._order(len(self.sft), self.cfg.seed * 1000 + epoch)
            out["sft"] = [self.sft[i] for i in order[within * self.cfg.batch_size : (within + 1) * self.cfg.batch_size]]
        if self.pg and step % self.cfg.pg_every == 0:
            out["pg"] = self._cycled(self.pg, step // self.cfg.pg_every, self.pg_per_step, 500)
        return out


def objective_weights(cfg: TrainConfig, has_sft: bool, has_pg: bool) -> dict[str, float]:
    if has_sft and has_pg:
        return {"sft": cfg.sft_weight, "pg": round(1.0 - cfg.sft_weight, 12)}  # 0.3, not 0.30000000000000004
    return {"sft": 1.0 if has_sft else 0.0, "pg": 1.0 if has_pg else 0.0}


class Trainer:
    """The loop: plan, accumulate over micro-batches, clip, step; validate per epoch; checkpoint."""

    def __init__(
        self, model, accelerator, items, val_items, cfg: TrainConfig, pad_id: int, state_dir: Path, on_policy=None
    ) -> None:
        self.accelerator, self.cfg, self.pad_id, self.state_dir = accelerator, cfg, pad_id, state_dir
        self.plan = StepPlan(items, cfg)
        self.on_policy = on_policy  # on_policy.OnPolicy: samples and teacher scores, when train.on_policy is on
        self.val_items = val_items
        self.weights = objective_weights(cfg, bool(items["sft"]), bool(items["pg"]))
        model.train()  # load_model returns eval mode: LoRA dropout and activation recompute act only in train mode
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
        self.elapsed_s = 0.0  # training time over every process of this run (a resumed run adds to it)
        self.snapshot_dir = state_dir / SNAPSHOTS_DIR  # in _state/: a resumed run keeps the ones it made before
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
            name = f"{CHECKPOINT_PREFIX}-{self.step:06d}"
            with atomic_dir(self.state_dir / name) as tmp:
                atomic_torch_save(
                    {
                        "adapter": self._adapter_state(),
                        "optimizer": self.optimizer.state_dict(),
                        "rng": torch.get_rng_state(),
                        "best_state": self.best_state,
                    },
                    tmp / CHECKPOINT_TENSORS,
                )
                atomic_write_json(
                    tmp / CHECKPOINT_TRAINER_STATE,
                    {
                        "step": self.step,
                        "log": self.log,
                        "best_val": self.best_val,
                        "bad_evals": self.bad_evals,
                        "stopped_early": self.stopped_early,
                        "tokens_seen": self.tokens_seen,
                        "elapsed_s": self.elapsed_s,
                    },
                )
            atomic_write_text(self.state_dir / LATEST_CHECKPOINT, name)
            for old in self.state_dir.glob(f"{CHECKPOINT_PREFIX}-*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def try_resume(self) -> bool:
        pointer = self.state_dir / LATEST_CHECKPOINT
        if not pointer.is_file():
            return False
        from peft import set_peft_model_state_dict

        folder = self.state_dir / pointer.read_text().strip()
        meta = json.loads((folder / CHECKPOINT_TRAINER_STATE).read_text())
        blob = torch.load(folder / CHECKPOINT_TENSORS, map_location="cpu", weights_only=False)
        set_peft_model_state_dict(self._peft_model(), blob["adapter"])
        self.optimizer.load_state_dict(blob["optimizer"])
        torch.set_rng_state(blob["rng"])
        self.best_state = blob["best_state"]
        self.step, self.log, self.best_val = meta["step"], meta["log"], meta["best_val"]
        self.bad_evals, self.stopped_early, self.tokens_seen = (
            meta["bad_evals"],
            meta["stopped_early"],
            meta["tokens_seen"],
        )
        self.elapsed_s = meta.get("elapsed_s", 0.0)
        return True

    # --- one step ----------------------------------------------------------------------------------
    def _checkpoint_activations(self, on: bool) -> None:
        """Recompute activations in backward for long micro-batches (PG examples hold the whole prompt): a
        1.5k-token example of the 0.5B then needs ~2 GB instead of ~8 GB of activations, for ~40-60% more
        time (bench/results/training.md)."""
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

    def _on_policy_samples(self, contexts: list) -> list:
        """This rank's share of the step's contexts, sampled by the student and scored by the teacher. The seed
        is a function of (seed, step, rank), so a resumed run draws the very same samples."""
        if not contexts:
            return []
        mine = self._my_share(contexts) or contexts[:1]  # an idle rank still takes part in the gradient sync
        seed = (self.cfg.seed * 1_000_003 + self.step) * 64 + self.accelerator.process_index
        return self.on_policy.prepare(mine, seed)

    def train_step(self) -> dict[str, float | None]:
        planned = self.plan.step(self.step)
        world = self.accelerator.num_processes
        counts = {name: target_tokens(planned[name]) for name in ("sft", "pg")}
        samples = self._on_policy_samples(planned["on_policy"])
        mine_idle = bool(samples) and not self._my_share(planned["on_policy"])
        if planned["on_policy"]:  # sampled lengths are known only where they were sampled
            local = 0 if mine_idle else sum(s.reply_len for s in samples)
            counts["on_policy"] = int(self.accelerator.reduce(torch.tensor(local, device=self.device), "sum").item())
        work: list[tuple[str, list[Any]]] = [  # Items (sft, pg) or on-policy Samples: both batch by `ids`
            (name, micro)
            for name in ("sft", "pg")
            if planned[name] and self.weights[name] > 0
            for micro in micro_batches(self._my_share(planned[name]), self.cfg.micro_batch_tokens)
        ]
        if not mine_idle:
            work += [("on_policy", micro) for micro in micro_batches(samples, self.cfg.micro_batch_tokens)]
        idle = not work  # this rank has no share this step: a zero-weight pass keeps DDP's gradient sync in step
        if idle:
            if samples:
                work = [("on_policy", samples[:1])]
            else:
                first = next(name for name in ("sft", "pg") if planned[name])
                work = [(first, planned[first][:1])]
        sums = {"sft": 0.0, "pg": 0.0, "distill": 0.0, "on_policy": 0.0}
        for i, (name, micro) in enumerate(work):
            distill = name == "sft" and self.cfg.distill_weight > 0
            sync = i == len(work) - 1
            self._checkpoint_activations(max(len(it.ids) for it in micro) > self.cfg.recompute_above_tokens)
            with nullcontext() if sync else self.accelerator.no_sync(self.model):
                if name == "on_policy":
                    ce = divergence_sum(self.model, micro, self.pad_id, self.device, self.cfg.on_policy.beta)
                    loss, kl = ce * self.cfg.on_policy.weight / max(1, counts[name]), None
                else:
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
        reduced = self.accelerator.reduce(torch.tensor([sums[k] for k in _SUMS], device=self.device), "sum")
        return self._losses(dict(zip(_SUMS, reduced.tolist())), counts) | {"learning_rate": lr}

    def _losses(self, sums: dict[str, float], counts: dict[str, int]) -> dict[str, float | None]:
        sft = sums["sft"] / counts["sft"] if counts.get("sft") and self.weights["sft"] > 0 else None
        pg = sums["pg"] / counts["pg"] if counts.get("pg") and self.weights["pg"] > 0 else None
        distill = sums["distill"] / counts["sft"] if sft is not None and self.cfg.distill_weight > 0 else None
        on_policy = sums["on_policy"] / counts["on_policy"] if counts.get("on_policy") else None
        joint = sum(self.weights[n] * v for n, v in (("sft", sft), ("pg", pg)) if v is not None)
        if distill is not None:
            joint += self.cfg.distill_weight * distill
        if on_policy is not None:
            joint += self.cfg.on_policy.weight * on_policy
        return {"loss": joint, "sft_loss": sft, "pg_loss": pg, "distill_loss": distill, "on_policy_loss": on_policy}

    @torch.no_grad()
    def validate(self, include_pg: bool = True) -> dict[str, float | None] | None:
        """Validation losses. PG is validated on the final pass only when SFT is on: each PG example
        holds the whole prompt, and the SFT loss is what tracks the behaviour (and early stopping)."""
        if not any(self.val_items.values()):
            return None
        model = self._peft_model()  # not the DDP wrapper: no collective ops, whatever each rank's share
        model.eval()
        sums, counts = {"sft": 0.0, "pg": 0.0}, {}
        for name, items in self.val_items.items():
            if name == "pg" and not include_pg and self.val_items["sft"]:
                continue
            counts[name] = target_tokens(items)
            for micro in micro_batches(self._my_share(items), self.cfg.micro_batch_tokens):
                sums[name] += loss_sums(model, micro, self.pad_id, self.device)[0].item()
        model.train()
        reduced = self.accelerator.reduce(torch.tensor([sums["sft"], sums["pg"], 0.0, 0.0], device=self.device), "sum")
        return self._losses(dict(zip(_SUMS, reduced.tolist())), counts)

    def _after_validation(self, val: dict) -> None:
        if self.cfg.early_stopping_patience is None:
            return
        watched = val["sft_loss"] if val["sft_loss"] is not None else val["loss"]
        if self.best_val is None or watched < self.best_val:
            self.best_val, self.bad_evals, self.best_state = watched, 0, self._adapter_state()
        else:
            self.bad_evals += 1
            self.stopped_early = self.bad_evals >= self.cfg.early_stopping_patience

    def snapshot_steps(self) -> set[int]:
        """The steps after which the adapter is kept (``train.snapshots`` evenly spaced, the last one included)."""
        n = self.cfg.snapshots
        return {max(1, round(self.plan.total * k / n)) for k in range(1, n + 1)} if n else set()

    def save_snapshot(self) -> None:
        """The adapter as it is now, in ``_state/snapshots/step-<step>/`` (peft folder), to evaluate later."""
        if self.accelerator.is_main_process:
            with atomic_dir(self.snapshot_dir / f"step-{self.step:06d}") as tmp:
                self._peft_model().save_pretrained(tmp)
                atomic_write_json(tmp / SNAPSHOT_INFO, {"step": self.step, "elapsed_s": round(self.elapsed_s, 2)})
        self.accelerator.wait_for_everyone()

    def fit(self, on_step=None) -> None:
        spe = self.plan.steps_per_epoch
        snapshots = self.snapshot_steps()
        with tqdm(
            total=self.plan.total,
            initial=self.step,
            desc="train",
            unit="step",
            leave=False,
            disable=not self.accelerator.is_main_process,
        ) as bar:
            while self.step < self.plan.total and not self.stopped_early:
                started = time.perf_counter()
                losses = self.train_step()
                self.step += 1
                self.elapsed_s += time.perf_counter() - started
                row = {"step": self.step, "epoch": self.step / spe, "split": "train", **losses}
                self.log.append(row | {"elapsed_s": round(self.elapsed_s, 2)})
                bar.set_postfix(loss=f"{losses['loss']:.3f}")
                bar.update()
                if self.step % spe == 0 or self.step == self.plan.total:
                    val = self.validate(include_pg=self.step == self.plan.total)
                    if val is not None:
                        self.log.append(
                            {"step": self.step, "epoch": self.step / spe, "split": "val", **val, "learning_rate": 0.0}
                            | {"elapsed_s": round(self.elapsed_s, 2)}
                        )
                        self._after_validation(val)
                if self.step in snapshots:
                    self.save_snapshot()
                if self.step % self.cfg.checkpoint_every == 0 or self.step % spe == 0:
                    self.save_checkpoint()
                if on_step is not None:
                    on_step(self.step)
        if self.best_state is not None:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self._peft_model(), self.best_state)  # early stopping keeps the best adapter

"""Stage 3: validate generations and build the dataset splits.

Reads: inputs.parquet, targets.parquet (one row per agent turn of every role-swapped episode) and,
when reasons ran, reasons.parquet. Writes: train/val/test.parquet and quarantine.parquet.
Every usable agent turn becomes one SFT example: its context without the prompt, and the teacher's
turn as the target (the same token losses as one conversation-level example with loss on every agent
turn). Every conversation whose first turn is usable also gets one PG example: the meta-question
(input, base output, teacher output) -> the prompt verbatim, with its reason kept alongside for the
"joint with reasons" objective (prompt_generation.py). A teacher turn is unusable
when empty, cut at the length cap, or (when ``require_teacher_checks``) failing the spec's global
checks; each such row goes to quarantine with the reason. Splits are by conversation, so turns of
one episode never straddle train and val. ``test`` is the spec's held-out eval inputs, which no
training stage ever reads.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from genpi_core.prompt.checks import run_checks
from genpi_core.prompt.pg_format import pg_question, pg_target
from genpi_core.store.tables import (
    empty_quarantine,
    partition_valid,
    quarantine_rows,
    read_table,
    write_table,
)
from schemas.artifacts import QUARANTINE_FILE, TEST_FILE, TRAIN_FILE, VAL_FILE
from schemas.config import DatasetConfig, InputsConfig
from schemas.datasets import (
    ExamplesSchema,
    HeldOutSchema,
    InputsSchema,
    QuarantineSchema,
    ReasonsSchema,
    TargetsSchema,
)
from schemas.spec import PromptSpec


def _teacher_problems(spec: PromptSpec, cfg: DatasetConfig, row: pd.Series) -> str:
    if not row["teacher_output"].strip():
        return "empty teacher reply"
    if row["teacher_finish"] == "length":
        return "teacher reply truncated at the length cap"
    if cfg.require_teacher_checks and spec.checks:
        failed = [name for name, ok in run_checks(spec.checks, row["teacher_output"]).items() if not ok]
        if failed:
            return "teacher reply fails checks: " + ", ".join(failed)
    return ""


def eval_inputs_problem(spec: PromptSpec, cfg: InputsConfig) -> str | None:
    """Why this spec, with these input settings, would leave nothing to evaluate on (None when it would not).

    Held-out inputs are the spec's ``inputs.eval``, else a fifth of the inputs (the split needs two at least, one
    to train on): generated ones, or the pool's."""
    if spec.inputs.eval:
        return None
    generates = cfg.source != "pool" and cfg.num_generated > 0
    pool = 0 if cfg.source == "generate" else len(spec.inputs.pool)
    if generates or pool >= 2:
        return None
    return (
        f"inputs.eval: empty, and no held-out inputs can be split off: synth.inputs.source={cfg.source} with "
        f"{pool} pool input(s) (a split needs 2 or more). Add inputs.eval, more inputs.pool, or set "
        "synth.inputs.source=generate"
    )


def _test_split(spec: PromptSpec, held_out_pool: list[str]) -> pd.DataFrame:
    if spec.inputs.eval:
        items = [(e.text, e.facts, "spec_eval") for e in spec.inputs.eval]
    else:  # no hand-written eval set: hold out part of the pool instead (checked with global rules only)
        items = [(t, [], "pool_split") for t in held_out_pool]
    return pd.DataFrame(
        {
            "example_id": [f"test-{i:04d}" for i in range(len(items))],
            "input": [t for t, _, _ in items],
            "facts": [json.dumps(f, ensure_ascii=False) for _, f, _ in items],
            "source": [s for _, _, s in items],
        }
    )


def _pg_examples(spec: PromptSpec, sft: pd.DataFrame, reasons: pd.DataFrame | None) -> pd.DataFrame:
    """One prompt-generation example per conversation whose first agent turn is usable."""
    first = sft[sft["turn"] == 0]
    reason_of = dict(zip(reasons["conversation_id"], reasons["reason"])) if reasons is not None else {}
    target = pg_target(spec.prompt)
    inputs = [json.loads(c)[-1]["content"] for c in first["context"]]
    return pd.DataFrame(
        {
            "example_id": first["conversation_id"] + ":pg",
            "conversation_id": first["conversation_id"],
            "objective": "pg",
            "messages": [
                json.dumps(pg_question(i, b, t), ensure_ascii=False)
                for i, b, t in zip(inputs, first["base_output"], first["teacher_output"])
            ],
            "target": target,
            "reason": [reason_of.get(c, "") for c in first["conversation_id"]],
            "weight": 1.0,
        }
    )


def run_dataset(
    spec: PromptSpec,
    cfg: DatasetConfig,
    inputs_path: Path,
    targets_path: Path,
    out_dir: Path,
    reasons_path: Path | None = None,
) -> dict[str, int]:
    """SFT examples (one per usable agent turn) and PG examples (one per conversation), split by conversation."""
    inputs = read_table(inputs_path, InputsSchema)
    targets = read_table(targets_path, TargetsSchema)
    reasons = read_table(reasons_path, ReasonsSchema) if reasons_path is not None else None
    quarantine = [empty_quarantine()]
    problems = (
        targets.apply(lambda row: _teacher_problems(spec, cfg, row), axis=1) if len(targets) else pd.Series(dtype=str)
    )
    bad = problems != ""
    keyed = targets.assign(row_key=targets["conversation_id"] + ":" + targets["turn"].astype(str))
    quarantine.append(quarantine_rows("targets", keyed[bad], "row_key", problems[bad]))
    usable = keyed[~bad]
    sft = pd.DataFrame(
        {
            "example_id": usable["row_key"],
            "conversation_id": usable["conversation_id"],
            "objective": "sft",
            "messages": usable["context"],
            "target": usable["teacher_output"],
            "reason": "",
            "weight": 1.0,
        }
    )
    pg = _pg_examples(spec, usable, reasons)
    examples = pd.concat([sft, pg], ignore_index=True)
    examples, bad_rows = partition_valid(examples, ExamplesSchema, "examples", "example_id")
    quarantine.append(bad_rows)
    conversation = examples["conversation_id"]

    held_out_pool = [] if spec.inputs.eval else list(inputs["text"].iloc[: max(1, len(inputs) // 5)])
    if held_out_pool:  # no hand-written eval set: keep the pool-split test inputs out of training
        held = {f"c-{i}" for i in inputs["input_id"].iloc[: len(held_out_pool)]}
        examples, conversation = examples[~conversation.isin(held)], conversation[~conversation.isin(held)]
    ids = sorted(set(conversation))
    random.Random(cfg.seed).shuffle(ids)
    n_val = int(round(len(ids) * cfg.val_fraction)) if len(ids) > 1 else 0
    in_val = conversation.isin(set(ids[:n_val]))
    train, val = examples[~in_val], examples[in_val]
    if train.empty:
        raise ValueError(
            f"no usable training examples: all {len(targets)} teacher turns were quarantined "
            f"(see {out_dir / QUARANTINE_FILE}); try more inputs or dataset.require_teacher_checks=false"
        )
    rows = {
        "train": write_table(train, ExamplesSchema, out_dir / TRAIN_FILE),
        "val": write_table(val, ExamplesSchema, out_dir / VAL_FILE),
        "test": write_table(_test_split(spec, held_out_pool), HeldOutSchema, out_dir / TEST_FILE),
    }
    rows["train_pg"], rows["val_pg"] = int((train["objective"] == "pg").sum()), int((val["objective"] == "pg").sum())
    rows["pg_with_reason"] = int(((train["objective"] == "pg") & (train["reason"] != "")).sum())
    rows["quarantined"] = write_table(
        pd.concat(quarantine, ignore_index=True), QuarantineSchema, out_dir / QUARANTINE_FILE
    )
    return rows

"""Stage 2: synthesize training data from the prompt alone (skeleton: single-turn).

Reads: the ingested spec. Writes: ``inputs/inputs.parquet`` (+ quarantine) and
``teacher/replies.parquet`` / ``base/replies.parquet``: for every input, one reply from the model
*with* the prompt (teacher) and one *without* it (base), each in a single batched call.
Input columns (replies): input_id, text. Output columns: see schemas.datasets.RepliesSchema.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Literal

import pandas as pd

from genpi_core.chat import prompt_messages, user_turn, with_prompt, without_prompt
from genpi_core.generation.base import GenerationBackend
from genpi_core.tables import empty_quarantine, partition_valid, quarantine_rows, read_table, write_table
from schemas.config import InputsConfig, SamplingConfig
from schemas.datasets import QUARANTINE_FILE, REPLIES_FILE, InputsSchema, QuarantineSchema, RepliesSchema
from schemas.spec import PromptSpec

_META_TEXT = re.compile(r"\b(?:the assistant|as an ai|the user (?:will|might|should)|system prompt)\b", re.IGNORECASE)
_MAX_INPUT_CHARS = 1000


def dedup_key(text: str) -> str:
    """Case- and whitespace-insensitive key; exact duplicates after normalization share it."""
    return re.sub(r"\s+", " ", text.strip().lower())


def _input_id(text: str) -> str:
    return hashlib.sha256(dedup_key(text).encode()).hexdigest()[:16]


def _generator_request(spec: PromptSpec, seeds: list[str]) -> list[dict]:
    prompt_text = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in prompt_messages(spec.prompt))
    examples = "\n".join(f"- {s}" for s in seeds) or "- (none given)"
    ask = (
        f"An assistant works with this prompt:\n\n{prompt_text}\n\n"
        f"It talks to: {spec.environment}\n\nExample messages it receives:\n{examples}\n\n"
        "Write ONE new, realistic message that it could receive next. Reply with the message only."
    )
    return [{"role": "user", "content": ask}]


def _generate_inputs(spec: PromptSpec, cfg: InputsConfig, backend: GenerationBackend) -> pd.DataFrame:
    rng = random.Random(cfg.sampling.seed)
    pool = spec.seed_inputs or spec.inputs.pool
    requests = [_generator_request(spec, rng.sample(pool, min(5, len(pool)))) for _ in range(cfg.num_generated)]
    completions = backend.generate(requests, cfg.sampling, desc="pseudo inputs")
    texts = [c.text.strip().strip('"').strip() for c in completions]
    return pd.DataFrame({"text": texts, "source": "generated", "generator": backend.name,
                         "finish_reason": [c.finish_reason for c in completions]})


def _filter_generated(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    reasons = pd.Series("", index=df.index)
    reasons[df["text"].str.len() == 0] = "empty"
    reasons[(reasons == "") & (df["finish_reason"] == "length")] = "truncated at the length cap"
    reasons[(reasons == "") & (df["text"].str.len() > _MAX_INPUT_CHARS)] = f"longer than {_MAX_INPUT_CHARS} chars"
    reasons[(reasons == "") & df["text"].str.contains(_META_TEXT)] = "meta text about the assistant, not a user message"
    bad = reasons != ""
    df = df.assign(row_key=df.index.astype(str))
    return df[~bad].drop(columns=["finish_reason", "row_key"]), quarantine_rows("inputs", df[bad], "row_key", reasons[bad])


def run_inputs(
    spec: PromptSpec, version: str, cfg: InputsConfig, backend: GenerationBackend | None, out_dir: Path
) -> dict[str, int]:
    """Write inputs.parquet (pool and/or generated, deduplicated) and quarantine.parquet."""
    frames, quarantined = [], [empty_quarantine()]
    if cfg.source in ("generate", "both") and cfg.num_generated:
        if backend is None:
            raise ValueError("inputs.source needs a generation backend to generate pseudo inputs")
        good, bad = _filter_generated(_generate_inputs(spec, cfg, backend))
        frames.append(good)
        quarantined.append(bad)
    if cfg.source in ("pool", "both"):
        pool = list(spec.inputs.pool)
        random.Random(0).shuffle(pool)  # the pool is often written topic by topic; spread the cap across topics
        frames.append(pd.DataFrame({"text": pool, "source": "pool", "generator": "spec"}))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["text", "source", "generator"])
    df["dedup_key"] = df["text"].map(dedup_key)
    dup = df.duplicated("dedup_key")
    quarantined.append(quarantine_rows("inputs", df[dup], "dedup_key", "exact duplicate of an earlier input"))
    df = df[~dup]
    # generated inputs come first; the pool tops up to max_inputs. Surplus generated rows are recorded, not lost.
    surplus = df.iloc[cfg.max_inputs:]
    quarantined.append(quarantine_rows("inputs", surplus[surplus["source"] == "generated"], "dedup_key",
                                       f"over synth.inputs.max_inputs={cfg.max_inputs}"))
    df = df.iloc[: cfg.max_inputs]
    df = df.assign(prompt_version=version, input_id=df["text"].map(_input_id))
    good, bad = partition_valid(df, InputsSchema, "inputs", "input_id")
    quarantined.append(bad)
    if good.empty:
        raise ValueError("no usable inputs: add `inputs.pool` to the spec or enable generation (synth.inputs.source)")
    rows = write_table(good, InputsSchema, out_dir / "inputs.parquet")
    n_bad = write_table(pd.concat(quarantined, ignore_index=True), QuarantineSchema, out_dir / QUARANTINE_FILE)
    return {"inputs": rows, "quarantined": n_bad, "generated": int((good["source"] == "generated").sum())}


def run_replies(
    variant: Literal["teacher", "base"],
    spec: PromptSpec,
    inputs_path: Path,
    sampling: SamplingConfig,
    backend: GenerationBackend,
    out_dir: Path,
) -> dict[str, int]:
    """One reply per input, all inputs in one batched call: with the prompt (teacher) or without (base)."""
    inputs = read_table(inputs_path, InputsSchema)
    contexts = [user_turn(t) for t in inputs["text"]]
    view = (lambda c: with_prompt(spec.prompt, c)) if variant == "teacher" else without_prompt
    completions = backend.generate([view(c) for c in contexts], sampling, desc=f"{variant} replies")
    df = pd.DataFrame(
        {
            "input_id": inputs["input_id"],
            "variant": variant,
            "context": [json.dumps(c, ensure_ascii=False) for c in contexts],
            "output": [c.text for c in completions],
            "finish_reason": [c.finish_reason for c in completions],
            "prompt_tokens": [c.prompt_tokens for c in completions],
            "completion_tokens": [c.completion_tokens for c in completions],
            "produced_by": backend.name,
        }
    )
    rows = write_table(df, RepliesSchema, out_dir / REPLIES_FILE)
    return {"replies": rows, "truncated": int((df["finish_reason"] == "length").sum())}

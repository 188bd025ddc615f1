"""Stage 2c: reasons. Reads: targets.parquet (first agent turn of each conversation). Writes:
``reasons.parquet`` and ``quarantine.parquet``.

For each example the generator sees the prompt, the input, the output without the prompt (as-is)
and with it (to-be), and explains in a few sentences why the prompt changes the answer, citing
the prompt (docs/method.md). The prompt comes first in every request, so the transformers backend
prefills it once for the whole batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from genpi_core.generation.base import GenerationBackend, Message
from genpi_core.prompt.checks import has_control_tokens, is_repetitive
from genpi_core.prompt.views import render_prompt
from genpi_core.store.tables import (
    empty_quarantine,
    quarantine_rows,
    read_table,
    write_table,
)
from schemas.artifacts import QUARANTINE_FILE, REASONS_FILE
from schemas.config import SamplingConfig
from schemas.datasets import QuarantineSchema, ReasonsSchema, TargetsSchema
from schemas.spec import PromptSpec


def reason_request(spec: PromptSpec, user_input: str, as_is: str, to_be: str) -> list[Message]:
    ask = (
        f"Here is a prompt given to an assistant:\n\n{render_prompt(spec.prompt)}\n\n"
        f"A user wrote: {user_input}\n\n"
        f"Without the prompt, the assistant answered:\n{as_is}\n\n"
        f"With the prompt, it answered:\n{to_be}\n\n"
        "In at most four short sentences, explain why the prompt changes the answer in this way. "
        "Quote the parts of the prompt that cause each change."
    )
    return [{"role": "user", "content": ask}]


def run_reasons(
    spec: PromptSpec, targets_path: Path, backend: GenerationBackend, sampling: SamplingConfig, out_dir: Path
) -> dict[str, int]:
    targets = read_table(targets_path, TargetsSchema)
    first = targets[targets["turn"] == 0].reset_index(drop=True)
    inputs = [json.loads(c)[-1]["content"] for c in first["context"]]
    requests = [reason_request(spec, i, b, t) for i, b, t in zip(inputs, first["base_output"], first["teacher_output"])]
    out = backend.generate(requests, sampling, desc="reasons")
    df = pd.DataFrame(
        {
            "conversation_id": first["conversation_id"],
            "turn": 0,
            "reason": [c.text for c in out],
            "produced_by": backend.name,
        }
    )
    problems = pd.Series(
        [
            "empty reason"
            if not c.text.strip()
            else "reason truncated at the length cap"
            if c.finish_reason == "length"
            else "reason contains chat-template control tokens"
            if has_control_tokens(c.text)
            else "repetitive reason"
            if is_repetitive(c.text)
            else ""
            for c in out
        ]
    )
    bad = problems != ""
    quarantine = pd.concat(
        [empty_quarantine(), quarantine_rows("reasons", df[bad], "conversation_id", problems[bad])], ignore_index=True
    )
    return {
        "reasons": write_table(df[~bad], ReasonsSchema, out_dir / REASONS_FILE),
        "quarantined": write_table(quarantine, QuarantineSchema, out_dir / QUARANTINE_FILE),
    }

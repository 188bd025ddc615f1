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

from genpi_core.generation.base import Completion, GenerationBackend, Message
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


def _problem(reply: Completion) -> str:
    if not reply.text.strip():
        return "empty reason"
    if reply.finish_reason == "length":
        return "reason truncated at the length cap"
    if has_control_tokens(reply.text):
        return "reason contains chat-template control tokens"
    return "repetitive reason" if is_repetitive(reply.text) else ""


def run_reasons(
    spec: PromptSpec,
    targets_path: Path,
    backend: GenerationBackend,
    sampling: SamplingConfig,
    out_dir: Path,
    reuse: dict[tuple[str, str, str], tuple[str, str]] | None = None,
) -> dict[str, int]:
    """One reason per first agent turn. ``reuse`` (incremental runs): the parent's reason is kept wherever the
    context and both replies are the parent's, so only the examples the edit changed are asked about again."""
    targets = read_table(targets_path, TargetsSchema)
    first = targets[targets["turn"] == 0].reset_index(drop=True)
    keys = list(zip(first["context"], first["base_output"], first["teacher_output"]))
    ask = [i for i, k in enumerate(keys) if reuse is None or k not in reuse]
    inputs = [json.loads(first["context"][i])[-1]["content"] for i in ask]
    requests = [reason_request(spec, x, keys[i][1], keys[i][2]) for x, i in zip(inputs, ask)]
    out = backend.generate(requests, sampling, desc="reasons") if requests else []
    kept = reuse or {}
    reasons = [kept[k][0] if k in kept else "" for k in keys]
    produced = [kept[k][1] if k in kept else backend.name for k in keys]
    problems = [""] * len(keys)
    for i, reply in zip(ask, out):
        reasons[i], problems[i] = reply.text, _problem(reply)
    df = pd.DataFrame(
        {"conversation_id": first["conversation_id"], "turn": 0, "reason": reasons, "produced_by": produced}
    )
    bad = pd.Series(problems) != ""
    quarantine = pd.concat(
        [empty_quarantine(), quarantine_rows("reasons", df[bad], "conversation_id", pd.Series(problems)[bad])],
        ignore_index=True,
    )
    rows = {
        "reasons": write_table(df[~bad], ReasonsSchema, out_dir / REASONS_FILE),
        "quarantined": write_table(quarantine, QuarantineSchema, out_dir / QUARANTINE_FILE),
    }
    if reuse is not None:  # an incremental run: say how much of the parent's work it kept
        rows |= {"reasons_reused": len(keys) - len(ask), "reasons_generated": len(ask)}
    return rows

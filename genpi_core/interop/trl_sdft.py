"""genpi's training contexts in the dataset format of TRL's SDFTTrainer (trl 1.16), and back.

TRL's self-distillation trainer (``trl.experimental.sdft``) reads two columns: ``prompt``, the student's
conversation as chat messages ending with a user turn, and ``privileged_context``, text only the teacher
sees. Here each row is one of genpi's SFT contexts (single-turn or role-swapped multi-turn, from
``dataset/train.parquet``), the privileged context is the internalized prompt as text (the same
rendering prompt generation learns to write), and two more columns ride along: ``completion`` (the
teacher's reply genpi trained on, in TRL's conversational prompt-completion form) and ``example_id``,
so the import can rebuild the examples table.

One difference to know: TRL's teacher reads the prompt *after* the question, inside the last user turn
(``teacher_prompt_template``, default "{prompt}\\n\\n{privileged_context}"), while genpi's teacher reads it
before the conversation, as its first turns. Both are the base model with the adapter off.

TRL is an optional extra (``pip install genpi[trl]``); nothing here imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genpi_core.prompt.pg_format import pg_target
from genpi_core.store.stage import atomic_write_bytes
from genpi_core.store.tables import read_table, validate
from schemas.datasets import ExamplesSchema
from schemas.spec import PromptBody

SDFT_FILE = "sdft.parquet"
_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SDFT_SCHEMA = pa.schema(
    [
        ("prompt", _MESSAGES),
        ("privileged_context", pa.string()),
        ("completion", _MESSAGES),
        ("example_id", pa.string()),
        ("conversation_id", pa.string()),
    ]
)


class SdftFormatError(ValueError):
    """A file that is not a genpi/TRL SDFT table; the message names the file, the row and the field."""


def export_sdft(examples_path: Path, prompt: PromptBody, out_path: Path) -> int:
    """Write the SFT rows of an examples table as an SDFT dataset (Parquet); returns the row count."""
    examples = read_table(examples_path, ExamplesSchema)
    context = pg_target(prompt)
    rows = [
        {
            "prompt": json.loads(row.messages),
            "privileged_context": context,
            "completion": [{"role": "assistant", "content": row.target}],
            "example_id": row.example_id,
            "conversation_id": row.conversation_id,
        }
        for row in examples.itertuples()
        if row.objective == "sft"
    ]
    if not rows:
        raise ValueError(f"{examples_path}: no SFT rows to export (objective = 'sft')")
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=SDFT_SCHEMA), sink)
    atomic_write_bytes(out_path, sink.getvalue().to_pybytes())
    return len(rows)


def import_sdft(path: Path) -> tuple[pd.DataFrame, str]:
    """An SDFT dataset back into genpi's examples table (SFT rows) and its one privileged context.

    Rows without ``example_id``/``completion`` (a dataset made elsewhere) are refused: genpi trains on a
    reply per context. Every row must carry the same privileged context, since an adapter internalizes
    one prompt."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise SdftFormatError(f"{path}: not a readable Parquet file ({exc})") from exc
    missing = [c for c in SDFT_SCHEMA.names if c not in table.column_names]
    if missing:
        raise SdftFormatError(f"{path}: missing column(s) {missing}; an SDFT export has {SDFT_SCHEMA.names}")
    records, contexts, out = table.to_pylist(), set(), []
    for i, row in enumerate(records):
        where = f"{path}: row {i} ({row.get('example_id')!r})"
        prompt, completion = row["prompt"] or [], row["completion"] or []
        if not prompt or prompt[-1].get("role") != "user":
            raise SdftFormatError(f"{where}: field `prompt` must be chat messages ending with a user turn")
        if len(completion) != 1 or completion[0].get("role") != "assistant":
            raise SdftFormatError(f"{where}: field `completion` must be one assistant message")
        if not isinstance(row["privileged_context"], str) or not row["privileged_context"].strip():
            raise SdftFormatError(f"{where}: field `privileged_context` must be non-empty text")
        contexts.add(row["privileged_context"])
        out.append(
            {
                "example_id": row["example_id"],
                "conversation_id": row["conversation_id"],
                "objective": "sft",
                "messages": json.dumps([{"role": m["role"], "content": m["content"]} for m in prompt]),
                "target": completion[0]["content"],
                "reason": "",
                "weight": 1.0,
            }
        )
    if len(contexts) > 1:
        raise SdftFormatError(
            f"{path}: field `privileged_context` holds {len(contexts)} different prompts; one adapter internalizes one"
        )
    if not out:
        raise SdftFormatError(f"{path}: no rows")
    return validate(pd.DataFrame(out), ExamplesSchema, str(path)), contexts.pop()

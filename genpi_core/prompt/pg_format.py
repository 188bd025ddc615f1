"""GenPI's prompt-generation (PG) examples: from an input and the outputs without and with the prompt,
generate the prompt itself, verbatim, then the reason the prompt changes the output (docs/method.md).

PG = -log P(prompt, reason | input, as-is output, to-be output). Training on it makes the adapter
hold the prompt's *content*, not only the teacher's surface behaviour. The target is the full
prompt: it is checked against train.max_seq_len and never cut (the research code cut every target
at 512 tokens, losing the end of long prompts and the whole reason).
"""

from __future__ import annotations

from genpi_core.generation.base import Message
from genpi_core.prompt.views import render_prompt
from schemas.spec import PromptBody

REASON_HEADER = "Why it changes the answer:"


def pg_question(user_input: str, as_is: str, to_be: str) -> list[Message]:
    """The meta-question the student answers with the prompt and the reason."""
    ask = (
        f"A user wrote: {user_input}\n\n"
        f"Without any context, the assistant answered:\n{as_is}\n\n"
        f"With its context, the assistant answered:\n{to_be}\n\n"
        "Write out the context (the prompt) that turned the first answer into the second, word for word, "
        "then explain why it changes the answer."
    )
    return [{"role": "user", "content": ask}]


def pg_target(prompt: PromptBody) -> str:
    """The prompt verbatim, its turns labelled as in every meta-request that quotes it."""
    return render_prompt(prompt)


def with_reason(target: str, reason: str | None) -> str:
    """A PG target followed by the reason, when there is one (the "joint with reasons" objective)."""
    if reason and reason.strip():
        return f"{target}\n\n{REASON_HEADER}\n{reason.strip()}"
    return target

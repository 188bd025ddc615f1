"""How a conversation is shown to the model *with* and *without* the prompt. Defined once, used everywhere.

"Without the prompt" means the conversation alone, with no system message: whatever the model's
chat template does then (SmolLM2's inserts its own default system line) is the baseline, identically
for the base model, the student in training and the student in evaluation. How a view becomes token
ids is ``genpi_core.generation.chat_template``.
"""

from __future__ import annotations

from collections.abc import Sequence

from genpi_core.generation.base import Message
from schemas.spec import PromptBody


def prompt_messages(prompt: PromptBody) -> list[Message]:
    """The prompt as chat messages: optional system text, then the few-shot dialogue turns."""
    messages: list[Message] = []
    if prompt.system and prompt.system.strip():
        messages.append({"role": "system", "content": prompt.system})
    for turn in prompt.dialogue or []:
        messages.append({"role": turn.role, "content": turn.text})
    return messages


def render_prompt(prompt: PromptBody) -> str:
    """The prompt as plain text with labelled turns, for meta-requests that quote it (inputs, reasons)."""
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in prompt_messages(prompt))


def with_prompt(prompt: PromptBody, conversation: Sequence[Message]) -> list[Message]:
    """Teacher view: the prompt, then the conversation."""
    return prompt_messages(prompt) + list(conversation)


def without_prompt(conversation: Sequence[Message]) -> list[Message]:
    """Base/student view: the conversation alone (the template's default system message applies)."""
    return list(conversation)


def user_turn(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


def input_message(prompt: PromptBody, text: str) -> str:
    """A user input as its user message: the prompt's ``input_prefix`` (if any), a blank line, the input.

    The same for teacher, base and student, as in the research code (its OS prompt ends "Now, I will start a
    new problem in a new OS. My problem is:" and every input follows it).
    """
    return f"{prompt.input_prefix}\n\n{text}" if prompt.input_prefix else text


def input_turn(prompt: PromptBody, text: str) -> list[Message]:
    """The first user turn of a conversation that starts from a user input: use it wherever an input (pseudo,
    pool or held-out) becomes the first user message, so the prefix is applied in one way everywhere."""
    return user_turn(input_message(prompt, text))

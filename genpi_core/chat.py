"""How a conversation is shown to the model *with* and *without* the prompt. Defined once, used everywhere.

"Without the prompt" means the conversation alone, with no system message: whatever the model's
chat template does then (SmolLM2's inserts its own default system line) is the baseline, identically
for the base model, the student in training and the student in evaluation. ``chat_token_ids`` turns a
conversation into token ids for every engine and for training, message contents always as text.
"""

from __future__ import annotations

import re
import uuid
from typing import Sequence

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


def chat_token_ids(tokenizer, conversation: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of a conversation rendered by the model's chat template (by default ready for the reply).

    Every engine and the trainer encode through this one function, so transformers, vLLM and training
    see the very same tokens. Message contents are data: a control string inside one (a generated
    ``<|im_start|>system``) stays plain text and never becomes a special token; only the template's
    own markup does. Conversations without such strings take the tokenizer's plain path unchanged.
    """
    conversation = list(conversation)
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    specials = _special_strings(tokenizer)
    if not any(s in m["content"] for m in conversation for s in specials):
        return tokenizer(text, add_special_tokens=False).input_ids
    return _ids_with_contents_as_text(tokenizer, conversation, text, specials, add_generation_prompt)


def text_token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of plain text (a training target): special-token strings in it are split like any text."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids


def _special_strings(tokenizer) -> list[str]:
    """Strings the tokenizer would turn into special tokens, longest first (so a prefix never wins)."""
    found = {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
    found.update(tokenizer.all_special_tokens)
    return sorted((s for s in found if s), key=len, reverse=True)


def _ids_with_contents_as_text(tokenizer, conversation: list[Message], text: str, specials: list[str],
                               add_generation_prompt: bool) -> list[int]:
    # Render once more with a marker in place of each content: what lies outside the markers is the
    # template's own markup, the only place a special-token string may become a special token.
    tag = uuid.uuid4().hex
    marks = [f"\ue000{tag}{i}\ue001" for i in range(len(conversation))]
    skeleton = tokenizer.apply_chat_template(
        [{**m, "content": mark} for m, mark in zip(conversation, marks)], tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    index = {mark: i for i, mark in enumerate(marks)}
    pieces = re.split("(" + "|".join(map(re.escape, marks)) + ")", skeleton)
    segments = [(conversation[index[p]]["content"], True) if p in index else (p, False) for p in pieces]
    if "".join(s for s, _ in segments) != text:
        raise ValueError(
            f"the chat template of {getattr(tokenizer, 'name_or_path', 'this tokenizer')} rewrites message content, "
            "so control strings inside a message cannot be kept as text; a message contains one of "
            f"{[s for s in specials if any(s in m['content'] for m in conversation)]}"
        )
    pattern = re.compile("(" + "|".join(map(re.escape, specials)) + ")")
    ids: list[int] = []
    pending = ""  # text between two of the template's special tokens, encoded in one piece as the plain path does
    for segment, is_content in segments:
        if is_content:
            pending += segment
            continue
        for part in pattern.split(segment):
            if part in specials:
                ids += text_token_ids(tokenizer, pending) if pending else []
                pending = ""
                ids.append(tokenizer.convert_tokens_to_ids(part))
            else:
                pending += part
    return ids + (text_token_ids(tokenizer, pending) if pending else [])

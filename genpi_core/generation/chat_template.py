"""Conversations to token ids, through the model's chat template: one encoder for every engine and training.

transformers, vLLM and the trainer all call ``chat_token_ids``, so each sees the very same tokens, and
message contents always stay text (a control string inside a message never becomes a special token).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from genpi_core.generation.base import Message


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


def _ids_with_contents_as_text(
    tokenizer, conversation: list[Message], text: str, specials: list[str], add_generation_prompt: bool
) -> list[int]:
    # Render once more with a marker in place of each content: what lies outside the markers is the
    # template's own markup, the only place a special-token string may become a special token.
    tag = uuid.uuid4().hex
    marks = [f"\ue000{tag}{i}\ue001" for i in range(len(conversation))]
    skeleton = tokenizer.apply_chat_template(
        [{**m, "content": mark} for m, mark in zip(conversation, marks)],
        tokenize=False,
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

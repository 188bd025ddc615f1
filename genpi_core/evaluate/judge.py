"""Optional LLM judge: a model (the teacher's by default) grades how well a reply follows the prompt, 1 to 5.

The judge sees the rubric, the full prompt, the user's message and the reply, and answers
"Score: N" and one sentence. ``parse_score`` reads N out of whatever the judge wrote; a reply
without a readable score is kept with ``score = None`` and counted, never guessed.

Output columns (``JudgeSchema``): variant, example_id, score (1-5 or null), raw.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

from genpi_core.generation.base import Completion, Message
from genpi_core.prompt.views import render_prompt
from schemas.spec import PromptBody

RUBRIC = """\
Score how well the assistant's reply follows the instructions it was given (its prompt), from 1 to 5:
5 = follows every rule, format and fact in the prompt that applies to this message;
4 = follows the prompt with one small slip (a minor format or wording deviation);
3 = partly follows it: the right kind of answer, but a rule or the format is broken;
2 = mostly ignores the prompt: wrong format and wrong or invented facts;
1 = ignores the prompt entirely, or the reply is empty, garbled or off topic."""

_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_NUM = r"([1-5](?:\.\d+)?(?!\d)|(?:one|two|three|four|five)\b)"
_PATTERNS = [
    re.compile(rf"score\W{{0,6}}{_NUM}", re.IGNORECASE),  # Score: 4 / **Score**: 4 / score = 4
    re.compile(rf"\b{_NUM}\s*(?:/|out of)\s*5\b", re.IGNORECASE),  # 4/5, 4 out of 5
    re.compile(rf"\b(?:rate|rating|grade|give)\w*\W+(?:(?:it|this|a|an|of)\s+){{0,3}}{_NUM}\b", re.IGNORECASE),
    re.compile(rf"^\W*{_NUM}\b", re.IGNORECASE),  # a bare "4" or "4." opening the reply
]


def parse_score(text: str) -> float | None:
    """The 1-5 score in a judge's reply, or None when there is no unambiguous one."""
    for pattern in _PATTERNS:
        match = pattern.search(text)
        if match:
            token = match.group(1).lower()
            value = float(_WORDS.get(token, token))
            if 1 <= value <= 5:
                return value
    return None


def judge_messages(prompt: PromptBody, user_input: str, reply: str) -> list[Message]:
    """The judge's request. Rubric and prompt come first, so every request in a batch shares that prefix."""
    return [
        {"role": "system", "content": "You are a strict, fair grader of assistant replies."},
        {
            "role": "user",
            "content": (
                f"{RUBRIC}\n\nThe assistant's prompt:\n<<<\n{render_prompt(prompt)}\n>>>\n\n"
                f"The user wrote:\n<<<\n{user_input}\n>>>\n\nThe assistant replied:\n<<<\n{reply}\n>>>\n\n"
                "Answer with 'Score: N' (N from 1 to 5) on the first line, then one sentence on why."
            ),
        },
    ]


def score_judgements(
    variants: Sequence[str], example_ids: Sequence[str], completions: Sequence[Completion]
) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"variant": v, "example_id": e, "score": parse_score(c.text), "raw": c.text}
            for v, e, c in zip(variants, example_ids, completions)
        ],
        columns=["variant", "example_id", "score", "raw"],
    )

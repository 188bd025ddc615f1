"""Prompt files in the kaistAI/GenPI research-code format: turns marked ``<USER>:`` and ``<AGENT>:``.

The AgentBench prompts of the paper are written this way, e.g.::

    <USER>:
    You are an assistant that will act like a person ... Now, my problem is: tell me how many files ...
    <AGENT>:
    Think: ... Act: bash ...
    <USER>:
    The output of the OS: 220
    <AGENT>:
    Think: Now I get the answer, it is 220. Act: answer(220)
    <USER>:
    Now, I will start a new problem in a new OS. My problem is:

Each marker starts a line and opens a turn that runs to the next marker. The turns alternate, starting with
``<USER>:``. A trailing ``<USER>:`` after the last ``<AGENT>:`` is not a dialogue turn: the research code
appends each input to it, so it becomes the spec's ``prompt.input_prefix``, put before every input in its user
message (``genpi_core.prompt.views.input_message``). A marker in the middle of a line is text, not a turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MARKER = re.compile(r"^[ \t]*<(USER|AGENT)>:[ \t]*", re.MULTILINE)
_ROLE = {"USER": "user", "AGENT": "agent"}


class ResearchPromptError(ValueError):
    """A research-format prompt file is malformed; the message gives the line and what to fix."""


@dataclass(frozen=True)
class ResearchPrompt:
    dialogue: list[dict[str, str]]  # [{"user": ...}, {"agent": ...}, ...], as the spec's `prompt.dialogue`
    input_prefix: str | None


def parse_research_prompt(text: str) -> ResearchPrompt:
    """Split ``<USER>:``/``<AGENT>:`` text into alternating dialogue turns and the trailing input prefix."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    marks = list(_MARKER.finditer(text))
    if not marks:
        raise ResearchPromptError(
            "no `<USER>:` or `<AGENT>:` marker at the start of a line; a genpi-research prompt file opens every "
            "turn with one (or read the file as plain system text with `prompt.format: text`)"
        )
    head = text[: marks[0].start()].strip()
    if head:
        raise ResearchPromptError(
            f"line 1: text before the first `<USER>:` marker ({head[:40]!r}); every turn must start with a marker"
        )
    turns: list[tuple[str, str, int]] = []  # (marker, text, line)
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        turns.append((mark.group(1), text[mark.end() : end].strip(), text.count("\n", 0, mark.start()) + 1))
    if turns[0][0] != "USER":
        raise ResearchPromptError(
            f"line {turns[0][2]}: the first turn is `<AGENT>:`; the file must start with `<USER>:`"
        )
    for (role, _, line), (next_role, _, next_line) in zip(turns, turns[1:]):
        if role == next_role:
            raise ResearchPromptError(
                f"line {next_line}: two `<{role}>:` turns in a row (lines {line} and {next_line}); "
                "turns must alternate `<USER>:` / `<AGENT>:`"
            )
    prefix = None
    if turns[-1][0] == "USER":  # the "new problem" intro: every input is appended to it
        prefix = turns.pop()[1] or None
    for role, body, line in turns:
        if not body:
            raise ResearchPromptError(f"line {line}: the `<{role}>:` turn is empty")
    if not turns:
        raise ResearchPromptError(
            "no dialogue turns: a genpi-research prompt file needs at least one `<USER>:` turn answered by an "
            "`<AGENT>:` turn (a trailing `<USER>:` is the input prefix, not a turn)"
        )
    return ResearchPrompt([{_ROLE[role]: body} for role, body, _ in turns], prefix)

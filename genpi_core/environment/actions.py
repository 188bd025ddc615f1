"""An agent turn in AgentBench's OS format, read as its harness reads it.

    Think: <reasoning>
    Act: bash            then a ```bash fenced block with the command
    Act: answer(<text>)  the final answer to a question
    Act: finish          an operation is done

The last recognised ``Act:`` line counts (as in AgentBench). An ``answer`` without parentheses is not an
action, and a ``bash`` without a fenced block has nothing to run; both make the turn invalid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_ACT = re.compile(r"Act:\s*(.+)")
_BASH_BLOCK = re.compile(r"```bash\n(.*?)\n```", re.DOTALL)

ActionKind = Literal["bash", "answer", "finish", "invalid"]


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    content: str = ""  # the command, the answer, or why the turn is invalid

    @property
    def ends_episode(self) -> bool:
        return self.kind != "bash"


def parse_action(turn: str) -> Action:
    """The action an agent turn takes; ``invalid`` (with the reason) when it takes none."""
    for act in reversed(_ACT.findall(turn)):
        word = act.strip().lower()
        if word.startswith("bash"):
            blocks = _BASH_BLOCK.findall(turn)
            if not blocks:
                return Action("invalid", "Act: bash without a ```bash block")
            return Action("bash", "\n\n".join(blocks))
        if word.startswith("finish"):
            return Action("finish")
        if word.startswith("answer"):
            rest = act.strip()[6:]
            left, right = rest.find("("), rest.rfind(")")
            if left == -1 or right == -1 or right < left:
                continue  # not an answer action; an earlier Act: line may be one
            return Action("answer", rest[left + 1 : right])
    return Action("invalid", "no Act: bash, Act: answer(...) or Act: finish")

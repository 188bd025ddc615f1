"""What an environment is to genpi: the other side of an agent's conversation.

Role-swapped synthesis and multi-turn evaluation both hand the environment every live conversation at
once (one turn of each) and get one reply per conversation back, so a model-played environment batches
like any generation call. An environment that executes actions (a sandboxed shell) implements the same
protocol (genpi_core.environment.shell); each reply says whether the episode is over (the end marker).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from genpi_core.generation.base import Completion, Message


class Environment(Protocol):
    """Answers the agent's latest turn in each conversation. ``name`` is recorded as the turn's producer."""

    name: str
    end_marker: str
    simulated: bool  # a model's guess (its turns are screened like generated text) or real output (kept as is)

    def respond(
        self,
        conversations: Sequence[Sequence[Message]],
        desc: str = "environment",
        episode_ids: Sequence[str] | None = None,
    ) -> list[Completion]:
        """One reply per conversation (agent turns first in each, as the agent saw them). ``episode_ids`` say
        which episode each conversation is; an environment with state (the shell) needs them."""
        ...

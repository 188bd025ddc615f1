"""The simulated environment: the model plays the user or tool side of the conversation (self role-play).

It sees the prompt's dialogue and the conversation with user/assistant flipped, after a brief that names the
role it plays and tells it to reply with the spec's end marker when the exchange is over. The prompt's first
(instruction) turn is left out: it tells the *agent* what to do.
"""

from __future__ import annotations

from collections.abc import Sequence

from genpi_core.generation.base import Completion, GenerationBackend, Message
from schemas.config import SamplingConfig
from schemas.spec import PromptSpec


def environment_system(spec: PromptSpec) -> str:
    return (
        f"You are playing this role: {spec.environment.description}. You are not the assistant. The assistant's last message "
        "is shown to you as the user's message. Reply as your role would, in one short message. "
        f"When the exchange is over (the task is done, or there is nothing left to ask), reply with exactly "
        f"{spec.conversation.end_marker}"
    )


def environment_view(spec: PromptSpec, conversation: Sequence[Message]) -> list[Message]:
    """The prompt's dialogue and the conversation with user/assistant flipped, after the environment's brief.

    In the conversation, the environment spoke the first message and every even one; the agent's turns,
    the latest included, become the user's messages.
    """
    flip = {"user": "assistant", "assistant": "user"}
    turns = spec.prompt.dialogue or []
    messages: list[Message] = [{"role": "system", "content": environment_system(spec)}]
    messages += [{"role": flip[t.role], "content": t.text} for t in turns[1:]]  # type: ignore[typeddict-item]
    messages += [{"role": flip[m["role"]], "content": m["content"]} for m in conversation]  # type: ignore[typeddict-item]
    return messages


class SimulatedEnvironment:
    """An ``Environment`` played by a generation backend (the base model in the paper's self role-play)."""

    def __init__(self, spec: PromptSpec, backend: GenerationBackend, sampling: SamplingConfig) -> None:
        self.spec, self.backend, self.sampling = spec, backend, sampling
        self.name = backend.name
        self.end_marker = spec.conversation.end_marker
        self.simulated = True

    def respond(
        self,
        conversations: Sequence[Sequence[Message]],
        desc: str = "environment",
        episode_ids: Sequence[str] | None = None,  # the model sees the whole conversation: no state to look up
    ) -> list[Completion]:
        return self.backend.generate([environment_view(self.spec, c) for c in conversations], self.sampling, desc=desc)

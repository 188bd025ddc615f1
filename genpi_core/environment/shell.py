"""The real environment: a sandboxed Linux shell runs the agent's bash actions and answers with their output.

It implements the same ``Environment`` protocol as the simulated one, so role-swapped synthesis and
multi-turn evaluation can use either. Each episode gets its own sandbox (genpi_core.environment.sandbox),
made on the episode's first action and kept until ``close``. The reply to an action is what AgentBench's
harness sends: "The output of the OS:" and the output (cut at 800 characters), or "The output of the OS is
empty."; an answer, a finish or an invalid turn ends the episode with the spec's end marker.
"""

from __future__ import annotations

from collections.abc import Sequence

from genpi_core.environment.actions import parse_action
from genpi_core.environment.sandbox import Sandbox, SandboxLimits, truncate_observation
from genpi_core.generation.base import Completion, Message

OUTPUT_PREFIX = "The output of the OS:\n\n"
EMPTY_OUTPUT = "The output of the OS is empty."


def observation(output: str) -> str:
    """A command's output as the agent sees it next (AgentBench's wording and cut)."""
    text = output.rstrip("\n")
    return OUTPUT_PREFIX + truncate_observation(text) if text.strip() else EMPTY_OUTPUT


class ShellEnvironment:
    """An ``Environment`` whose replies are real command output, one sandbox per episode.

    ``respond`` needs ``episode_ids`` (which conversation is which across turns). ``init`` runs in each new
    sandbox before its first command (a spec's ``environment.init``)."""

    name = "shell"
    simulated = False  # real command output: never screened for role confusion like a model's turn

    def __init__(self, end_marker: str, limits: SandboxLimits | None = None, init: str | None = None) -> None:
        self.end_marker, self.limits, self.init = end_marker, limits or SandboxLimits(), init
        self.boxes: dict[str, Sandbox] = {}

    def box(self, episode_id: str) -> Sandbox:
        if episode_id not in self.boxes:
            box = Sandbox(self.limits)
            if self.init:
                box.run(self.init, timeout_s=box.script_timeout_s)
            self.boxes[episode_id] = box
        return self.boxes[episode_id]

    def step(self, episode_id: str, agent_turn: str) -> str:
        """Act on one agent turn: the observation, or the end marker when the turn ends the episode."""
        action = parse_action(agent_turn)
        if action.ends_episode:
            return self.end_marker
        result = self.box(episode_id).run(action.content)
        text = observation(result.output)
        if result.timed_out:
            text += f"\n[the command ran past {self.limits.command_timeout_s:g} s and was stopped]"
        return text

    def respond(
        self,
        conversations: Sequence[Sequence[Message]],
        desc: str = "environment",
        episode_ids: Sequence[str] | None = None,
    ) -> list[Completion]:
        if episode_ids is None or len(episode_ids) != len(conversations):
            raise ValueError("the shell environment needs one episode id per conversation")
        replies = []
        for episode_id, conversation in zip(episode_ids, conversations):
            if episode_id not in self.boxes:  # a resumed episode: rebuild its box by replaying its earlier commands
                for earlier in [m["content"] for m in conversation[:-1] if m["role"] == "assistant"]:
                    action = parse_action(earlier)
                    if action.kind == "bash":
                        self.box(episode_id).run(action.content)
            text = self.step(episode_id, conversation[-1]["content"])
            replies.append(Completion(text, "stop", 0, 0, 0.0))
        return replies

    def end(self, episode_id: str) -> None:
        """Free a finished episode's sandbox."""
        box = self.boxes.pop(episode_id, None)
        if box is not None:
            box.close()

    def close(self) -> None:
        for episode_id in list(self.boxes):
            self.end(episode_id)

    def __enter__(self) -> ShellEnvironment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

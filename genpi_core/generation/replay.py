"""Greedy replies recorded once and replayed: the base model's evaluation replies do not depend on the adapter.

Why: every evaluation generates the base (no prompt) and teacher (with the prompt) replies again, and with
them the environment turns and leakage probes the base model plays. On the 0.5B model that is most of an
evaluation's time, and the quality suite evaluates a dozen students of the same prompt. With greedy
decoding those replies are a pure function of (model, engine settings, sampling, conversations), so they
are recorded under that key and replayed; the engine loads only on the first request it has not seen.
Sampled requests (temperature > 0) always go to the engine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from genpi_core.generation.base import ClosesOnExit, Completion, GenerationBackend, Message
from genpi_core.store.stage import atomic_write_json
from schemas.config import SamplingConfig


def replay_key(identity: dict, conversations: Sequence[Sequence[Message]], sampling: SamplingConfig) -> str:
    blob = json.dumps(
        {"engine": identity, "sampling": sampling.model_dump(mode="json"), "conversations": list(conversations)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class ReplayBackend(ClosesOnExit):
    """A backend that answers a greedy batch it has answered before from ``folder``, and builds the real
    engine (``make``) only on the first batch it has not. ``identity`` must name everything that changes
    a greedy reply: the model and the engine's settings."""

    def __init__(
        self, make: Callable[[], GenerationBackend], identity: dict, folder: Path, name: str = "replay"
    ) -> None:
        self._make, self.identity, self.folder = make, identity, Path(folder)
        self._engine: GenerationBackend | None = None
        self.name = name  # recorded as the producer of environment turns: the engine it stands for
        self.replayed = 0  # batches answered from the record (tests and logs read it)

    def _path(self, conversations, sampling: SamplingConfig) -> Path:
        return self.folder / f"{replay_key(self.identity, conversations, sampling)}.json"

    def engine(self) -> GenerationBackend:
        if self._engine is None:
            self._engine = self._make()
        return self._engine

    def generate(
        self, conversations: Sequence[Sequence[Message]], sampling: SamplingConfig, desc: str = "generate"
    ) -> list[Completion]:
        if sampling.temperature > 0:
            return self.engine().generate(conversations, sampling, desc=desc)
        path = self._path(conversations, sampling)
        if path.is_file():
            try:
                recorded = [Completion(**c) for c in json.loads(path.read_text())["completions"]]
            except (ValueError, TypeError, KeyError):
                recorded = []  # a damaged record is regenerated, never trusted
            if len(recorded) == len(conversations):
                self.replayed += 1
                return recorded
        completions = self.engine().generate(conversations, sampling, desc=desc)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"desc": desc, "completions": [asdict(c) for c in completions]})
        return completions

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

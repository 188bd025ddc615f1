"""The one protocol every generation engine implements, and the helpers every engine shares.

Engines take whole batches of conversations (lists of chat messages) so that callers can hand
over one turn of every live conversation at once; how an engine batches internally is its own affair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypedDict

from typing_extensions import Self  # typing.Self needs 3.11; we support 3.10

from schemas.config import SamplingConfig


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class Completion:
    """One reply. ``latency_s`` is the batch's wall time divided by its size (amortized)."""

    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    latency_s: float


class GenerationError(RuntimeError):
    """Generation failed for good (after retries); the message names the engine and the request."""


class GenerationBackend(Protocol):
    """What every engine offers. Use one as a context manager (``with make_backend(...) as engine:``) so its
    model memory, worker processes or HTTP pool go back however the block ends."""

    name: str

    def generate(
        self, conversations: Sequence[Sequence[Message]], sampling: SamplingConfig, desc: str = "generate"
    ) -> list[Completion]: ...

    def close(self) -> None: ...

    def __enter__(self) -> GenerationBackend: ...

    def __exit__(self, *exc: object) -> None: ...


class ClosesOnExit:
    """``with engine:`` support for the backends: the block's end calls ``close()``, even on an exception."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_context(encoded: Sequence[Sequence[int]], max_new_tokens: int, max_context: int, where: str) -> None:
    """Fail before generating when a conversation plus its reply cannot fit: never truncate a prompt silently."""
    for i, ids in enumerate(encoded):
        if len(ids) + max_new_tokens > max_context:
            raise ValueError(
                f"conversation {i} has {len(ids)} prompt tokens + {max_new_tokens} new tokens, over {where} of {max_context}"
            )


def stop_token_ids(generation_config, tokenizer) -> list[int]:
    """End-of-reply tokens: the model's generation config (which may list several), else the tokenizer's EOS."""
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids = eos if isinstance(eos, list) else [eos]
    ids = [i for i in ids if i is not None] or [tokenizer.eos_token_id]
    return sorted(set(ids))

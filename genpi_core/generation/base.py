"""The one protocol every generation engine implements, plus the backend factory.

Engines take whole batches of conversations (lists of chat messages) so that callers can hand
over one turn of every live conversation at once; how an engine batches internally is its own affair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, Sequence, TypedDict

from schemas.config import BackendConfig, ModelConfig, SamplingConfig


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
    name: str

    def generate(
        self, conversations: Sequence[Sequence[Message]], sampling: SamplingConfig, desc: str = "generate"
    ) -> list[Completion]: ...

    def close(self) -> None: ...


def chat_token_ids(tokenizer, conversation: Sequence[Message]) -> list[int]:
    """Token ids of a conversation ready for the assistant's reply: ``genpi_core.chat.chat_token_ids``,
    where message contents stay text (a control string in one never becomes a special token)."""
    from genpi_core.chat import chat_token_ids as encode  # chat.py imports this module

    return encode(tokenizer, conversation)


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


def make_backend(
    model: ModelConfig, backend: BackendConfig, adapter: str | Path | None = None, merge_adapter: bool = False
) -> GenerationBackend:
    """Build the engine named in ``backend.kind`` for ``model`` (optionally with a LoRA adapter)."""
    if backend.kind == "transformers":
        from genpi_core.generation.transformers_backend import TransformersBackend

        return TransformersBackend(model, backend, adapter=adapter, merge_adapter=merge_adapter)
    if backend.kind == "openai":
        from genpi_core.generation.openai_backend import OpenAIBackend

        if adapter is not None:
            raise ValueError("the openai backend serves adapters by name: set backend.served_model instead")
        return OpenAIBackend(model, backend)
    if backend.kind == "vllm":
        from genpi_core.generation.vllm_backend import VLLMBackend

        return VLLMBackend(model, backend, adapter=adapter)
    raise ValueError(f"unknown backend kind {backend.kind!r}")

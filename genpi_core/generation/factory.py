"""Pick the generation engine a config names: the one place that knows every backend class.

Backends are imported lazily, so a CPU-only install never imports vLLM and the openai client stays optional.
"""

from __future__ import annotations

from pathlib import Path

from genpi_core.generation.base import GenerationBackend
from schemas.config import BackendConfig, ModelConfig


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

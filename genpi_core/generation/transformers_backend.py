"""In-process generation with transformers: the embedded CPU default, also fine on one GPU.

Batches are sorted by length (less padding). When every conversation in a call shares a token
prefix (the prompt), that prefix is run through the model once per call, and every batch attends
to its keys/values in place (prefix_attention.py) instead of copying them into each row. Each
row's own tokens are left-padded after the prefix, with position ids that continue the prefix, so
replies match plain left-padded generation while a 1.5k-token prompt costs one prefill per call.
The decoding loop is our own (greedy, or temperature + top-p with a seeded generator) because
generate() cannot continue positions after a prefix held outside its cache.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from genpi_core.generation.base import (
    ClosesOnExit,
    Completion,
    Message,
    check_context,
    stop_token_ids,
)
from genpi_core.generation.chat_template import chat_token_ids
from genpi_core.generation.models import load_model, load_tokenizer
from genpi_core.generation.prefix_attention import ATTN_NAME, register, shared_prefix
from schemas.config import BackendConfig, ModelConfig, SamplingConfig

_MIN_SHARED_PREFIX = 32  # below this, computing a separate prefix pass costs more than it saves


class TransformersBackend(ClosesOnExit):
    def __init__(
        self,
        model: ModelConfig,
        backend: BackendConfig,
        adapter: str | Path | None = None,
        merge_adapter: bool = False,
    ) -> None:
        self.name = f"transformers:{model.name_or_path}" + (f"+lora:{Path(adapter).name}" if adapter else "")
        self.tokenizer = load_tokenizer(model.name_or_path)
        register()
        self.model = load_model(
            model.name_or_path, model.dtype, model.device, adapter=adapter, attn_implementation=ATTN_NAME
        )
        if adapter is not None and merge_adapter:
            self.model = self.model.merge_and_unload()  # same outputs (max |dlogit| ~1e-4), no LoRA matmuls
        self.batch_size = backend.batch_size
        self.share_prefix = backend.share_prefix
        self.device = next(self.model.parameters()).device
        self.eos_ids = self._eos_ids()
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 2048))

    def _eos_ids(self) -> list[int]:
        return stop_token_ids(self.model.generation_config, self.tokenizer)

    def encode(self, conversation: Sequence[Message]) -> list[int]:
        return chat_token_ids(self.tokenizer, conversation)

    def generate(
        self, conversations: Sequence[Sequence[Message]], sampling: SamplingConfig, desc: str = "generate"
    ) -> list[Completion]:
        if not conversations:
            return []
        encoded = [self.encode(c) for c in conversations]
        check_context(encoded, sampling.max_new_tokens, self.max_context, "the model's context")
        prefix_len = self._shared_prefix_len(encoded) if self.share_prefix else 0
        prefix_layers = self._prefill(encoded[0][:prefix_len]) if prefix_len else None

        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[Completion | None] = [None] * len(encoded)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for batch_no, batch in enumerate(tqdm(batches, desc=desc, unit="batch", leave=False)):
            started = time.perf_counter()
            texts, finishes, lengths = self._generate_batch(
                [encoded[i] for i in batch], prefix_len, prefix_layers, sampling, seed=sampling.seed + batch_no
            )
            per_item = (time.perf_counter() - started) / len(batch)
            for row, text, finish, n_new in zip(batch, texts, finishes, lengths):
                results[row] = Completion(text, finish, len(encoded[row]), n_new, per_item)
        return [r for r in results if r is not None]

    @staticmethod
    def _shared_prefix_len(encoded: list[list[int]]) -> int:
        limit = min(len(ids) for ids in encoded) - 1  # every row keeps >= 1 own token to feed
        first = encoded[0]
        n = 0
        while n < limit and all(ids[n] == first[n] for ids in encoded):
            n += 1
        return n if n >= _MIN_SHARED_PREFIX else 0

    @torch.no_grad()
    def _prefill(self, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (keys, values) of the shared prefix, batch 1, computed once per call."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # `past_key_values` rename in transformers 5.2x
            self.model(
                input_ids=torch.tensor([prefix], device=self.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :].float()

    @staticmethod
    def _pick(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator) -> torch.Tensor:
        if sampling.temperature <= 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            drop = sorted_probs.cumsum(dim=-1) - sorted_probs > sampling.top_p  # keep the smallest set reaching top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    @torch.no_grad()
    def _generate_batch(
        self, rows: list[list[int]], prefix_len: int, prefix_layers, sampling: SamplingConfig, seed: int
    ):
        from transformers import DynamicCache

        pad_id = self.tokenizer.pad_token_id
        suffixes = [ids[prefix_len:] for ids in rows]
        width = max(len(s) for s in suffixes)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for b, suffix in enumerate(suffixes):  # left padding within the suffix
            input_ids[b, width - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
            mask[b, width - len(suffix) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = prefix_len + (mask.cumsum(-1) - 1).clamp(min=0)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        eos = torch.tensor(self.eos_ids, device=self.device)
        cache = DynamicCache(config=self.model.config)
        new_tokens = []
        finished = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        context = shared_prefix(prefix_layers) if prefix_layers is not None else nullcontext()
        with context:
            logits = self._forward(input_ids, mask, positions, cache)
            for _ in range(sampling.max_new_tokens):
                token = self._pick(logits, sampling, generator).masked_fill(finished, pad_id)
                new_tokens.append(token)
                finished |= torch.isin(token, eos)
                if bool(finished.all()) or len(new_tokens) == sampling.max_new_tokens:
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
                logits = self._forward(token[:, None], mask, positions, cache)
        texts, finishes, lengths = [], [], []
        for tokens in torch.stack(new_tokens, dim=1).tolist():
            stop_at = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
            kept = tokens if stop_at is None else tokens[:stop_at]
            texts.append(self.tokenizer.decode(kept, skip_special_tokens=True).strip())
            finishes.append("stop" if stop_at is not None else "length")
            lengths.append(len(kept) + (0 if stop_at is None else 1))
        return texts, finishes, lengths

    def close(self) -> None:
        self.model = None  # let the weights go before the next stage loads its own copy

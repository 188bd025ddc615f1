"""Shared-prefix ("cascade") attention for batched decoding behind one long common prompt.

Plain batched generation copies the prompt's KV cache into every row and, for grouped-query
models, expands it again per head on every decoding step: with a 1.5k-token prompt that memory
traffic, not arithmetic, dominates CPU decoding. Here the prompt's keys/values are kept once
(batch 1) and every row attends to them by broadcasting, plus to its own suffix cache; the two
parts share one softmax, so the result is the same attention, computed without the copies.

Usage: ``register()`` once, load the model with ``attn_implementation=ATTN_NAME``, and run
forwards inside ``shared_prefix(layers)``. Outside that context it is plain SDPA.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

import torch

ATTN_NAME = "genpi_shared_prefix"
_PREFIX: contextvars.ContextVar[list[tuple[torch.Tensor, torch.Tensor]] | None] = contextvars.ContextVar(
    "genpi_shared_prefix", default=None
)


@contextmanager
def shared_prefix(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Make every attention layer also attend to these per-layer (keys, values), each [1, kv_heads, P, dim]."""
    token = _PREFIX.set(layers)
    try:
        yield
    finally:
        _PREFIX.reset(token)


def _suffix_mask(attention_mask: torch.Tensor | None, q_len: int, k_len: int, device) -> torch.Tensor:
    """Boolean [B or 1, 1, q, k] mask (True = attend) for the suffix keys."""
    if attention_mask is None:  # the mask builder skipped it: no padding, so plain causal
        rows = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
        return (torch.arange(k_len, device=device)[None, :] <= rows)[None, None]
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask == 0  # additive float mask: 0 where allowed


def shared_prefix_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Drop-in attention function (transformers AttentionInterface signature)."""
    prefix = _PREFIX.get()
    if prefix is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    prefix_keys, prefix_values = prefix[module.layer_idx]
    batch, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    rows = group * q_len
    scale = scaling if scaling is not None else dim**-0.5
    # Query heads are grouped per kv head (head h reads kv head h // group). For the prefix, fold batch,
    # group and query position into one row axis per kv head: one [kv, B*G*q, d] x [kv, d, P] matmul reads
    # the prefix once. (Broadcasting a batch-1 prefix against B rows would materialize B copies of it.)
    q = query.reshape(batch, kv_heads, rows, dim)
    q_rows = q.transpose(0, 1).reshape(kv_heads, batch * rows, dim)
    scores_prefix = torch.matmul(q_rows, prefix_keys[0].transpose(-1, -2)) * scale  # [kv, B*rows, P]
    scores_suffix = (torch.matmul(q, key.transpose(-1, -2)) * scale).view(batch, kv_heads, group, q_len, k_len)
    mask = _suffix_mask(attention_mask, q_len, k_len, query.device)[:, :, None]  # [B, 1, 1, q, k]
    scores_suffix = scores_suffix.masked_fill(~mask, torch.finfo(scores_suffix.dtype).min)
    scores_suffix = (
        scores_suffix.view(batch, kv_heads, rows, k_len).transpose(0, 1).reshape(kv_heads, batch * rows, k_len)
    )
    probs = torch.softmax(torch.cat([scores_prefix, scores_suffix], dim=-1), dim=-1, dtype=torch.float32).to(
        query.dtype
    )
    prefix_len = prefix_keys.shape[2]
    out = torch.matmul(probs[..., :prefix_len], prefix_values[0])  # [kv, B*rows, d]
    probs_suffix = probs[..., prefix_len:].reshape(kv_heads, batch, rows, k_len).transpose(0, 1)  # [B, kv, rows, k]
    out = out.view(kv_heads, batch, rows, dim).transpose(0, 1) + torch.matmul(probs_suffix, value)
    return out.reshape(batch, heads, q_len, dim).transpose(1, 2).contiguous(), None


_registered = False


def register() -> None:
    """Register the attention function and its mask builder with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, shared_prefix_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    _registered = True

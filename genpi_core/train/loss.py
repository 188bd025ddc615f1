"""Loss over target tokens only, with the output layer applied in chunks.

Why: the vocabulary projection dominates training memory on long examples. A prompt-generation
example holds the whole prompt (thousands of tokens), and full-sequence logits cost vocab x 4 bytes
per token several times over (logits, the shifted copy, log-softmax, their gradients): about 1.5 MB
per token on SmolLM2 (49k vocabulary). Here the decoder returns hidden states, only positions that
carry loss are projected, a chunk at a time, and each chunk's logits are recomputed in backward
instead of being kept. Same sums as the full-logits computation, within float rounding.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from genpi_core.train.data import IGNORE, Item, collate

CHUNK_TOKENS = 1024


def _causal_lm(model):
    """The transformers model under DDP and peft wrappers (the wrappers' forward must still be used)."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def supports_chunked_output(model) -> bool:
    """Models that post-process logits (e.g. Gemma-2's soft-capping) need the full path."""
    return getattr(_causal_lm(model).config, "final_logit_softcapping", None) is None


@contextmanager
def hidden_states_only(model):
    """Swap the output layer for the identity, so the forward (through any wrapper) returns hidden states."""
    lm = _causal_lm(model)
    head = lm.get_output_embeddings()
    lm.set_output_embeddings(torch.nn.Identity())
    try:
        yield head
    finally:
        lm.set_output_embeddings(head)


def _chunk_sums(head, hidden, labels, teacher_ids, teacher_logprobs):
    logits = head(hidden).float()
    ce = F.cross_entropy(logits, labels, reduction="sum")
    if teacher_ids is None:
        return ce, torch.zeros((), device=ce.device)
    student = torch.log_softmax(logits, dim=-1).gather(-1, teacher_ids)
    kl = (teacher_logprobs.exp() * (teacher_logprobs - student)).sum()
    return ce, kl


def chunked_target_sums(
    head,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    teacher_ids=None,
    teacher_logprobs=None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (and KL against the teacher's top-k) over target rows of ``hidden`` [N, H]."""
    ce_total = hidden.float().sum() * 0.0  # stays in the graph even with no target rows (backward still works)
    kl_total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        part = slice(start, start + chunk_tokens)
        args = (
            hidden[part],
            labels[part],
            None if teacher_ids is None else teacher_ids[part],
            None if teacher_logprobs is None else teacher_logprobs[part],
        )
        if torch.is_grad_enabled() and hidden.requires_grad:
            ce, kl = checkpoint(_chunk_sums, head, *args, use_reentrant=False)
        else:
            ce, kl = _chunk_sums(head, *args)
        ce_total, kl_total = ce_total + ce, kl_total + kl
    return ce_total, kl_total


def loss_sums(
    model, batch: list[Item], pad_id: int, device, distill: bool = False, chunk_tokens: int = CHUNK_TOKENS
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed cross-entropy over target tokens, and the summed KL(teacher || student) when asked.

    Only target positions are projected to the vocabulary, in chunks (``chunked_target_sums`` above);
    models that post-process logits take the plain full-logits path."""
    tensors = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
    labels = tensors["labels"][:, 1:]
    targets = labels != IGNORE  # target positions, in order across the batch (the teacher's top-k use it too)
    teacher_ids = torch.cat([item.teacher_ids for item in batch]).to(device) if distill else None
    teacher_logprobs = torch.cat([item.teacher_logprobs for item in batch]).to(device) if distill else None
    if supports_chunked_output(model):
        with hidden_states_only(model) as head:
            hidden = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
        ce, kl = chunked_target_sums(
            head, hidden[:, :-1][targets], labels[targets], teacher_ids, teacher_logprobs, chunk_tokens
        )
        return ce, kl if distill else None
    logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits[:, :-1].float()
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    if teacher_ids is None or teacher_logprobs is None:  # not distilling
        return ce, None
    student = torch.log_softmax(logits[targets], dim=-1)
    kl = (teacher_logprobs.exp() * (teacher_logprobs - student.gather(-1, teacher_ids))).sum()
    return ce, kl

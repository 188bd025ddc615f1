"""On-policy prompt distillation: the student learns from its own samples, scored by the prompted teacher.

GenPI's SFT term is off-policy: the student imitates replies the teacher sampled, and once it drifts
nothing pulls it back. Here, per optimizer step, the student (adapter on, no prompt) samples replies to
training contexts (single-turn and role-swapped multi-turn, the environment turns reused from synthesis);
the teacher (the same base model, adapter off, prompt in context) scores the student's own tokens; and
the loss at each sampled position is a divergence between the two next-token distributions: by default
the full-distribution reverse KL(student || teacher) (GKD with beta = 1), optionally the generalized JSD.

The prompt is the same in every teacher context, so its keys/values are computed once per run and
every scoring batch attends to them in place (prefix_attention.py), as generation does. With
``top_k`` the divergence is taken over the union of both models' top-k tokens plus one tail bucket
holding the rest of each model's mass, so the teacher's side of a step is [tokens, 2k] instead of
[tokens, vocabulary].
"""

from __future__ import annotations

import json
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd
import torch
from torch.utils.checkpoint import checkpoint

from genpi_core.generation.base import Message, stop_token_ids
from genpi_core.generation.chat_template import chat_token_ids
from genpi_core.generation.prefix_attention import ATTN_NAME, shared_prefix
from genpi_core.train.loss import CHUNK_TOKENS, hidden_states_only, supports_chunked_output
from schemas.config import OnPolicyConfig

_TAIL_FLOOR = 1e-12  # a tail bucket's mass is never exactly zero in the log


@dataclass
class Context:
    """One training context, tokenized for both sides: the student's (no prompt) and the teacher's (prompt first)."""

    example_id: str
    student_ids: list[int]
    teacher_ids: list[int]


@dataclass
class Sample:
    """A student reply to a context, with what the teacher said about each of its tokens.

    ``ids`` is the student's whole sequence (context + reply), so it batches like a training item.
    ``teacher`` holds log-probs per reply token: [R, V] over the vocabulary, or [R, 2k] over ``bins``
    (the union of both models' top-k; ``keep`` masks a token id listed twice)."""

    example_id: str
    ids: list[int]
    reply_start: int
    teacher: torch.Tensor
    bins: torch.Tensor | None = None
    keep: torch.Tensor | None = None

    @property
    def reply_len(self) -> int:
        return len(self.ids) - self.reply_start


def register_prefix_attention() -> str:
    """The attention implementation the training model loads with, so the teacher can share the prompt's KV."""
    from genpi_core.generation.prefix_attention import register

    register()
    return ATTN_NAME


def build_contexts(
    tokenizer, df: pd.DataFrame, prompt: list[Message], max_new_tokens: int, max_seq_len: int, where: str
):
    """Every SFT example's context (its messages, without the target), for both sides; too-long ones are an error."""
    contexts, too_long = [], []
    for row in df.itertuples():
        if row.objective != "sft":
            continue
        messages = json.loads(row.messages)
        context = Context(
            row.example_id, chat_token_ids(tokenizer, messages), chat_token_ids(tokenizer, prompt + messages)
        )
        if len(context.teacher_ids) + max_new_tokens > max_seq_len:
            too_long.append(f"{row.example_id} ({len(context.teacher_ids)} + {max_new_tokens} tokens)")
        contexts.append(context)
    if too_long:
        raise ValueError(
            f"{where}: {len(too_long)} on-policy context(s) with the prompt plus train.on_policy.max_new_tokens exceed "
            f"train.max_seq_len: {', '.join(too_long[:5])}. Raise train.max_seq_len or lower the sample length"
        )
    return contexts


def shared_prefix_len(sequences: list[list[int]]) -> int:
    """Tokens every sequence starts with, leaving each at least one token of its own."""
    limit = min(len(s) for s in sequences) - 1
    first, n = sequences[0], 0
    while n < limit and all(s[n] == first[n] for s in sequences):
        n += 1
    return n


# --- the divergence ------------------------------------------------------------------------------------


def divergence(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-row divergence between two distributions given as log-probs over the same bins [N, K].

    beta = 1: reverse KL(student || teacher), mode-seeking; beta = 0: forward KL(teacher || student);
    in between: the generalized JSD of GKD, beta KL(T || M) + (1 - beta) KL(S || M), M = beta T + (1 - beta) S.
    Bins with zero mass on both sides (-inf log-probs) contribute nothing."""

    def kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
        terms = p_log.exp() * (p_log - q_log)
        return torch.where(torch.isneginf(p_log), torch.zeros_like(terms), terms).sum(-1)

    if beta >= 1.0:
        return kl(student_logp, teacher_logp)
    if beta <= 0.0:
        return kl(teacher_logp, student_logp)
    mixture = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1.0 - beta)]), dim=0)
    return beta * kl(teacher_logp, mixture) + (1.0 - beta) * kl(student_logp, mixture)


def with_tail(picked: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Log-probs of K chosen tokens [N, K] -> the same plus one tail bucket with the rest of the mass [N, K + 1].

    ``keep`` masks a token id listed twice, so each token's mass is counted once."""
    picked = picked.masked_fill(~keep, float("-inf"))
    tail = (1.0 - picked.exp().sum(-1, keepdim=True)).clamp(min=_TAIL_FLOOR).log()
    return torch.cat([picked, tail], dim=-1)


def union_bins(teacher_top: torch.Tensor, student_top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The union of two top-k id sets per row, as [N, 2k] ids (sorted) and a mask that drops repeats."""
    ids = torch.cat([teacher_top, student_top], dim=-1).sort(dim=-1).values
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return ids, keep


def _chunk_divergence(head, hidden, teacher, bins, keep, beta: float):
    student = torch.log_softmax(head(hidden).float(), dim=-1)
    if bins is not None:  # the teacher's side is stored already gathered at the bins
        student, teacher = with_tail(student.gather(-1, bins), keep), with_tail(teacher, keep)
    return divergence(student, teacher, beta).sum()


def divergence_sum(model, batch: list[Sample], pad_id: int, device, beta: float, chunk_tokens: int = CHUNK_TOKENS):
    """Summed divergence over every sampled token of the batch, differentiable through the student.

    The student's sequence is its context and its own reply; only reply positions are projected to the
    vocabulary, a chunk at a time, with each chunk's logits recomputed in backward (as loss.py does)."""
    tensors = {k: v.to(device) for k, v in collate_samples(batch, pad_id).items()}
    rows = tensors["reply_mask"][:, 1:]  # position i predicts token i + 1
    teacher = torch.cat([s.teacher for s in batch]).to(device)
    bins = torch.cat([s.bins for s in batch]).to(device) if batch[0].bins is not None else None
    keep = torch.cat([s.keep for s in batch]).to(device) if batch[0].keep is not None else None
    if supports_chunked_output(model):
        with hidden_states_only(model) as head:
            hidden = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
        hidden = hidden[:, :-1][rows]
    else:
        head = torch.nn.Identity()
        hidden = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits[:, :-1][rows]
    total = hidden.float().sum() * 0.0
    for start in range(0, hidden.shape[0], chunk_tokens):
        part = slice(start, start + chunk_tokens)
        args = (hidden[part], teacher[part], None if bins is None else bins[part], None if keep is None else keep[part])
        if torch.is_grad_enabled() and hidden.requires_grad:
            total = total + checkpoint(_chunk_divergence, head, *args, beta, use_reentrant=False)
        else:
            total = total + _chunk_divergence(head, *args, beta)
    return total


def collate_samples(batch: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and attention mask, plus which positions hold a sampled reply token."""
    width = max(len(s.ids) for s in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    reply = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, sample in enumerate(batch):
        input_ids[i, : len(sample.ids)] = torch.tensor(sample.ids)
        attention[i, : len(sample.ids)] = 1
        reply[i, sample.reply_start : len(sample.ids)] = True
    return {"input_ids": input_ids, "attention_mask": attention, "reply_mask": reply}


# --- sampling and scoring --------------------------------------------------------------------------------


class OnPolicy:
    """Samples student replies and has the teacher score them; one per run, holding the prompt's KV.

    ``model`` is the peft model being trained: the student is it with the adapter on and no prompt,
    the teacher the same model with the adapter disabled and the prompt in context."""

    def __init__(self, model, tokenizer, contexts: list[Context], cfg: OnPolicyConfig, device) -> None:
        self.model, self.cfg, self.device = model, cfg, device
        self.pad_id = tokenizer.pad_token_id
        self.eos_ids = stop_token_ids(getattr(model, "generation_config", None), tokenizer)
        self.contexts = contexts
        # the prompt's KV is shared only through genpi's attention function; with any other, score whole rows
        shares = getattr(model.config, "_attn_implementation", None) == ATTN_NAME
        self.prefix_len = shared_prefix_len([c.teacher_ids for c in contexts]) if contexts and shares else 0
        self.prefix_layers = (
            self._teacher_prefix(contexts[0].teacher_ids[: self.prefix_len]) if self.prefix_len else None
        )

    # The teacher's constant part: the prompt's keys/values, computed once per run.
    @torch.no_grad()
    def _teacher_prefix(self, prefix: list[int]):
        from transformers import DynamicCache

        was_training = self.model.training
        self.model.eval()
        cache = DynamicCache(config=self.model.config)
        with self.model.disable_adapter(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.model(
                input_ids=torch.tensor([prefix], device=self.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.model.train(was_training)
        return [(layer.keys, layer.values) for layer in cache.layers]

    @torch.no_grad()
    def sample(self, contexts: list[Context], seed: int) -> list[tuple[list[int], torch.Tensor]]:
        """The student's replies (adapter on, no prompt), sampled at the configured temperature with a seeded
        generator, and the student's top-k ids at each reply position (for ``top_k`` bins)."""
        from transformers import DynamicCache

        was_training = self.model.training
        self.model.eval()  # no LoRA dropout while sampling
        rows = [c.student_ids for c in contexts]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for b, row in enumerate(rows):  # left padding
            input_ids[b, width - len(row) :] = torch.tensor(row)
            mask[b, width - len(row) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        eos = torch.tensor(self.eos_ids, device=self.device)
        cache = DynamicCache(config=self.model.config)
        finished = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        tokens, tops = [], []
        step_input = input_ids
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            for _ in range(self.cfg.max_new_tokens):
                logits = (
                    self.model(
                        input_ids=step_input,
                        attention_mask=mask,
                        position_ids=positions,
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                    .logits[:, -1, :]
                    .float()
                )
                if self.cfg.top_k:
                    tops.append(logits.topk(self.cfg.top_k, dim=-1).indices)
                probs = torch.softmax(logits / self.cfg.temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1).masked_fill(finished, self.pad_id)
                tokens.append(token)
                finished |= torch.isin(token, eos)
                if bool(finished.all()):
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
                step_input = token[:, None]
        self.model.train(was_training)
        out = []
        sampled = torch.stack(tokens, dim=1).tolist()
        top_rows = torch.stack(tops, dim=1).cpu() if tops else None
        for b, seq in enumerate(sampled):
            stop = next((i for i, t in enumerate(seq) if t in self.eos_ids), None)
            reply = seq if stop is None else seq[: stop + 1]  # the stop token is the student's choice too
            out.append((reply, top_rows[b, : len(reply)] if top_rows is not None else None))
        return out

    @torch.no_grad()
    def score(self, teacher_rows: list[list[int]], reply_lens: list[int]) -> list[torch.Tensor]:
        """The teacher's log-probs [R, V] for the last ``reply_len`` tokens of each row (prompt first, adapter off).

        Rows share the prompt's prefix: each row's remainder is right-padded, with positions that continue
        the prefix, and attends to the prefix's keys/values in place."""
        p = self.prefix_len
        suffixes = [row[p:] for row in teacher_rows]
        width = max(len(s) for s in suffixes)
        input_ids = torch.full((len(suffixes), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for b, suffix in enumerate(suffixes):
            input_ids[b, : len(suffix)] = torch.tensor(suffix)
            mask[b, : len(suffix)] = 1
        positions = (p + torch.arange(width))[None].expand(len(suffixes), -1)
        was_training = self.model.training
        self.model.eval()
        context = shared_prefix(self.prefix_layers) if self.prefix_layers is not None else nullcontext()
        # only reply positions are projected to the vocabulary: [reply tokens, V] instead of [rows, length, V]
        chunked = supports_chunked_output(self.model)
        heads = hidden_states_only(self.model) if chunked else nullcontext(None)
        with self.model.disable_adapter(), context, heads as head, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            hidden = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=False,
            ).logits
            out = []
            for b, (suffix, n) in enumerate(zip(suffixes, reply_lens)):
                end = len(suffix) - 1  # the position predicting the last reply token
                rows = hidden[b, end - n : end]
                logits = head(rows) if head is not None else rows
                out.append(torch.log_softmax(logits.float(), dim=-1).cpu())
        self.model.train(was_training)
        return out

    def prepare(self, contexts: list[Context], seed: int) -> list[Sample]:
        """Sample, then score: the step's on-policy examples, each with the teacher's side attached."""
        if not contexts:
            return []
        replies = self.sample(contexts, seed)
        teacher = self.score([c.teacher_ids + r for c, (r, _) in zip(contexts, replies)], [len(r) for r, _ in replies])
        samples = []
        for context, (reply, student_top), t_logp in zip(contexts, replies, teacher):
            sample = Sample(context.example_id, context.student_ids + reply, len(context.student_ids), t_logp)
            if self.cfg.top_k:
                bins, keep = union_bins(t_logp.topk(self.cfg.top_k, dim=-1).indices, student_top)
                sample.bins, sample.keep, sample.teacher = bins, keep, t_logp.gather(-1, bins)
            samples.append(sample)
        return samples

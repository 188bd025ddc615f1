"""A peft LoRA adapter, trained the way genpi trains its student (chat-template context, loss on the
reply and its closing end-of-turn only), is served by vLLM's CPU build exactly as transformers+peft
runs it: in-process (`LoRARequest`) and through `vllm serve --enable-lora`, with the same greedy text."""

from __future__ import annotations

import random

import httpx
import pytest

from genpi_core.generation.factory import make_backend
from genpi_core.prompt.views import user_turn, without_prompt
from schemas.config import BackendConfig, ModelConfig, SamplingConfig
from tests.vllm.servers import start_vllm_serve, stop, wait_ready

pytestmark = [pytest.mark.vllm, pytest.mark.server]

PREFIX = "Topic:"
TRAIN = [  # question -> reply in a fixed format the base model never uses on its own
    ("Do you have books about sailing?", "Topic: collection\nAnswer: Yes, sailing books are on the second floor."),
    ("When are you open on Sunday?", "Topic: hours\nAnswer: On Sunday we are open from 12 to 5."),
    ("Can I print here?", "Topic: services\nAnswer: Yes, printers are next to the front desk."),
    ("How do I renew a book?", "Topic: loans\nAnswer: Renew it online or at the front desk."),
    ("Is there a quiet room?", "Topic: spaces\nAnswer: Yes, the quiet room is on the third floor."),
    ("Do you lend laptops?", "Topic: services\nAnswer: Yes, for four hours with your library card."),
]
QUESTIONS = [
    "Do you have books about gardening?",
    "When are you open on Saturday?",  # held out from training
    "Can I borrow DVDs?",
    "Do you have a study room for groups?",
]
SAMPLING = SamplingConfig(max_new_tokens=24)  # greedy
SERVED_BASE, SERVED_ADAPTER = "smol", "student"


@pytest.fixture(scope="module")
def adapter_dir(embedded_model_dir, tmp_path_factory) -> str:
    """A small real LoRA adapter (r=8 on every projection), trained for 20 full-batch AdamW steps
    (the loss is below 1% of its start by then; each step costs ~2 s on 2 cores, the bulk of this module's time).

    Built here with plain peft rather than genpi_core.train.recipe, so that this test pins down the
    adapter format and the serving path on their own."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    from genpi_core.generation.chat_template import chat_token_ids
    from genpi_core.generation.models import load_model, load_tokenizer

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    tokenizer = load_tokenizer("embedded")
    model = get_peft_model(
        load_model("embedded"),
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    rows = []
    for question, answer in TRAIN:
        context = chat_token_ids(tokenizer, without_prompt(user_turn(question)))
        target = tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        rows.append((context + target, [-100] * len(context) + target))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):  # right padding, pads masked out of attention and loss
        input_ids[i, : len(ids)], labels[i, : len(lab)], attention[i, : len(ids)] = (
            torch.tensor(ids),
            torch.tensor(lab),
            1,
        )
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(20):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses  # it learned the format
    out = tmp_path_factory.mktemp("lora") / "adapter"
    model.save_pretrained(out)
    del model, optimizer
    return str(out)


@pytest.fixture(scope="module")
def conversations():
    return [without_prompt(user_turn(q)) for q in QUESTIONS]  # no system prompt: the student's view


@pytest.fixture(scope="module")
def peft_replies(adapter_dir, conversations):
    """The reference: transformers with the unmerged peft adapter."""
    backend = make_backend(ModelConfig(), BackendConfig(kind="transformers", batch_size=8), adapter=adapter_dir)
    try:
        return backend.generate(conversations, SAMPLING)
    finally:
        backend.close()


@pytest.fixture(scope="module")
def base_replies(transformers_backend, conversations):
    return transformers_backend.generate(conversations, SAMPLING)


def test_in_process_vllm_lora_matches_transformers_peft(adapter_dir, conversations, peft_replies, base_replies):
    backend = make_backend(
        ModelConfig(), BackendConfig(kind="vllm", cpu_kv_cache_gib=1, max_model_len=2048), adapter=adapter_dir
    )
    try:
        assert backend.lora_request is not None
        served = backend.generate(conversations, SAMPLING)
    finally:
        backend.close()  # frees the engine before the server test starts its own
    texts = [c.text for c in peft_replies]
    # the adapter changed behaviour: the taught format on held-out questions, which the base never uses
    assert all(t.startswith(PREFIX) for t in texts), texts
    assert not any(c.text.startswith(PREFIX) for c in base_replies), [c.text for c in base_replies]
    # vLLM applies the LoRA exactly as peft does: identical greedy text, prompt and reply lengths
    assert [c.text for c in served] == texts
    assert [c.prompt_tokens for c in served] == [c.prompt_tokens for c in peft_replies]
    assert [c.completion_tokens for c in served] == [c.completion_tokens for c in peft_replies]
    assert [c.finish_reason for c in served] == [c.finish_reason for c in peft_replies]


@pytest.fixture(scope="module")
def lora_server(embedded_model_dir, adapter_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm-serve-lora") / "server.log"
    proc, url = start_vllm_serve(
        embedded_model_dir,
        SERVED_BASE,
        log,
        max_model_len=2048,
        extra_args=["--enable-lora", "--lora-modules", f"{SERVED_ADAPTER}={adapter_dir}", "--max-lora-rank", "16"],
    )
    try:
        wait_ready(proc, url, log)
        yield url
    finally:
        stop([proc])


def _served(url: str, model: str):
    return make_backend(
        ModelConfig(name_or_path="embedded"),
        BackendConfig(kind="openai", base_url=f"{url}/v1", served_model=model, max_concurrency=2, timeout_s=300),
    )


def test_vllm_serve_lora_module_matches_transformers_peft(lora_server, conversations, peft_replies, base_replies):
    listed = {m["id"] for m in httpx.get(f"{lora_server}/v1/models", timeout=10).json()["data"]}
    assert {SERVED_BASE, SERVED_ADAPTER} <= listed
    student = _served(lora_server, SERVED_ADAPTER)
    try:
        served = student.generate(conversations, SAMPLING)
    finally:
        student.close()
    # the server's chat template renders the prompt we train on, and the adapter is applied as peft applies it
    assert [c.text for c in served] == [c.text for c in peft_replies]
    assert [c.prompt_tokens for c in served] == [c.prompt_tokens for c in peft_replies]
    # and only on requests that name it: the base model name on the same server still gives the base replies
    base = _served(lora_server, SERVED_BASE)
    try:
        plain = base.generate(conversations, SAMPLING)
    finally:
        base.close()
    assert [c.text for c in plain] == [c.text for c in base_replies]

"""The in-process vLLM backend on the real embedded model (vLLM's CPU build): same prompts, same stop
tokens and the same greedy replies as the transformers backend; seeded sampling; role-swap synthesis."""

from __future__ import annotations

import pytest

from genpi_core.environment.simulated import environment_view
from genpi_core.prompt.views import user_turn, with_prompt, without_prompt
from genpi_core.store.tables import read_table
from genpi_core.synth.conversations import run_conversations
from genpi_core.synth.inputs import run_inputs
from schemas.config import InputsConfig, SamplingConfig
from schemas.datasets import (
    EpisodesSchema,
    MessagesSchema,
    QuarantineSchema,
    TargetsSchema,
)

pytestmark = pytest.mark.vllm

QUESTIONS = [
    "Do you have books about sailing?",
    "When does the library open on Sunday?",
    "Can I renew a book online?",
    "I lost my library card, what should I do?",
]


def _conversations(spec):
    first = user_turn(QUESTIONS[0])
    answered = first + [{"role": "assistant", "content": "Topic: collection\nAnswer: Yes, on the second floor."}]
    return [
        with_prompt(spec.prompt, first),
        without_prompt(first),
        environment_view(spec, answered),
        with_prompt(spec.prompt, answered + user_turn("And about knots?")),
    ]


def test_vllm_and_transformers_build_the_same_prompt_and_stop_tokens(vllm_backend, transformers_backend, example_spec):
    from vllm import SamplingParams

    for conversation in _conversations(example_spec):
        ours = vllm_backend.encode(conversation)
        assert ours == transformers_backend.encode(conversation)
        # and vLLM's own chat preprocessing (its template handling) renders the very same tokens
        rendered = vllm_backend.llm.chat(conversation, SamplingParams(max_tokens=1), use_tqdm=False)[0]
        assert list(rendered.prompt_token_ids) == ours
    assert vllm_backend.eos_ids == transformers_backend.eos_ids
    assert vllm_backend.tokenizer.convert_ids_to_tokens(vllm_backend.eos_ids) == ["<|im_end|>"]


def test_greedy_replies_match_the_transformers_backend(vllm_backend, transformers_backend, example_spec):
    conversations = [with_prompt(example_spec.prompt, user_turn(q)) for q in QUESTIONS]
    conversations += [without_prompt(user_turn(q)) for q in QUESTIONS]
    sampling = SamplingConfig(max_new_tokens=32)
    ours = vllm_backend.generate(conversations, sampling)
    reference = transformers_backend.generate(conversations, sampling)
    assert [c.text for c in ours] == [c.text for c in reference]
    assert [c.finish_reason for c in ours] == [c.finish_reason for c in reference]
    assert [c.prompt_tokens for c in ours] == [c.prompt_tokens for c in reference]
    assert all(c.text.startswith("Topic:") for c in ours[: len(QUESTIONS)])  # the prompt's format is followed


def test_seeded_sampling_is_repeatable(vllm_backend):
    conversations = [user_turn(q) for q in QUESTIONS]
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=24, seed=7)
    first = [c.text for c in vllm_backend.generate(conversations, sampling)]
    again = [c.text for c in vllm_backend.generate(conversations, sampling)]
    other = [c.text for c in vllm_backend.generate(conversations, sampling.model_copy(update={"seed": 8}))]
    assert first == again
    assert first != other


def test_role_swapped_synthesis_on_vllm(vllm_backend, example_spec, tmp_path):
    run_inputs(example_spec, "v" * 64, InputsConfig(max_inputs=4), None, tmp_path)  # 4 inputs from the pool
    greedy = SamplingConfig(max_new_tokens=48)
    rows = run_conversations(
        example_spec,
        tmp_path / "inputs.parquet",
        vllm_backend,
        greedy,
        greedy,
        SamplingConfig(max_new_tokens=32),
        2,
        tmp_path / "out",
    )
    out = tmp_path / "out"
    targets = read_table(out / "targets.parquet", TargetsSchema)
    messages = read_table(out / "messages.parquet", MessagesSchema)
    episodes = read_table(out / "episodes.parquet", EpisodesSchema)
    quarantine = read_table(out / "quarantine.parquet", QuarantineSchema)
    summary = episodes[["stop_reason", "agent_turns"]].to_string()
    assert len(episodes) == 4 and rows["episodes"] == 4, summary
    # every agent turn is accounted for: kept as a target or quarantined with its reason
    assert episodes["agent_turns"].sum() == len(targets) >= 1, summary
    normal = {"max turns", "environment ended the episode", "agent finished (stop pattern)"}
    assert len(quarantine) == (~episodes["stop_reason"].isin(normal)).sum(), summary
    assert set(targets["produced_by"]) == {vllm_backend.name}
    assert targets["teacher_output"].str.startswith("Topic:").all()
    first = targets[
        targets["turn"] == 0
    ]  # later base turns see the teacher's earlier replies and may copy their format
    assert not first["base_output"].str.startswith("Topic:").any()
    assert len(messages) == episodes["messages"].sum()

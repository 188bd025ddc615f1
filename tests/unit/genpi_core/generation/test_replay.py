"""Replay of greedy base-model replies: control logic, with a counting fake engine (no model needed)."""

from __future__ import annotations

from genpi_core.generation.base import ClosesOnExit, Completion
from genpi_core.generation.replay import ReplayBackend
from schemas.config import SamplingConfig


class CountingFakeEngine(ClosesOnExit):
    """Fake: answers "reply to <last message>" and counts calls, builds and closes."""

    name = "fake"
    built = 0

    def __init__(self) -> None:
        CountingFakeEngine.built += 1
        self.calls = 0
        self.closed = False

    def generate(self, conversations, sampling, desc="generate"):
        self.calls += 1
        return [Completion(f"reply to {c[-1]['content']}", "stop", 3, 2, 0.1) for c in conversations]

    def close(self) -> None:
        self.closed = True


def _convs(*texts):
    return [[{"role": "user", "content": t}] for t in texts]


def test_second_greedy_batch_is_replayed_without_building_the_engine(tmp_path):
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    CountingFakeEngine.built = 0
    with ReplayBackend(CountingFakeEngine, {"model": "m"}, tmp_path) as first:
        out = first.generate(_convs("a", "b"), greedy)
    assert [c.text for c in out] == ["reply to a", "reply to b"] and CountingFakeEngine.built == 1
    with ReplayBackend(CountingFakeEngine, {"model": "m"}, tmp_path) as again:
        replayed = again.generate(_convs("a", "b"), greedy)
        assert replayed == out and again.replayed == 1
    assert CountingFakeEngine.built == 1  # the engine never loaded for the replay


def test_other_model_other_sampling_or_other_inputs_miss(tmp_path):
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    with ReplayBackend(CountingFakeEngine, {"model": "m"}, tmp_path) as first:
        first.generate(_convs("a"), greedy)
    for identity, convs, sampling in (
        ({"model": "other"}, _convs("a"), greedy),
        ({"model": "m"}, _convs("b"), greedy),
        ({"model": "m"}, _convs("a"), SamplingConfig(temperature=0.0, max_new_tokens=9)),
    ):
        with ReplayBackend(CountingFakeEngine, identity, tmp_path) as backend:
            backend.generate(convs, sampling)
            assert backend.replayed == 0


def test_sampled_requests_always_generate(tmp_path):
    sampled = SamplingConfig(temperature=0.7, max_new_tokens=8)
    with ReplayBackend(CountingFakeEngine, {"model": "m"}, tmp_path) as backend:
        backend.generate(_convs("a"), sampled)
        backend.generate(_convs("a"), sampled)
        assert backend.engine().calls == 2 and backend.replayed == 0
    assert not list(tmp_path.iterdir())


def test_damaged_record_is_regenerated(tmp_path):
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    with ReplayBackend(CountingFakeEngine, {"model": "m"}, tmp_path) as backend:
        backend.generate(_convs("a"), greedy)
    (record,) = tmp_path.iterdir()
    record.write_text("{not json")
    with ReplayBackend(CountingFakeEngine, {"model": "m"}, tmp_path) as backend:
        assert backend.generate(_convs("a"), greedy)[0].text == "reply to a"
        assert backend.replayed == 0
        inner = backend.engine()
    assert inner.closed

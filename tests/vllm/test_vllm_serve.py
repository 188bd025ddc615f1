"""`vllm serve` (vLLM's CPU build) as the OpenAI-compatible server, scaled out as two replicas on
loopback, each pinned to one core: requests are spread across both, and the served chat template
renders the same prompt as our in-process backends (same prompt token counts, same greedy text)."""

from __future__ import annotations

import httpx
import pytest

from genpi_core.generation.factory import make_backend
from genpi_core.prompt.views import user_turn, with_prompt
from schemas.config import BackendConfig, ModelConfig, SamplingConfig
from tests.vllm.servers import start_vllm_serve, stop, wait_ready

pytestmark = [pytest.mark.vllm, pytest.mark.server]

SERVED = "smol"


@pytest.fixture(scope="module")
def replicas(embedded_model_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("vllm-serve")
    started = [start_vllm_serve(embedded_model_dir, SERVED, logs / f"replica{core}.log", core=core) for core in (0, 1)]
    try:
        for (proc, url), core in zip(started, (0, 1)):
            wait_ready(proc, url, logs / f"replica{core}.log")
        yield [url for _, url in started]
    finally:
        stop([proc for proc, _ in started])


def _served_requests(url: str) -> float:
    """Finished requests as counted by the server itself (its Prometheus metrics)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total{")
    )


def test_two_vllm_serve_replicas_share_the_load_and_match_in_process(replicas, transformers_backend, example_spec):
    before = [_served_requests(url) for url in replicas]
    backend = make_backend(
        ModelConfig(name_or_path="embedded"),
        BackendConfig(
            kind="openai", base_url=[f"{u}/v1" for u in replicas], served_model=SERVED, max_concurrency=4, timeout_s=300
        ),
    )
    questions = [
        "Do you have books about sailing?",
        "When are you open on Sunday?",
        "Can I print here?",
        "How do I renew a book?",
        "Is there a quiet room?",
        "Do you lend laptops?",
    ]
    conversations = [with_prompt(example_spec.prompt, user_turn(q)) for q in questions]
    sampling = SamplingConfig(max_new_tokens=24)
    served = backend.generate(conversations, sampling)
    backend.close()
    after = [_served_requests(url) for url in replicas]
    assert [b - a for a, b in zip(before, after)] == [3.0, 3.0]  # round-robin, seen from the servers' side
    local = transformers_backend.generate(conversations, sampling)
    # the server's chat template builds the prompt we build: same prompt length, same greedy reply
    assert [c.prompt_tokens for c in served] == [c.prompt_tokens for c in local]
    assert [c.text for c in served] == [c.text for c in local]

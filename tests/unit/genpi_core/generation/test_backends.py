"""Generation backends on the real embedded model: transformers in-process, and HTTP against real servers."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from genpi_core.generation.base import GenerationError
from genpi_core.generation.factory import make_backend
from genpi_core.prompt.views import user_turn, with_prompt, without_prompt
from schemas.config import BackendConfig, ModelConfig, SamplingConfig
from tests.conftest import transformers_serve

QUESTIONS = [
    "What time do you open on Monday?",
    "Can I print in colour?",
    "hi",
    "Do you have a 3D printer I could use for a school project?",
]
GREEDY = SamplingConfig(max_new_tokens=24)


def _hf_generate_reference(backend, conversations, max_new_tokens):
    """transformers' own generate() on a left-padded batch: the reference our decoding loop must match."""
    import torch

    tok = backend.tokenizer
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = backend.model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
        )
    return [tok.decode(o[enc.input_ids.shape[1] :], skip_special_tokens=True).strip() for o in out]


@pytest.mark.slow  # over 50 s in the default run (docs/testing.md, session 6 timings)
def test_shared_prefix_gives_the_same_replies_as_plain_generate(transformers_backend, example_spec):
    """Attending to the prompt once must be an exact speed-up, never a change in output."""
    conversations = [with_prompt(example_spec.prompt, user_turn(q)) for q in QUESTIONS]
    shared = transformers_backend.generate(conversations, GREEDY)
    transformers_backend.share_prefix = False
    try:
        plain = transformers_backend.generate(conversations, GREEDY)
    finally:
        transformers_backend.share_prefix = True
    reference = _hf_generate_reference(transformers_backend, conversations, GREEDY.max_new_tokens)
    assert [c.text for c in shared] == [c.text for c in plain] == reference
    assert all(c.prompt_tokens > 1000 for c in shared)
    assert any(c.text.startswith("Topic:") for c in shared)  # the prompt's format takes effect


def test_prompt_changes_behaviour_and_finish_reasons_are_reported(transformers_backend, example_spec):
    with_p = transformers_backend.generate([with_prompt(example_spec.prompt, user_turn(q)) for q in QUESTIONS], GREEDY)
    without = transformers_backend.generate([without_prompt(user_turn(q)) for q in QUESTIONS], GREEDY)
    assert sum(c.text.startswith("Topic:") for c in with_p) >= 3
    assert not any(c.text.startswith("Topic:") for c in without)
    assert all(c.finish_reason in ("stop", "length") for c in with_p + without)
    for c in with_p + without:
        assert (c.finish_reason == "length") == (c.completion_tokens == GREEDY.max_new_tokens)


def test_sampling_is_seeded(transformers_backend):
    sampling = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=16, seed=7)
    convs = [user_turn(q) for q in QUESTIONS]
    first = [c.text for c in transformers_backend.generate(convs, sampling)]
    again = [c.text for c in transformers_backend.generate(convs, sampling)]
    other = [c.text for c in transformers_backend.generate(convs, sampling.model_copy(update={"seed": 8}))]
    assert first == again
    assert first != other


def test_context_overflow_is_an_error_not_a_truncation(transformers_backend):
    too_long = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(ValueError, match="over the model's context"):
        transformers_backend.generate([too_long], GREEDY)


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP backend
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers_server(embedded_model_dir, tmp_path_factory):
    """A real `transformers serve` on 127.0.0.1 serving the embedded model."""
    with transformers_serve(embedded_model_dir, tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.mark.server
def test_openai_backend_against_real_server(transformers_server, embedded_model_dir, monkeypatch, caplog):
    secret = "sk-genpi-test-sentinel-0000"
    monkeypatch.setenv("GENPI_API_KEY", secret)
    backend = make_backend(
        ModelConfig(name_or_path=embedded_model_dir),
        BackendConfig(kind="openai", base_url=transformers_server, max_concurrency=2, timeout_s=120),
    )
    convs = [user_turn("What is the capital of France?"), user_turn("Say hello.")]
    out = backend.generate(convs, SamplingConfig(max_new_tokens=16))
    backend.close()
    assert len(out) == 2 and all(c.text for c in out)
    assert "paris" in out[0].text.lower()
    assert secret not in caplog.text and secret not in backend.name


class _FlakyHandler(BaseHTTPRequestHandler):
    """A real local HTTP server that fails the first N requests with 503, then answers like an OpenAI server."""

    failures_left = 2
    requests_seen = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        type(self).requests_seen += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        body = json.dumps(
            {
                "choices": [{"message": {"content": " ok "}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def test_openai_backend_retries_5xx_then_succeeds():
    handler = type("Flaky", (_FlakyHandler,), {"failures_left": 2, "requests_seen": 0})
    server, url = _serve(handler)
    try:
        backend = make_backend(
            ModelConfig(name_or_path="m"), BackendConfig(kind="openai", base_url=url, max_retries=3, max_concurrency=1)
        )
        out = backend.generate([user_turn("x")], GREEDY)
        assert out[0].text == "ok" and out[0].prompt_tokens == 5
        assert handler.requests_seen == 3
    finally:
        server.shutdown()


def test_openai_backend_gives_up_with_a_clear_error():
    handler = type("Down", (_FlakyHandler,), {"failures_left": 99, "requests_seen": 0})
    server, url = _serve(handler)
    try:
        backend = make_backend(ModelConfig(name_or_path="m"), BackendConfig(kind="openai", base_url=url, max_retries=1))
        with pytest.raises(
            GenerationError, match=rf"{url}: request 0 failed after 2 attempts \(last error: HTTP 503\)"
        ):
            backend.generate([user_turn("x")], GREEDY)
    finally:
        server.shutdown()


def test_openai_backend_spreads_requests_across_replicas():
    first = type("ReplicaA", (_FlakyHandler,), {"failures_left": 0, "requests_seen": 0})
    second = type("ReplicaB", (_FlakyHandler,), {"failures_left": 0, "requests_seen": 0})
    (server_a, url_a), (server_b, url_b) = _serve(first), _serve(second)
    try:
        backend = make_backend(
            ModelConfig(name_or_path="m"), BackendConfig(kind="openai", base_url=[url_a, url_b], max_concurrency=4)
        )
        out = backend.generate([user_turn(f"q{i}") for i in range(6)], GREEDY)
        assert [c.text for c in out] == ["ok"] * 6
        assert first.requests_seen == second.requests_seen == 3
    finally:
        server_a.shutdown()
        server_b.shutdown()


def test_openai_backend_fails_over_to_the_next_replica():
    down = type("Down2", (_FlakyHandler,), {"failures_left": 99, "requests_seen": 0})
    up = type("Up2", (_FlakyHandler,), {"failures_left": 0, "requests_seen": 0})
    (server_a, url_a), (server_b, url_b) = _serve(down), _serve(up)
    try:
        backend = make_backend(
            ModelConfig(name_or_path="m"),
            BackendConfig(kind="openai", base_url=[url_a, url_b], max_retries=1, max_concurrency=1),
        )
        out = backend.generate([user_turn("q0"), user_turn("q1")], GREEDY)
        assert [c.text for c in out] == ["ok", "ok"] and up.requests_seen == 2
    finally:
        server_a.shutdown()
        server_b.shutdown()

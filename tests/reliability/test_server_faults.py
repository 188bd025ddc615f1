"""Generation server faults: the product's OpenAI backend and real synthesis stages against a server that fails.

The server is ``fault_server.FaultServer`` (a FAKE in how it fails; its good answers are real
generations of the embedded model). What is checked:

- transient faults (500/502/503/429, timeouts, connections closed mid-reply or unanswered, malformed
  JSON, bodies without ``choices`` or with non-text content) are retried with bounded, growing
  backoff and change nothing: the same completions, the same stage tables as a clean run;
- ``Retry-After`` is honoured (seconds and HTTP-date forms) and capped;
- bad *content* (empty, cut at the length cap) is not retried but quarantined with its reason;
- a server that stays down fails the batch quickly with an error naming the server(s), the request,
  its attempts and the requests sent; a re-run against a healthy server resumes from the last
  finished turn, regenerates nothing finished and ends with the clean run's rows;
- with two replicas, a dead one is skipped and the other serves every request.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pandas as pd
import pytest

import genpi_core.generation.openai_backend as openai_backend
from genpi_core import pipeline
from genpi_core.generation.base import GenerationError
from genpi_core.generation.factory import make_backend
from genpi_core.generation.openai_backend import backoff_s, retry_after_s
from schemas.artifacts import (
    CHECKPOINT_DIR,
    EPISODES_FILE,
    MESSAGES_FILE,
    QUARANTINE_FILE,
    TARGETS_FILE,
)
from schemas.config import (
    BackendConfig,
    ConversationsConfig,
    InputsConfig,
    ModelConfig,
    PipelineConfig,
    ReasonsConfig,
    SamplingConfig,
    SynthConfig,
)
from tests.reliability.fault_server import FaultServer

SPEC = """\
name: fault-desk
description: A tiny help-desk prompt for the server-fault tests.
environment: A library patron who asks one short question at a time.
prompt:
  dialogue:
    - user: >-
        You are the help desk of Elm Street Library. We are open 9 am to 5 pm, Monday to Friday, and
        closed at weekends. Loans last 21 days. Answer every question in one short sentence.
    - agent: Understood.
    - user: Do you open on Saturday?
    - agent: No, we are closed at weekends.
seed_inputs: ["When do you open on Monday?", "How long can I keep a book?"]
inputs:
  pool: ["When do you open?", "Can I keep a book for a month?", "Are you open on Sunday?"]
conversation:
  max_turns: 2
"""
CONVERSATION_TABLES = (MESSAGES_FILE, TARGETS_FILE, EPISODES_FILE, QUARANTINE_FILE)
SHORT = SamplingConfig(max_new_tokens=8)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


LABELS = {
    "sleep": "reply slower than the client timeout",
    "close": "connection closed mid-reply",
    "drop": "connection closed without a reply",
    "malformed": "malformed JSON body (HTTP 200)",
    "no_choices": "JSON body without `choices` (HTTP 200)",
    "bad_type": "`content` not a string (HTTP 200)",
}
QUESTIONS = [_user(q) for q in ("Say hello.", "What is 2 + 2?", "Name a colour.", "Say goodbye.")]


def _backend(url, **kw):
    return make_backend(ModelConfig(), BackendConfig(kind="openai", base_url=url, **kw))


@pytest.fixture(scope="module")
def server(transformers_backend):
    with FaultServer(transformers_backend) as s:
        yield s


@pytest.fixture
def fresh(server):
    server.set()
    yield server
    server.set()


def _dead_url() -> str:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


# --- the backend alone (default suite, seconds) ------------------------------------------------------------


def test_transient_faults_are_retried_and_change_nothing(fresh, monkeypatch, faults):
    clean_backend = _backend(fresh.url, max_concurrency=2)
    clean = [c.text for c in clean_backend.generate(QUESTIONS, SHORT)]
    clean_backend.close()
    assert all(clean) and fresh.generated >= len(QUESTIONS)
    injected = 0
    monkeypatch.setattr(
        openai_backend, "_BACKOFF_BASE_S", 0.05
    )  # the schedule is the next test's; here: what is retried
    for fault in ("500", "502", "503", "429", "sleep", "close", "drop", "malformed", "no_choices", "bad_type"):
        backend = _backend(fresh.url, max_concurrency=2, max_retries=3, timeout_s=1.0)
        mark = fresh.mark()
        fresh.set([fault, fault, fault])  # three faults over four requests: one request meets two in a row
        out = backend.generate(QUESTIONS, SHORT)
        backend.close()
        assert [c.text for c in out] == clean, fault
        assert fresh.faults_since(mark)[fault] == 3 and fresh.requests_since(mark) == len(QUESTIONS) + 3, fault
        injected += 3
        faults.add(
            "server",
            LABELS.get(fault, f"HTTP {fault}"),
            f"fault server answers 3 of 7 requests with `{fault}` (4 prompts, max_retries=3)",
            3,
            "retried; the 4 completions equal the clean run's",
        )
    assert injected == 30


def test_backoff_grows_is_bounded_and_honours_retry_after(fresh, monkeypatch, faults):
    # the schedule itself: 0.5 s doubling with jitter in [0.5, 1], never over 30 s
    for attempt in range(1, 30):
        assert min(30.0, 0.5 * 2 ** (attempt - 1)) * 0.5 <= backoff_s(attempt) <= min(30.0, 0.5 * 2 ** (attempt - 1))
    assert retry_after_s("7") == 7.0 and retry_after_s("garbage") is None and retry_after_s(None) is None
    backend = _backend(fresh.url, max_concurrency=1, max_retries=4)
    mark = fresh.mark()
    fresh.set(["503", "503", "503"])
    backend.generate(QUESTIONS[:1], SHORT)
    times = [s.at for s in fresh.seen[mark:]]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 3
    for attempt, gap in enumerate(gaps, start=1):  # 0.25-0.5, 0.5-1, 1-2 s (+ scheduling slack)
        assert 0.5 * 0.5 * 2 ** (attempt - 1) - 0.05 <= gap <= 0.5 * 2 ** (attempt - 1) + 0.5, gaps
    faults.add(
        "server",
        "HTTP 503 three times in a row",
        "fault server, one request, max_retries=4",
        3,
        f"waits {', '.join(f'{g:.2f}' for g in gaps)} s: exponential, jittered, capped at 30 s",
    )

    waited = {}
    for fault in ("429:2", "503:date"):
        mark = fresh.mark()
        fresh.set([fault])
        backend.generate(QUESTIONS[:1], SHORT)
        first, second = fresh.seen[mark : mark + 2]
        waited[fault] = second.at - first.at
    assert waited["429:2"] >= 1.95 and waited["503:date"] >= 0.9, waited  # the date form has 1 s resolution
    monkeypatch.setattr(openai_backend, "_RETRY_AFTER_CAP_S", 1.0)  # a server asking for an hour gets the cap
    mark = fresh.mark()
    fresh.set(["429:3600"])
    backend.generate(QUESTIONS[:1], SHORT)
    first, second = fresh.seen[mark : mark + 2]
    assert 0.9 <= second.at - first.at <= 2.5
    backend.close()
    faults.add(
        "server",
        "HTTP 429/503 with Retry-After",
        "fault server sends Retry-After: 2, an HTTP date, and 3600",
        3,
        f"waited {waited['429:2']:.2f} s and {waited['503:date']:.2f} s; 3600 s capped",
    )


def test_a_server_echoing_the_key_back_never_puts_it_in_errors_or_logs(fresh, monkeypatch, caplog, faults):
    """A refusal and a broken reply whose bodies repeat the request's Authorization header: the error text
    quotes the body (it says what went wrong) with the key replaced, and no log line carries it."""
    sentinel = "sk-genpi-echo-sentinel-51c9e0"
    monkeypatch.setenv("GENPI_API_KEY", sentinel)
    messages = []
    for script in (["echo_400"], ["echo_malformed"]):
        backend = _backend(fresh.url, max_retries=0)
        fresh.set(script, then="echo_malformed")
        with pytest.raises(GenerationError) as info:
            backend.generate([_user("hello")], SHORT)
        backend.close()
        messages.append(str(info.value))
    assert fresh.seen[-1].authorization == f"Bearer {sentinel}", "the key did reach the server in its header"
    for message in messages:
        assert sentinel not in message and "Bearer [redacted]" in message, message
    assert sentinel not in caplog.text
    faults.add(
        "security",
        "server echoes the request headers (API key) in its error body",
        "fault server: HTTP 400 and a non-JSON HTTP 200 whose bodies repeat the Authorization header",
        2,
        "GenerationError quotes the body with the key as [redacted]; key in no log line",
    )


def test_server_down_fails_fast_naming_servers_and_counts(fresh, monkeypatch, caplog, faults):
    sentinel = "sk-genpi-server-fault-sentinel-7f3a"
    monkeypatch.setenv("GENPI_API_KEY", sentinel)
    dead = _dead_url()
    backend = _backend([fresh.url, dead], max_concurrency=4, max_retries=2)
    mark = fresh.mark()
    fresh.set([], then="503")
    questions = [_user(f"question {i}") for i in range(24)]
    started = time.monotonic()
    with pytest.raises(GenerationError) as info:
        backend.generate(questions, SHORT)
    seconds = time.monotonic() - started
    backend.close()
    message = str(info.value)
    assert f"{fresh.url}, {dead}: request " in message and "failed after 3 attempts" in message
    assert re.search(r"requests sent so far: .*" + re.escape(f"{fresh.url}: ") + r"\d+", message)
    assert re.search(r"\d+ of 24 requests of this batch had finished", message)
    # the first request out of attempts stops the batch: nobody retries 24 requests for minutes
    assert seconds < 6, seconds
    assert fresh.requests_since(mark) < 24 * 3
    # the key went to the server in its header, and into no error or log line
    assert {s.authorization for s in fresh.seen[mark:]} == {f"Bearer {sentinel}"}
    assert sentinel not in message and sentinel not in caplog.text and "request 0 to" in caplog.text
    faults.add(
        "server",
        "server down for good (HTTP 503 on one replica, connection refused on the other)",
        "fault server answers 503 to everything; the second base URL has no listener",
        fresh.requests_since(mark),
        f"GenerationError in {seconds:.1f} s naming both URLs, the request, 3 attempts and the requests sent",
    )

    mark = fresh.mark()
    fresh.set(["400"])
    backend = _backend(fresh.url, max_concurrency=1, max_retries=3)
    with pytest.raises(
        GenerationError, match=rf"{re.escape(fresh.url)}/chat/completions: request 0 refused with HTTP 400"
    ):
        backend.generate(QUESTIONS[:1], SHORT)
    backend.close()
    assert fresh.requests_since(mark) == 1  # a refusal is not retried
    faults.add(
        "server", "HTTP 400 refusal", "fault server answers 400 once", 1, "not retried; error names URL and request"
    )


def test_one_dead_replica_the_other_serves(fresh, faults):
    dead = _dead_url()
    questions = QUESTIONS * 2
    clean = _backend(fresh.url)
    expected = [c.text for c in clean.generate(questions, SHORT)]  # also fills the server's cache: timing below is ours
    clean.close()
    backend = _backend([dead, fresh.url], max_concurrency=1, max_retries=2)
    started = time.monotonic()
    out = backend.generate(questions, SHORT)
    seconds = time.monotonic() - started
    backend.close()
    assert [c.text for c in out] == expected
    # the dead replica is tried once, then skipped while the live one serves (no backoff sleeps)
    assert backend.requests_per_url[dead] == 1 and backend.requests_per_url[fresh.url] == len(questions)
    assert seconds < 3, seconds
    faults.add(
        "server",
        "one of two replicas dead",
        "second base URL with no listener (connection refused)",
        1,
        f"{len(questions)}/{len(questions)} served by the live replica; dead one tried once, then skipped",
    )

    # a replica that asks for time (429, Retry-After: 30) is left alone that long; the other one serves meanwhile
    with FaultServer(fresh.engine, script=["429:30"]) as busy:
        backend = _backend([busy.url, fresh.url], max_concurrency=1, max_retries=2)
        started = time.monotonic()
        out = backend.generate(QUESTIONS, SHORT)
        seconds = time.monotonic() - started
        backend.close()
        assert [c.text for c in out] == expected[: len(QUESTIONS)]
        assert busy.requests_since(0) == 1 and backend.requests_per_url[fresh.url] == len(QUESTIONS)
        assert seconds < 20, seconds  # nobody waited out the 30 s
    faults.add(
        "server",
        "one of two replicas busy (HTTP 429, Retry-After: 30)",
        "fault server replica answers 429 once",
        1,
        f"retried on the other replica at once; busy one skipped for the rest of the batch ({seconds:.1f} s)",
    )


def test_bad_content_is_returned_as_such_not_retried(fresh, faults):
    backend = _backend(fresh.url, max_concurrency=1, max_retries=3)
    mark = fresh.mark()
    fresh.set(["empty", "truncated"])
    out = backend.generate(QUESTIONS[:2], SamplingConfig(max_new_tokens=24))
    backend.close()
    assert fresh.requests_since(mark) == 2  # content problems are the stage's to quarantine, not the transport's
    assert out[0].text == "" and out[0].finish_reason == "stop"
    assert out[1].text and out[1].finish_reason == "length" and out[1].completion_tokens <= 3


# --- real synthesis stages through the backend --------------------------------------------------------------


def _config(runs: Path, url: str, **backend) -> PipelineConfig:
    return PipelineConfig(
        runs_dir=str(runs),
        backend=BackendConfig(kind="openai", base_url=url, **{"max_concurrency": 2, "max_retries": 3, **backend}),
        synth=SynthConfig(
            inputs=InputsConfig(source="pool", max_inputs=3),
            conversations=ConversationsConfig(max_turns=2, environment=SamplingConfig(max_new_tokens=24)),
            teacher=SamplingConfig(max_new_tokens=32),
            base=SamplingConfig(max_new_tokens=12),
            reasons=ReasonsConfig(enabled=False),
        ),
    )


def _conversations(spec: Path, cfg: PipelineConfig):
    ingested = pipeline.ingest_stage(spec, cfg.ingest, cfg.model, cfg.runs_dir)
    inputs = pipeline.inputs_stage(ingested, cfg.synth.inputs, *cfg.synth.generator.resolve(cfg.model, cfg.backend))
    return ingested, inputs, pipeline.conversations_stage(ingested, inputs, cfg.synth, cfg.model, cfg.backend)


def _tables(out) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(Path(out.dir) / name) for name in CONVERSATION_TABLES}


def _assert_same(tables: dict[str, pd.DataFrame], clean: dict[str, pd.DataFrame]) -> None:
    for name in CONVERSATION_TABLES:
        pd.testing.assert_frame_equal(tables[name], clean[name], obj=name)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "fault_desk.yaml"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def clean_conversations(server, spec_file, tmp_path_factory):
    """One uninterrupted conversations stage against the healthy server: the reference rows and request count."""
    server.set()
    mark = server.mark()
    _, _, out = _conversations(spec_file, _config(tmp_path_factory.mktemp("clean"), server.url))
    return _tables(out), server.requests_since(mark), out


@pytest.mark.reliability
def test_conversations_stage_survives_transient_faults(fresh, spec_file, clean_conversations, tmp_path, faults):
    clean, clean_requests, clean_out = clean_conversations
    assert clean_out.rows["agent_turns"] > 0
    mark = fresh.mark()
    script = ["ok", "500", "close", "ok", "malformed", "429:1", "ok", "drop", "no_choices", "ok", "503", "sleep"]
    fresh.set(script * 3)
    # faults come in runs of up to 3 on one request (two requests share the script), hence 6 retries
    _, _, out = _conversations(spec_file, _config(tmp_path, fresh.url, timeout_s=2.0, max_retries=6))
    injected = sum(n for f, n in fresh.faults_since(mark).items() if f != "ok")
    assert injected >= 12 and fresh.requests_since(mark) == clean_requests + injected
    _assert_same(_tables(out), clean)
    faults.add(
        "server",
        "mixed transient faults during the conversations stage",
        "fault server script: 500, 503, 429+Retry-After, close mid-reply, drop, malformed JSON, no choices, "
        "sleep past the 2 s timeout",
        injected,
        f"stage completed; messages/targets/episodes/quarantine equal the clean run's ({clean_requests} requests); "
        "0 rows lost",
    )


def test_conversations_stage_resumes_after_the_server_stays_down(
    fresh, spec_file, clean_conversations, tmp_path, faults
):
    clean, clean_requests, _ = clean_conversations
    cfg = _config(tmp_path, fresh.url, max_retries=2)
    mark = fresh.mark()
    fresh.set(
        ["ok"] * 6, then="503"
    )  # the first agent turn (3 teacher + 3 base requests) finishes, then the server dies
    with pytest.raises(GenerationError) as info:
        _conversations(spec_file, cfg)
    down = fresh.requests_since(mark) - 6
    assert f"{fresh.url}: request " in str(info.value) and "failed after 3 attempts" in str(info.value)
    assert "requests sent so far" in str(info.value)
    stage_dir = next(tmp_path.glob("fault-desk/*/conversations"))
    assert not (stage_dir / "_manifest.json").exists()  # not finished ...
    assert not any((stage_dir / name).exists() for name in CONVERSATION_TABLES)  # ... and no table looks finished
    assert json.loads((stage_dir / CHECKPOINT_DIR / "progress.json").read_text())["completed_steps"] == 1

    fresh.set()  # the server is back
    mark = fresh.mark()
    _, _, out = _conversations(spec_file, cfg)
    resumed_requests = fresh.requests_since(mark)
    assert resumed_requests == clean_requests - 6  # the finished turn was reused, not generated again
    _assert_same(_tables(out), clean)
    faults.add(
        "server",
        "server down for good mid-stage (conversations)",
        "fault server answers 503 to every request after the first agent turn; max_retries=2",
        down,
        "GenerationError naming the URL and attempts; no manifest, no table left; the re-run resumed at turn 2 "
        f"({resumed_requests} of {clean_requests} requests) and equals the clean run; 0 rows lost",
    )


@pytest.mark.reliability
def test_conversations_quarantine_bad_content(fresh, spec_file, clean_conversations, tmp_path, faults):
    clean, _, _ = clean_conversations
    cfg = _config(tmp_path, fresh.url, max_concurrency=1)
    mark = fresh.mark()
    fresh.set(["empty", "truncated"])  # teacher replies of the first two conversations
    _, _, out = _conversations(spec_file, cfg)
    assert fresh.faults_since(mark)["empty"] == 1 and fresh.faults_since(mark)["truncated"] == 1
    tables = _tables(out)
    quarantine = tables[QUARANTINE_FILE]
    reasons = " | ".join(quarantine["error"])
    assert "empty agent turn" in reasons and "agent turn truncated at the length cap" in reasons
    # nothing lost: every conversation is accounted for, the two bad ones ended with their reason
    episodes = tables[EPISODES_FILE]
    assert len(episodes) == len(clean[EPISODES_FILE]) == 3
    assert (episodes["status"] == "ended").all() and set(episodes["conversation_id"]) == set(
        clean[EPISODES_FILE]["conversation_id"]
    )
    # request i of a turn is live conversation i: the first conversation got the empty reply, the second the cut one
    first, second = list(clean[EPISODES_FILE]["conversation_id"])[:2]
    errors = quarantine.groupby("row_key")["error"].apply(list)
    assert "turn 0: empty agent turn" in errors[first]
    assert "turn 0: agent turn truncated at the length cap" in errors[second]
    assert episodes.set_index("conversation_id").loc[first, "stop_reason"] == "empty agent turn"
    faults.add(
        "server",
        "empty and length-truncated completions (conversations)",
        "fault server answers 1 teacher request with empty content, 1 with a real reply cut at 3 tokens",
        2,
        "both quarantined with their reason, episodes ended with it; none retried, none lost",
    )


@pytest.mark.reliability
def test_inputs_stage_retries_and_quarantines_generator_faults(fresh, spec_file, tmp_path, faults):
    def cfg(runs: str, **backend) -> PipelineConfig:
        base = _config(tmp_path / runs, fresh.url, max_concurrency=1, **backend)
        inputs = InputsConfig(
            source="generate",
            max_inputs=6,
            num_generated=4,
            per_request=2,
            oversample=1.5,
            sampling=SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=40, seed=3),
        )
        return base.model_copy(update={"synth": base.synth.model_copy(update={"inputs": inputs})})

    def run(runs: str, **backend):
        c = cfg(runs, **backend)
        ingested = pipeline.ingest_stage(spec_file, c.ingest, c.model, c.runs_dir)
        out = pipeline.inputs_stage(ingested, c.synth.inputs, *c.synth.generator.resolve(c.model, c.backend))
        return out, pd.read_parquet(out.path("inputs")), pd.read_parquet(out.path("quarantine"))

    fresh.set()
    clean_out, clean_inputs, clean_quarantine = run("clean")
    mark = fresh.mark()
    fresh.set(["500", "close", "ok", "malformed", "429:1"])
    _, inputs, quarantine = run("transient", timeout_s=5.0)
    transient = sum(n for f, n in fresh.faults_since(mark).items() if f != "ok")
    assert transient == 4
    pd.testing.assert_frame_equal(inputs, clean_inputs)
    pd.testing.assert_frame_equal(quarantine, clean_quarantine)

    mark = fresh.mark()
    fresh.set(["empty", "truncated"])  # 3 generator requests: the first empty, the second cut at 3 tokens
    out, inputs, quarantine = run("content", timeout_s=6.0)
    assert fresh.requests_since(mark) == 3
    reasons = dict(zip(quarantine["row_key"], quarantine["error"]))
    assert reasons.get("reply-0") == "empty generator reply"
    cut = [e for e in quarantine["error"] if "cut off at the generator's length cap" in e or "holds no messages" in e]
    assert cut, reasons
    # every generated text is an input or a quarantine row
    generated_q = quarantine["raw"].str.contains('"source": "generated"').sum()
    assert (inputs["source"] == "generated").sum() + generated_q == out.rows["generated_written"]
    assert clean_out.rows["inputs"] > 0
    faults.add(
        "server",
        "transient faults during the inputs stage (generator)",
        "fault server: 500, close mid-reply, malformed JSON, 429+Retry-After over 3 generator requests",
        transient,
        "inputs.parquet and quarantine.parquet equal the clean run's",
    )
    faults.add(
        "server",
        "empty and truncated generator replies (inputs)",
        "fault server: 1 empty reply, 1 real reply cut at 3 tokens with finish_reason=length",
        2,
        "empty reply and cut-off message quarantined with their reason; every generated text accounted for",
    )

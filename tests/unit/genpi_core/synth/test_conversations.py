"""Role-swapped synthesis: the environment's view, stop conditions, quarantine, per-turn batching
(with a scripted fake engine, for control logic only) and resume after killing a real run."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from genpi_core.environment.simulated import environment_view
from genpi_core.generation.base import Completion
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
from schemas.spec import PromptSpec

SPEC = PromptSpec.model_validate(
    {
        "name": "shop",
        "environment": "a customer of a bike shop",
        "prompt": {
            "dialogue": [
                {"user": "INSTRUCTIONS: answer as Shop: ..."},
                {"agent": "Shop: ok"},
                {"user": "do you fix tyres?"},
                {"agent": "Shop: yes, 10 dollars"},
            ]
        },
        "checks": [{"type": "must_start_with", "value": "Shop:"}],
        "conversation": {"max_turns": 3, "stop_pattern": "BYE"},
    }
)


def test_environment_sees_flipped_roles_and_the_agents_latest_action():
    conversation = [
        {"role": "user", "content": "hi, can you fix my bike?"},
        {"role": "assistant", "content": "Shop: sure"},
    ]
    view = environment_view(SPEC, conversation)
    assert view[0]["role"] == "system" and "a customer of a bike shop" in view[0]["content"]
    assert "[END_CONVERSATION]" in view[0]["content"]
    assert all("INSTRUCTIONS" not in m["content"] for m in view)  # the agent's instruction turn is skipped
    assert [(m["role"], m["content"]) for m in view[1:]] == [
        ("user", "Shop: ok"),
        ("assistant", "do you fix tyres?"),
        ("user", "Shop: yes, 10 dollars"),
        ("assistant", "hi, can you fix my bike?"),
        ("user", "Shop: sure"),  # the latest agent action, not empty
    ]


class ScriptedFakeBackend:
    """A fake engine (control-logic tests only). Each conversation's replies come from a script keyed on its
    first message and on the role being played (teacher = with the prompt, base, env); which reply is
    picked depends only on the conversation so far, so a resumed run gets the same replies."""

    name = "scripted-fake"

    def __init__(self, script):
        self.script = script
        self.calls: list[int] = []

    def generate(self, conversations, sampling, desc=""):
        self.calls.append(len(conversations))
        out = []
        for conv in conversations:
            is_env = conv[0]["role"] == "system" and "You are playing" in conv[0]["content"]
            start = next(i for i, m in enumerate(conv) if m["content"] in self.script)
            role = "env" if is_env else ("teacher" if any("INSTRUCTIONS" in m["content"] for m in conv) else "base")
            replies_so_far = sum(m["role"] == "assistant" for m in conv[start + 1 :])
            text, finish = self.script[conv[start]["content"]][role][replies_so_far]
            out.append(Completion(text, finish, 10, 5, 0.0))
        return out

    def close(self):
        pass


def _inputs(tmp_path, texts):
    spec = SPEC.model_copy(update={"inputs": SPEC.inputs.model_copy(update={"pool": texts})})
    run_inputs(spec, "v" * 64, InputsConfig(max_inputs=len(texts)), None, tmp_path)
    return tmp_path / "inputs.parquet"


def test_stop_conditions_quarantine_and_one_call_per_turn(tmp_path):
    ok = lambda t: (t, "stop")  # noqa: E731
    script = {
        "ends by marker": {
            "teacher": [ok("Shop: a"), ok("Shop: b")],
            "base": [ok("base a"), ok("base b")],
            "env": [ok("thanks, one more thing?"), ok("[END_CONVERSATION]")],
        },
        "agent says bye": {"teacher": [ok("Shop: BYE now")], "base": [ok("base")], "env": []},
        "runs to max": {
            "teacher": [ok("Shop: 1"), ok("Shop: 2"), ok("Shop: 3")],
            "base": [ok("b")] * 3,
            "env": [ok("and then?"), ok("and after that?")],
        },
        "env truncated": {"teacher": [ok("Shop: x")], "base": [ok("b")], "env": [("blah blah", "length")]},
        "env plays agent": {"teacher": [ok("Shop: y")], "base": [ok("b")], "env": [ok("Shop: I am the shop now")]},
        "teacher empty": {"teacher": [ok("")], "base": [ok("b")], "env": []},
    }
    backend = ScriptedFakeBackend(script)
    inputs = _inputs(tmp_path, list(script))
    g = SamplingConfig(max_new_tokens=8)
    rows = run_conversations(SPEC, inputs, backend, g, g, g, SPEC.conversation.max_turns, tmp_path / "out")
    episodes = read_table(tmp_path / "out" / "episodes.parquet", EpisodesSchema)
    first = dict(
        zip(
            read_table(tmp_path / "out" / "messages.parquet", MessagesSchema).query("turn == 0")["conversation_id"],
            read_table(tmp_path / "out" / "messages.parquet", MessagesSchema).query("turn == 0")["content"],
        )
    )
    reasons = {first[c]: r for c, r in zip(episodes["conversation_id"], episodes["stop_reason"])}
    assert reasons == {
        "ends by marker": "environment ended the episode",
        "agent says bye": "agent finished (stop pattern)",
        "runs to max": "max turns",
        "env truncated": "environment turn truncated at the length cap",
        "env plays agent": "role-confused: the environment answered in the agent's format",
        "teacher empty": "empty agent turn",
    }
    targets = read_table(tmp_path / "out" / "targets.parquet", TargetsSchema)
    assert sorted(targets.groupby("conversation_id").size().tolist()) == [
        1,
        1,
        1,
        2,
        3,
    ]  # the empty turn is quarantined
    quarantine = read_table(tmp_path / "out" / "quarantine.parquet", QuarantineSchema)
    assert len(quarantine) == 3  # truncated env, env in agent format, empty teacher turn: each with a row
    # one generate call per role per step over the live conversations: 6 teacher + 6 base, 4 env, 2+2, 2 env, 1+1
    assert backend.calls == [6, 6, 4, 2, 2, 2, 1, 1] and rows["agent_turns"] == len(targets)


def test_crash_mid_checkpoint_resumes_from_the_previous_complete_step(tmp_path):
    ok = lambda t: (t, "stop")  # noqa: E731
    script = {
        f"q{i}": {
            "teacher": [ok(f"Shop: a{i}"), ok(f"Shop: b{i}")],
            "base": [ok("x"), ok("y")],
            "env": [ok(f"and {i}?")],
        }
        for i in range(3)
    }
    g = SamplingConfig(max_new_tokens=8)
    inputs = _inputs(tmp_path, list(script))
    reference = run_conversations(SPEC, inputs, ScriptedFakeBackend(script), g, g, g, 2, tmp_path / "ref")

    class Crash(Exception):
        pass

    def crash_after(step):
        if step == 2:
            raise Crash

    with pytest.raises(Crash):
        run_conversations(
            SPEC, inputs, ScriptedFakeBackend(script), g, g, g, 2, tmp_path / "run", after_step=crash_after
        )
    state = tmp_path / "run" / "_state"
    (state / "step-003").mkdir()  # a half-written next checkpoint, as a kill mid-write would leave it
    (state / "step-003" / "messages.parquet").write_bytes(b"PAR1 truncated")
    backend = ScriptedFakeBackend(script)
    resumed = run_conversations(SPEC, inputs, backend, g, g, g, 2, tmp_path / "run")
    assert backend.calls == [3, 3]  # only the last agent step ran again
    assert resumed == reference
    for table in ("messages", "targets", "episodes", "quarantine"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "ref" / f"{table}.parquet"),
            pd.read_parquet(tmp_path / "run" / f"{table}.parquet"),
        )


KILLABLE_RUN = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from genpi_core.synth.conversations import run_conversations
    from genpi_core.generation.factory import make_backend
    from genpi_core.ingest import load_spec
    from schemas.config import BackendConfig, ModelConfig, SamplingConfig
    spec = load_spec(sys.argv[1])
    backend = make_backend(ModelConfig(), BackendConfig(batch_size=4))
    g = SamplingConfig(max_new_tokens=int(sys.argv[4]))
    run_conversations(spec, Path(sys.argv[2]), backend, g, g, g, 2, Path(sys.argv[3]))
    print("finished")
    """
)


def _run(spec_path, inputs, out, tokens=48):
    return subprocess.Popen(
        [sys.executable, "-c", KILLABLE_RUN, str(spec_path), str(inputs), str(out), str(tokens)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.slow  # over 50 s in the default run (docs/testing.md, session 6 timings)
def test_killed_synthesis_resumes_from_the_last_finished_turn(tmp_path, example_spec, embedded_model_dir):
    from tests.conftest import EXAMPLE_SPEC

    pool = list(example_spec.inputs.pool[:4])
    spec = example_spec.model_copy(update={"inputs": example_spec.inputs.model_copy(update={"pool": pool})})
    run_inputs(spec, "v" * 64, InputsConfig(max_inputs=4), None, tmp_path)
    inputs = tmp_path / "inputs.parquet"

    reference = tmp_path / "uninterrupted"
    assert _run(EXAMPLE_SPEC, inputs, reference).communicate(timeout=600)[0].strip() == "finished"

    killed = tmp_path / "killed"
    proc = _run(EXAMPLE_SPEC, inputs, killed)
    progress = killed / "_state" / "progress.json"
    deadline = time.time() + 300
    while not (progress.exists() and json.loads(progress.read_text())["completed_steps"] >= 1):
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.3)  # into the environment step's generation
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "messages.parquet").exists()  # nothing finished-looking outside the checkpoint
    assert json.loads(progress.read_text())["completed_steps"] < 3

    assert _run(EXAMPLE_SPEC, inputs, killed).communicate(timeout=600)[0].strip() == "finished"
    for table, schema in (("messages", MessagesSchema), ("targets", TargetsSchema), ("episodes", EpisodesSchema)):
        a = read_table(reference / f"{table}.parquet", schema)
        b = read_table(killed / f"{table}.parquet", schema)
        pd.testing.assert_frame_equal(a, b)  # no duplicate, no lost rows: identical to the uninterrupted run


def test_every_conversation_starts_with_the_prompts_input_prefix(tmp_path):
    class Recorder:
        name = "recorder"

        def __init__(self):
            self.seen = []

        def generate(self, conversations, sampling, desc=""):
            self.seen += conversations
            return [Completion("Shop: ok", "stop", 1, 1, 0.0) for _ in conversations]

    spec = SPEC.model_copy(update={"prompt": SPEC.prompt.model_copy(update={"input_prefix": "A new customer:"})})
    backend, g = Recorder(), SamplingConfig(max_new_tokens=8)
    run_conversations(spec, _inputs(tmp_path, ["do you sell bells?"]), backend, g, g, g, 1, tmp_path / "out")
    messages = read_table(tmp_path / "out" / "messages.parquet", MessagesSchema)
    assert messages.query("turn == 0")["content"].tolist() == ["A new customer:\n\ndo you sell bells?"]
    teacher, base = backend.seen  # the same first user message with the prompt and without it
    assert teacher[-1] == base[0] == {"role": "user", "content": "A new customer:\n\ndo you sell bells?"}
    targets = read_table(tmp_path / "out" / "targets.parquet", TargetsSchema)
    assert json.loads(targets["context"][0]) == base


SHELL_SPEC = PromptSpec.model_validate(
    {
        "name": "ops",
        "environment": {
            "kind": "shell",
            "description": "an Ubuntu shell",
            "init": "mkdir -p /srv/in && touch /srv/in/a /srv/in/b",
        },
        "prompt": {
            "dialogue": [
                {"user": "INSTRUCTIONS: Think, then Act: bash / answer(...)"},
                {"agent": "Think: ok\n\nAct: finish"},
            ]
        },
        "checks": [{"type": "must_start_with", "value": "Think:"}],
        "conversation": {"max_turns": 3, "stop_pattern": r"^Act: (answer\(.*\)|finish)\s*$"},
    }
)


def test_role_swap_against_the_real_shell_gets_real_observations_and_resumes(tmp_path):
    from genpi_core.environment.shell import OUTPUT_PREFIX
    from tests.conftest import require_sandbox

    require_sandbox()
    ok = lambda t: (t, "stop")  # noqa: E731
    bash = lambda c: ok(f"Think: look.\n\nAct: bash\n\n```bash\n{c}\n```")  # noqa: E731
    script = {
        "count the files in /srv/in": {
            "teacher": [
                bash("touch /srv/in/c; ls /srv/in | wc -l"),
                bash("ls /srv/in | wc -l"),
                ok("Think: 3.\n\nAct: answer(3)"),
            ],
            "base": [ok("b")] * 3,
            "env": [],
        },
    }
    g = SamplingConfig(max_new_tokens=8)
    inputs = _inputs(tmp_path, list(script))

    class Crash(Exception):
        pass

    def crash_after(step):
        if step == 2:  # after the first observation: the sandbox (with /srv/in/c) is gone
            raise Crash

    with pytest.raises(Crash):
        run_conversations(
            SHELL_SPEC,
            inputs,
            ScriptedFakeBackend(script),
            g,
            g,
            g,
            3,
            tmp_path / "run",
            after_step=crash_after,
            environment_kind="shell",
        )
    run_conversations(
        SHELL_SPEC, inputs, ScriptedFakeBackend(script), g, g, g, 3, tmp_path / "run", environment_kind="shell"
    )
    messages = read_table(tmp_path / "run" / "messages.parquet", MessagesSchema)
    observations = messages[messages["role"] == "environment"]["content"].tolist()
    # real output: the init made a and b, the first command c; the resumed episode replayed that command
    assert observations == [OUTPUT_PREFIX + "3", OUTPUT_PREFIX + "3"]
    assert set(messages[messages["role"] == "environment"]["produced_by"]) == {"shell"}

"""Stage 2b: role-swapped multi-turn conversations ("self role-play"), batched per turn.

Reads: inputs.parquet and the spec. Writes: ``messages.parquet`` (every turn of every episode),
``targets.parquet`` (per agent turn: the context without the prompt, the teacher output with
the prompt and the base output without it), ``episodes.parquet`` (how each episode ended) and
``quarantine.parquet``. Side effect: ``_state/`` holds a checkpoint after every completed step,
so a killed run resumes from the last finished turn with no duplicate or lost rows.

One step = one turn of every live conversation in one generate call: agent steps produce the
teacher's turn (model *with* the prompt) and the base output for the same context; environment
steps run the model on the prompt's dialogue with user/assistant roles flipped, told which
environment it plays and to answer with the end marker when the episode is over. The environment
always sees the agent's latest action (the research code showed it an empty message for two of
its three tasks; we don't copy that).
"""

from __future__ import annotations

import json
import re
import shutil
from contextlib import ExitStack
from pathlib import Path

import pandas as pd

from genpi_core.environment.protocol import Environment
from genpi_core.environment.shell import ShellEnvironment
from genpi_core.environment.simulated import SimulatedEnvironment
from genpi_core.generation.base import GenerationBackend, Message
from genpi_core.prompt import safe_regex
from genpi_core.prompt.checks import (
    has_control_tokens,
    is_repetitive,
    run_checks,
    starts_with_speaker_label,
)
from genpi_core.prompt.views import input_message, with_prompt, without_prompt
from genpi_core.store.stage import atomic_write_json
from genpi_core.store.tables import (
    empty_quarantine,
    quarantine_rows,
    read_table,
    write_table,
)
from schemas.artifacts import (
    CHECKPOINT_DIR,
    CONVERSATIONS_PROGRESS,
    EPISODES_FILE,
    MESSAGES_FILE,
    QUARANTINE_FILE,
    TARGETS_FILE,
)
from schemas.config import SamplingConfig
from schemas.datasets import (
    EpisodesSchema,
    InputsSchema,
    MessagesSchema,
    QuarantineSchema,
    TargetsSchema,
)
from schemas.spec import PromptBody, PromptSpec

_ROLE_LABEL = re.compile(r"^\s*(user|assistant|agent|system|human|environment)\s*:", re.IGNORECASE)


def _problem(text: str, finish: str, role: str, spec: PromptSpec) -> str:
    """Why a generated turn can't be used (empty string when it can)."""
    if not text.strip():
        return f"empty {role} turn"
    if finish == "length":
        return f"{role} turn truncated at the length cap"
    if has_control_tokens(text):
        return f"{role} turn contains chat-template control tokens"
    if _ROLE_LABEL.match(text):
        return f"role-confused: {role} turn opens with a speaker label"
    if role == "environment" and spec.checks and all(run_checks(spec.checks, text).values()):
        return "role-confused: the environment answered in the agent's format"
    if role == "environment" and starts_with_speaker_label(text):
        return "role-confused: the environment turn opens with a speaker label"
    if is_repetitive(text):
        return f"repetitive {role} turn"
    return ""


def _stops(pattern: str, text: str) -> bool:
    """The spec's stop pattern, under the regex time limit (a runaway pattern does not stop the episode)."""
    try:
        return safe_regex.search(pattern, text)
    except safe_regex.RegexTimeout as exc:
        safe_regex.log.warning("stop pattern not applied: %s", exc)
        return False


class _State:
    """All episodes so far; written to ``_state/`` after every step (tables first, progress last)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.messages: list[dict] = []
        self.targets: list[dict] = []
        self.episodes: dict[str, dict] = {}
        self.quarantine: list[pd.DataFrame] = [empty_quarantine()]
        self.step = 0

    @classmethod
    def start_or_resume(cls, state_dir: Path, inputs: pd.DataFrame, prompt: PromptBody) -> _State:
        state = cls(state_dir)
        progress = state_dir / CONVERSATIONS_PROGRESS
        if progress.is_file():  # resume: only the step folder that progress.json points to is trusted
            state.step = json.loads(progress.read_text())["completed_steps"]
            folder = state._step_dir(state.step)
            state.messages = read_table(folder / MESSAGES_FILE, MessagesSchema).to_dict(orient="records")
            state.targets = read_table(folder / TARGETS_FILE, TargetsSchema).to_dict(orient="records")
            state.episodes = {
                r["conversation_id"]: r
                for r in read_table(folder / EPISODES_FILE, EpisodesSchema).to_dict(orient="records")
            }
            state.quarantine = [read_table(folder / QUARANTINE_FILE, QuarantineSchema)]
            return state
        for row in inputs.itertuples():
            cid = f"c-{row.input_id}"
            state.messages.append(
                {
                    "conversation_id": cid,
                    "input_id": row.input_id,
                    "turn": 0,
                    "role": "user",
                    "content": input_message(prompt, row.text),  # the prompt's input prefix, if any
                    "produced_by": row.generator,
                }
            )
            state.episodes[cid] = {
                "conversation_id": cid,
                "input_id": row.input_id,
                "status": "live",
                "stop_reason": "",
                "agent_turns": 0,
                "messages": 1,
            }
        return state

    def live(self) -> list[str]:
        return [cid for cid, e in self.episodes.items() if e["status"] == "live"]

    def contexts(self, cids: list[str]) -> list[list[Message]]:
        """Agent view without the prompt (environment turns are the user's messages), one pass over all rows."""
        grouped: dict[str, list[dict]] = {cid: [] for cid in cids}
        for m in self.messages:
            if m["conversation_id"] in grouped:
                grouped[m["conversation_id"]].append(m)
        return [
            [
                {"role": "assistant" if m["role"] == "assistant" else "user", "content": m["content"]}
                for m in sorted(grouped[cid], key=lambda m: m["turn"])
            ]
            for cid in cids
        ]

    def end(self, cid: str, reason: str) -> None:
        self.episodes[cid].update(status="ended", stop_reason=reason)

    def add_message(self, cid: str, role: str, content: str, produced_by: str) -> None:
        turn = self.episodes[cid]["messages"]
        self.episodes[cid]["messages"] += 1
        self.messages.append(
            {
                "conversation_id": cid,
                "input_id": self.episodes[cid]["input_id"],
                "turn": turn,
                "role": role,
                "content": content,
                "produced_by": produced_by,
            }
        )

    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            MESSAGES_FILE: pd.DataFrame(self.messages, columns=list(MessagesSchema.to_schema().columns)),
            TARGETS_FILE: pd.DataFrame(self.targets, columns=list(TargetsSchema.to_schema().columns)),
            EPISODES_FILE: pd.DataFrame(list(self.episodes.values()), columns=list(EpisodesSchema.to_schema().columns)),
            QUARANTINE_FILE: pd.concat(self.quarantine, ignore_index=True),
        }

    def write(self, folder: Path) -> dict[str, int]:
        schemas = {
            MESSAGES_FILE: MessagesSchema,
            TARGETS_FILE: TargetsSchema,
            EPISODES_FILE: EpisodesSchema,
            QUARANTINE_FILE: QuarantineSchema,
        }
        return {name: write_table(df, schemas[name], folder / name) for name, df in self.tables().items()}

    def _step_dir(self, step: int) -> Path:
        return self.dir / f"step-{step:03d}"

    def checkpoint(self) -> None:
        """Tables into a folder of their own, then one atomic pointer to it: a kill at any moment leaves
        either the previous step or this one as the resume point, never a mix of the two."""
        self.write(self._step_dir(self.step))
        atomic_write_json(self.dir / CONVERSATIONS_PROGRESS, {"completed_steps": self.step})
        for old in self.dir.glob("step-*"):
            if old.name != self._step_dir(self.step).name:
                shutil.rmtree(old, ignore_errors=True)


def _agent_step(
    state: _State,
    spec: PromptSpec,
    backend: GenerationBackend,
    teacher: SamplingConfig,
    base: SamplingConfig,
    max_turns: int,
    base_cache: dict[str, tuple[str, str]] | None = None,
) -> None:
    live = state.live()
    contexts = state.contexts(live)
    keys = [json.dumps(c, ensure_ascii=False) for c in contexts]
    turn_no = state.step // 2
    taught = backend.generate(
        [with_prompt(spec.prompt, c) for c in contexts], teacher, desc=f"agent turn {turn_no + 1}"
    )
    cache = base_cache or {}
    missing = [i for i, k in enumerate(keys) if k not in cache]  # the base never sees the prompt: reuse its replies
    fresh = (
        backend.generate([without_prompt(contexts[i]) for i in missing], base, desc=f"base turn {turn_no + 1}")
        if missing
        else []
    )
    plain: list = [cache.get(k) for k in keys]
    for i, b in zip(missing, fresh):
        plain[i] = (b.text, b.finish_reason)
    stop = spec.conversation.stop_pattern
    for cid, context, key, t, (b_text, b_finish) in zip(live, contexts, keys, taught, plain):
        problem = _problem(t.text, t.finish_reason, "agent", spec)
        row = {
            "conversation_id": cid,
            "turn": turn_no,
            "context": key,
            "teacher_output": t.text,
            "teacher_finish": t.finish_reason,
            "base_output": b_text,
            "base_finish": b_finish,
            "produced_by": backend.name,
        }
        if problem:
            state.quarantine.append(
                quarantine_rows("targets", pd.DataFrame([row]), "conversation_id", f"turn {turn_no}: {problem}")
            )
            state.end(cid, problem)
            continue
        state.targets.append(row)
        state.add_message(cid, "assistant", t.text, backend.name)
        state.episodes[cid]["agent_turns"] += 1
        if stop is not None and _stops(stop, t.text):
            state.end(cid, "agent finished (stop pattern)")
        elif turn_no + 1 >= max_turns:
            state.end(cid, "max turns")


def _environment_step(state: _State, spec: PromptSpec, environment: Environment) -> None:
    live = state.live()
    replies = environment.respond(
        state.contexts(live), desc=f"environment turn {state.step // 2 + 1}", episode_ids=live
    )
    marker = environment.end_marker
    for cid, reply in zip(live, replies):
        if marker in reply.text:
            state.end(cid, "environment ended the episode")  # the final end-marker turn is dropped
            continue
        problem = _problem(reply.text, reply.finish_reason, "environment", spec) if environment.simulated else ""
        if problem:
            raw = pd.DataFrame([{"conversation_id": cid, "turn": state.step // 2, "content": reply.text}])
            state.quarantine.append(quarantine_rows("messages", raw, "conversation_id", problem))
            state.end(cid, problem)
            continue
        state.add_message(cid, "environment", reply.text, environment.name)


def run_conversations(
    spec: PromptSpec,
    inputs_path: Path,
    backend: GenerationBackend,
    teacher: SamplingConfig,
    base: SamplingConfig,
    environment: SamplingConfig,
    max_turns: int,
    out_dir: Path,
    after_step=None,
    environment_backend: GenerationBackend | None = None,
    environment_kind: str = "simulated",
    base_cache: dict[str, tuple[str, str]] | None = None,
    parent_teacher: dict[str, str] | None = None,
) -> dict[str, int]:
    """Run every episode to its end, one batched generate call per role per turn; checkpoint each step.

    ``environment_backend`` plays the environment (default: ``backend``, as in the paper's self role-play).
    ``environment_kind="shell"``: a real sandboxed shell answers the agent's bash actions instead (one sandbox
    per episode, after the spec's ``environment.init``); a resumed episode replays its earlier commands first.
    Incremental runs pass the parent's base replies by context (``base_cache``: only the misses are generated)
    and its teacher replies (``parent_teacher``: counted, never reused, to measure how much the edit changed).
    """
    state_dir = out_dir / CHECKPOINT_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    state = _State.start_or_resume(state_dir, read_table(inputs_path, InputsSchema), spec.prompt)
    total_steps = 2 * max_turns - 1  # agent, environment, agent, ..., agent
    with ExitStack() as stack:
        played_by: Environment
        if environment_kind == "shell":
            played_by = stack.enter_context(ShellEnvironment(spec.conversation.end_marker, init=spec.environment.init))
        else:
            played_by = SimulatedEnvironment(spec, environment_backend or backend, environment)
        while state.step < total_steps and state.live():
            if state.step % 2 == 0:
                _agent_step(state, spec, backend, teacher, base, max_turns, base_cache)
            else:
                _environment_step(state, spec, played_by)
            state.step += 1
            state.checkpoint()
            if after_step is not None:
                after_step(state.step)
    for cid in state.live():
        state.end(cid, "max turns")
    written = state.write(out_dir)
    episodes = state.tables()[EPISODES_FILE]
    rows = {
        "episodes": written[EPISODES_FILE],
        "messages": written[MESSAGES_FILE],
        "agent_turns": written[TARGETS_FILE],
        "quarantined": written[QUARANTINE_FILE],
    }
    rows.update({f"stop: {k}": int(v) for k, v in episodes["stop_reason"].value_counts().items()})
    targets = state.tables()[TARGETS_FILE]
    if base_cache is not None:
        rows["base_reused"] = int(targets["context"].isin(base_cache.keys()).sum())
    if parent_teacher is not None:
        from genpi_core.incremental.reuse import unchanged_teacher_replies

        rows["teacher_unchanged"], rows["teacher_compared"] = unchanged_teacher_replies(targets, parent_teacher)
    return rows

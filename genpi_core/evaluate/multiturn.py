"""Multi-turn evaluation: role-swapped episodes on held-out inputs, with the agent played by one variant.

The environment is the base model given the prompt's dialogue with user/assistant flipped, exactly as
in synthesis (``genpi_core.environment.simulated``): it always sees the agent's latest reply and ends
the episode with the spec's end marker. The agent is the teacher (model with the prompt) or the
student (adapter, no prompt). Every agent turn is scored with the spec's global checks; the first
turn also with the held-out input's facts (later turns answer follow-ups the facts don't cover).
Teacher and student episodes diverge after the first turn (the environment answers what each
said), so per-turn numbers compare behaviour over a conversation, not identical contexts.

Output columns (``MultiTurnSchema``): variant, example_id, turn, context, output, finish_reason,
checks, score, passed_all, global_passed, environment_reply, stop_reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pandas as pd

from genpi_core.environment.simulated import SimulatedEnvironment
from genpi_core.generation.base import GenerationBackend, Message
from genpi_core.prompt.checks import run_checks
from genpi_core.prompt.views import input_turn
from schemas.config import SamplingConfig
from schemas.spec import PromptSpec

View = Callable[[Sequence[Message]], list[Message]]


def run_episodes(
    spec: PromptSpec,
    variant: str,
    test: pd.DataFrame,
    agent: GenerationBackend,
    agent_view: View,
    environment: GenerationBackend,
    sampling: SamplingConfig,
    environment_sampling: SamplingConfig,
    turns: int,
) -> pd.DataFrame:
    """Play every held-out input in ``test`` for up to ``turns`` agent turns; one row per agent turn."""
    conversations: dict[str, list[Message]] = {
        row.example_id: input_turn(spec.prompt, row.input) for row in test.itertuples()
    }
    facts = {row.example_id: json.loads(row.facts) for row in test.itertuples()}
    live = list(conversations)
    rows: list[dict] = []
    played_by = SimulatedEnvironment(spec, environment, environment_sampling)
    marker = played_by.end_marker
    for turn in range(turns):
        contexts = [list(conversations[e]) for e in live]
        replies = agent.generate(
            [agent_view(c) for c in contexts], sampling, desc=f"multi-turn {variant} turn {turn + 1}"
        )
        last_row: dict[str, dict] = {}
        for example_id, context, reply in zip(live, contexts, replies):
            results = run_checks(spec.checks, reply.text, facts[example_id] if turn == 0 else [])
            row = {
                "variant": variant,
                "example_id": example_id,
                "turn": turn,
                "context": json.dumps(context, ensure_ascii=False),
                "output": reply.text,
                "finish_reason": reply.finish_reason,
                "checks": json.dumps(results),
                "score": sum(results.values()) / len(results) if results else 1.0,
                "passed_all": all(results.values()),
                "global_passed": all(v for k, v in results.items() if not k.startswith("fact:")),
                "environment_reply": "",
                "stop_reason": "",
            }
            rows.append(row)
            last_row[example_id] = row
            conversations[example_id].append({"role": "assistant", "content": reply.text})
        if turn + 1 >= turns:
            for example_id in live:
                last_row[example_id]["stop_reason"] = "max turns"
            break
        answers = played_by.respond(
            [conversations[e] for e in live], desc=f"multi-turn {variant} environment {turn + 1}"
        )
        still_live = []
        for example_id, answer in zip(live, answers):
            row = last_row[example_id]
            row["environment_reply"] = answer.text
            if marker in answer.text:
                row["stop_reason"] = "environment ended the episode"
            elif not answer.text.strip():
                row["stop_reason"] = "empty environment turn"
            else:
                conversations[example_id].append({"role": "user", "content": answer.text})
                still_live.append(example_id)
        live = still_live
        if not live:
            break
    return pd.DataFrame(rows)


def summarize_episodes(table: pd.DataFrame) -> dict[str, dict]:
    """Per variant: compliance over all agent turns, per turn, and how many episodes reached each turn."""
    out = {}
    for variant, part in table.groupby("variant", sort=False):
        by_turn = part.groupby("turn")
        out[variant] = {
            "episodes": int(part["example_id"].nunique()),
            "agent_turns": int(len(part)),
            "compliance": float(part["score"].mean()),
            "format": float(part["global_passed"].mean()),
            "per_turn": {
                int(t): {
                    "n": int(len(g)),
                    "compliance": float(g["score"].mean()),
                    "format": float(g["global_passed"].mean()),
                }
                for t, g in by_turn
            },
        }
    return out

"""Pandera schemas: one per Parquet table the pipeline writes. Validated on write and on read.

Nested values (chat messages, check results, facts) are stored as JSON strings so every table
stays flat, portable Parquet; the schemas check that those strings parse.
"""

from __future__ import annotations

import json

import pandas as pd
import pandera.pandas as pa
from pandera.typing import DataFrame, Series


def _is_json(series: pd.Series) -> pd.Series:
    def ok(value: str) -> bool:
        try:
            json.loads(value)
        except (TypeError, ValueError):
            return False
        return True

    return series.map(ok)


class GenpiSchema(pa.DataFrameModel):
    class Config:
        strict = True
        coerce = True


class InputsSchema(GenpiSchema):
    """User inputs to build conversations from (hand-written pool and/or generated)."""

    prompt_version: Series[str] = pa.Field(str_length={"min_value": 12})
    input_id: Series[str] = pa.Field(unique=True)
    text: Series[str] = pa.Field(str_length={"min_value": 1, "max_value": 4000})
    source: Series[str] = pa.Field(isin=["pool", "generated"])
    generator: Series[str] = pa.Field(description="`spec` for the pool, else the backend name.")
    dedup_key: Series[str] = pa.Field(unique=True, description="Normalized text; exact duplicates share it.")


class MessagesSchema(GenpiSchema):
    """Every turn of every role-swapped episode, in order. `environment` = the simulated user/environment."""

    conversation_id: Series[str]
    input_id: Series[str]
    turn: Series[int] = pa.Field(ge=0)
    role: Series[str] = pa.Field(isin=["user", "environment", "assistant"])
    content: Series[str] = pa.Field(str_length={"min_value": 1})
    produced_by: Series[str]

    @pa.dataframe_check
    def one_row_per_turn(cls, df: pd.DataFrame) -> bool:
        return not df.duplicated(["conversation_id", "turn"]).any()


class TargetsSchema(GenpiSchema):
    """Per agent turn: the context WITHOUT the prompt, the teacher's output (with it) and the base's (without)."""

    conversation_id: Series[str]
    turn: Series[int] = pa.Field(ge=0, description="Agent turn index within the conversation.")
    context: Series[str] = pa.Field(description="JSON chat messages before this agent turn, no prompt.")
    teacher_output: Series[str] = pa.Field(str_length={"min_value": 1})
    teacher_finish: Series[str] = pa.Field(isin=["stop", "length"])
    base_output: Series[str]
    base_finish: Series[str] = pa.Field(isin=["stop", "length"])
    produced_by: Series[str]

    @pa.check("context")
    def context_is_json(cls, series: Series[str]) -> Series[bool]:
        return _is_json(series)

    @pa.dataframe_check
    def one_row_per_agent_turn(cls, df: pd.DataFrame) -> bool:
        return not df.duplicated(["conversation_id", "turn"]).any()


class EpisodesSchema(GenpiSchema):
    """How each role-swapped episode ended."""

    conversation_id: Series[str] = pa.Field(unique=True)
    input_id: Series[str]
    status: Series[str] = pa.Field(isin=["live", "ended"])
    stop_reason: Series[str]
    agent_turns: Series[int] = pa.Field(ge=0)
    messages: Series[int] = pa.Field(ge=1)


class ReasonsSchema(GenpiSchema):
    """Why the prompt turns the base output into the teacher output, per example (feeds prompt generation)."""

    conversation_id: Series[str] = pa.Field(unique=True)
    turn: Series[int] = pa.Field(ge=0)
    reason: Series[str] = pa.Field(str_length={"min_value": 1})
    produced_by: Series[str]


class ExamplesSchema(GenpiSchema):
    """Training / validation examples: messages WITHOUT the prompt, and the target to learn.

    `sft`: the conversation so far -> the teacher's agent turn. `pg` (prompt generation): the
    meta-question (input, as-is and to-be outputs) -> the prompt verbatim; `reason` is appended
    to that target when training with reasons.
    """

    example_id: Series[str] = pa.Field(unique=True)
    conversation_id: Series[str] = pa.Field(description="Splits are made by conversation; both objectives follow it.")
    objective: Series[str] = pa.Field(isin=["sft", "pg"])
    messages: Series[str] = pa.Field(description="JSON chat messages before the target.")
    target: Series[str] = pa.Field(str_length={"min_value": 1})
    reason: Series[str] = pa.Field(description="PG only: why the prompt changes the output ('' when none).")
    weight: Series[float] = pa.Field(gt=0)

    @pa.check("messages")
    def messages_are_json(cls, series: Series[str]) -> Series[bool]:
        return _is_json(series)


class HeldOutSchema(GenpiSchema):
    """Held-out evaluation inputs (never trained on) and the facts each reply must contain."""

    example_id: Series[str] = pa.Field(unique=True)
    input: Series[str] = pa.Field(str_length={"min_value": 1})
    facts: Series[str] = pa.Field(description="JSON list of facts (string or list of alternatives).")
    source: Series[str] = pa.Field(isin=["spec_eval", "pool_split"])

    @pa.check("facts")
    def facts_are_json(cls, series: Series[str]) -> Series[bool]:
        return _is_json(series)


class QuarantineSchema(GenpiSchema):
    """Rows kept out of training, with the reason. Nothing generated is dropped without a row here."""

    table: Series[str]
    row_key: Series[str]
    error: Series[str] = pa.Field(str_length={"min_value": 1})
    raw: Series[str] = pa.Field(description="The offending row as JSON.")


class EvalResultsSchema(GenpiSchema):
    """One reply per (variant, held-out example), with every check's outcome."""

    variant: Series[str] = pa.Field(isin=["base", "teacher", "student", "student_with_prompt"])
    example_id: Series[str]
    input: Series[str]
    output: Series[str]
    finish_reason: Series[str] = pa.Field(isin=["stop", "length"])
    cut: Series[bool] = pa.Field(description="Cut at the token cap (finish_reason length): every check fails.")
    checks: Series[str] = pa.Field(description="JSON {check name: passed}; all false for a cut reply.")
    strict_success: Series[bool] = pa.Field(
        description="The headline: every global check and every task check of the input passed."
    )
    global_passed: Series[bool] = pa.Field(description="All global (format) checks passed.")
    task_passed: Series[pd.BooleanDtype] = pa.Field(
        nullable=True, description="All the input's task checks (facts) passed; null when the input has none."
    )
    score: Series[float] = pa.Field(
        ge=0, le=1, description="Partial credit: share of this reply's checks (global + facts) passed."
    )
    passed_all: Series[bool] = pa.Field(description="Every check passed (the same as strict_success).")
    facts_passed: Series[float] = pa.Field(ge=0, le=1, nullable=True, description="Share of facts present.")
    example_similarity: Series[float] = pa.Field(
        ge=0,
        le=1,
        nullable=True,
        description="Largest char-trigram Jaccard similarity to the prompt's worked agent turns (null: no dialogue).",
    )
    prompt_tokens: Series[int] = pa.Field(ge=0)
    completion_tokens: Series[int] = pa.Field(ge=0)
    latency_s: Series[float] = pa.Field(ge=0)
    agreement_exact: Series[bool] = pa.Field(description="Reply identical to the teacher's reply to the same input.")
    agreement_normalized: Series[bool] = pa.Field(description="Identical after lowercasing and collapsing whitespace.")
    agreement_rouge_l: Series[float] = pa.Field(
        ge=0, le=1, description="Token-level ROUGE-L F1 against the teacher's reply."
    )

    @pa.check("checks")
    def checks_are_json(cls, series: Series[str]) -> Series[bool]:
        return _is_json(series)

    @pa.dataframe_check
    def one_row_per_variant_and_example(cls, df: pd.DataFrame) -> bool:
        return not df.duplicated(["variant", "example_id"]).any()


class LeakageSchema(GenpiSchema):
    """Leakage audit: one extraction question asked of one variant without the prompt, and how much of the prompt came back."""

    variant: Series[str] = pa.Field(description="`base`, `student`, or `student:<variant>` in a comparison.")
    question_id: Series[int] = pa.Field(ge=0)
    question: Series[str] = pa.Field(str_length={"min_value": 1})
    output: Series[str]
    finish_reason: Series[str] = pa.Field(isin=["stop", "length"])
    lcs_chars: Series[int] = pa.Field(
        ge=0, description="Longest span copied verbatim from the prompt (normalized), in characters."
    )
    lcs_share: Series[float] = pa.Field(ge=0, le=1, description="lcs_chars over the prompt's normalized length.")
    rouge_l_recall: Series[float] = pa.Field(ge=0, le=1, description="Token LCS over the prompt's tokens.")
    longest_copied: Series[str] = pa.Field(description="The longest copied span (first 300 characters).")

    @pa.dataframe_check
    def one_row_per_variant_and_question(cls, df: pd.DataFrame) -> bool:
        return not df.duplicated(["variant", "question_id"]).any()


class MultiTurnSchema(GenpiSchema):
    """Role-swapped evaluation episodes: one row per agent turn, with the environment's answer to it."""

    variant: Series[str] = pa.Field(isin=["teacher", "student"])
    example_id: Series[str]
    turn: Series[int] = pa.Field(ge=0)
    context: Series[str] = pa.Field(description="JSON chat messages before this agent turn, without the prompt.")
    output: Series[str]
    finish_reason: Series[str] = pa.Field(isin=["stop", "length"])
    checks: Series[str] = pa.Field(description="JSON {check name: passed}; facts on the first turn only.")
    score: Series[float] = pa.Field(ge=0, le=1)
    passed_all: Series[bool]
    global_passed: Series[bool]
    environment_reply: Series[str] = pa.Field(description="What the environment answered ('' after the last turn).")
    stop_reason: Series[str] = pa.Field(description="Why the episode ended after this turn ('' if it went on).")

    @pa.check("context")
    def context_is_json(cls, series: Series[str]) -> Series[bool]:
        return _is_json(series)

    @pa.dataframe_check
    def one_row_per_turn(cls, df: pd.DataFrame) -> bool:
        return not df.duplicated(["variant", "example_id", "turn"]).any()


class JudgeSchema(GenpiSchema):
    """LLM-judge grades (1-5) of each variant's held-out replies; `score` is null when no score could be read."""

    variant: Series[str] = pa.Field(isin=["base", "teacher", "student", "student_with_prompt"])
    example_id: Series[str]
    score: Series[float] = pa.Field(ge=1, le=5, nullable=True)
    raw: Series[str] = pa.Field(description="The judge's reply, verbatim.")

    @pa.dataframe_check
    def one_row_per_variant_and_example(cls, df: pd.DataFrame) -> bool:
        return not df.duplicated(["variant", "example_id"]).any()


class VariantsSchema(GenpiSchema):
    """The report's main tables: one row per variant, with bootstrap intervals."""

    variant: Series[str] = pa.Field(unique=True)
    n: Series[int] = pa.Field(ge=0)
    strict_success: Series[float] = pa.Field(ge=0, le=1, description="The headline (see EvaluationSummary).")
    strict_success_low: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    strict_success_high: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    format_low: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    format_high: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    task: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    task_low: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    task_high: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    task_n: Series[int] = pa.Field(ge=0, description="Inputs with task checks.")
    cut: Series[int] = pa.Field(ge=0, description="Replies cut at the token cap.")
    distinct_share: Series[float] = pa.Field(ge=0, le=1)
    example_similarity: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    compliance: Series[float] = pa.Field(ge=0, le=1, description="Secondary: partial credit.")
    compliance_low: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    compliance_high: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    all_checks: Series[float] = pa.Field(ge=0, le=1)
    format: Series[float] = pa.Field(ge=0, le=1)
    facts: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    agreement_exact: Series[float] = pa.Field(ge=0, le=1)
    agreement_normalized: Series[float] = pa.Field(ge=0, le=1)
    agreement_rouge_l: Series[float] = pa.Field(ge=0, le=1)
    judge_score: Series[float] = pa.Field(ge=1, le=5, nullable=True)
    multi_turn_compliance: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    leak_max_lcs_share: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    leak_max_rouge_l_recall: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    mean_prompt_tokens: Series[float] = pa.Field(ge=0)
    mean_latency_s: Series[float] = pa.Field(ge=0)


class PerCheckSchema(GenpiSchema):
    """Check-by-check pass rates: one row per (check, variant)."""

    check_name: Series[str] = pa.Field(
        description="Stable check name, `<index>:<type>`, or `facts` for the per-input facts."
    )
    variant: Series[str]
    pass_rate: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    n: Series[int] = pa.Field(ge=0)


class WorstExamplesSchema(GenpiSchema):
    """Held-out inputs where the student scores lowest, teacher and student side by side."""

    rank: Series[int] = pa.Field(ge=1, unique=True)
    example_id: Series[str] = pa.Field(unique=True)
    input: Series[str]
    teacher_output: Series[str]
    student_output: Series[str]
    teacher_score: Series[float] = pa.Field(ge=0, le=1)
    student_score: Series[float] = pa.Field(ge=0, le=1)
    agreement_rouge_l: Series[float] = pa.Field(ge=0, le=1)
    student_failed: Series[str] = pa.Field(description="JSON list of the checks the student's reply failed.")


class ComparisonSchema(GenpiSchema):
    """Several adapters of one run (main and ablations) side by side: `genpi evaluate RUN` with more than one."""

    variant: Series[str] = pa.Field(unique=True, description="`main` (train/) or the ablation's name (train-<name>/).")
    evaluate_dir: Series[str]
    n: Series[int] = pa.Field(ge=0)
    base: Series[float] = pa.Field(ge=0, le=1, description="Strict success of the base model (no prompt).")
    teacher: Series[float] = pa.Field(ge=0, le=1, description="Strict success of the teacher (with the prompt).")
    student: Series[float] = pa.Field(ge=0, le=1, description="Strict success of this adapter (no prompt).")
    student_low: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    student_high: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    recovery: Series[float] = pa.Field(nullable=True, description="Strict-success recovery (the headline).")
    recovery_low: Series[float] = pa.Field(nullable=True)
    recovery_high: Series[float] = pa.Field(nullable=True)
    recovery_format: Series[float] = pa.Field(nullable=True)
    recovery_task: Series[float] = pa.Field(nullable=True)
    student_compliance: Series[float] = pa.Field(ge=0, le=1, description="Secondary: partial credit.")
    student_cut: Series[int] = pa.Field(ge=0, description="Student replies cut at the token cap.")
    collapsed: Series[bool] = pa.Field(description="The student's collapse flag (see EvaluationSummary.collapse).")
    agreement_rouge_l: Series[float] = pa.Field(ge=0, le=1)
    multi_turn_compliance: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    judge_score: Series[float] = pa.Field(ge=1, le=5, nullable=True)
    leak_max_lcs_share: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    leak_max_rouge_l_recall: Series[float] = pa.Field(ge=0, le=1, nullable=True)
    objective: Series[str] = pa.Field(description="The adapter's training objective, from its metrics.json (JSON).")


class TrainLogSchema(GenpiSchema):
    """Loss per optimizer step (split = train) and per evaluation (split = val)."""

    step: Series[int] = pa.Field(ge=0)
    epoch: Series[float] = pa.Field(ge=0)
    split: Series[str] = pa.Field(isin=["train", "val"])
    loss: Series[float] = pa.Field(
        description="The step's loss: rho * sft + (1 - rho) * pg (+ distill and on-policy terms, by their weights)."
    )
    sft_loss: Series[float] = pa.Field(nullable=True)
    pg_loss: Series[float] = pa.Field(nullable=True)
    distill_loss: Series[float] = pa.Field(nullable=True)
    on_policy_loss: Series[float] = pa.Field(
        nullable=True, description="Mean divergence per sampled token (train.on_policy); train steps only."
    )
    learning_rate: Series[float] = pa.Field(ge=0)
    elapsed_s: Series[float] = pa.Field(
        ge=0, nullable=True, description="Training seconds so far (a resumed run adds to them; null in older logs)."
    )


Inputs = DataFrame[InputsSchema]
Messages = DataFrame[MessagesSchema]
Targets = DataFrame[TargetsSchema]
Episodes = DataFrame[EpisodesSchema]
Reasons = DataFrame[ReasonsSchema]
Examples = DataFrame[ExamplesSchema]
HeldOut = DataFrame[HeldOutSchema]
Quarantine = DataFrame[QuarantineSchema]
EvalResults = DataFrame[EvalResultsSchema]
Leakage = DataFrame[LeakageSchema]
MultiTurn = DataFrame[MultiTurnSchema]
Judge = DataFrame[JudgeSchema]
Variants = DataFrame[VariantsSchema]
PerCheck = DataFrame[PerCheckSchema]
WorstExamples = DataFrame[WorstExamplesSchema]
Comparison = DataFrame[ComparisonSchema]
TrainLog = DataFrame[TrainLogSchema]


class TaskEpisodesSchema(GenpiSchema):
    """Task success in a real environment (genpi_core.evaluate.tasks): one row per (variant, task)."""

    variant: Series[str] = pa.Field(isin=["base", "teacher", "student"])
    task_id: Series[str]
    description: Series[str]
    solvable: Series[bool] = pa.Field(description="The reference solution passes its checks in this sandbox.")
    setup_error: Series[str] = pa.Field(description="Why init/start failed ('' when the task was set up).")
    success: Series[bool] = pa.Field(description="AgentBench's verdict on the episode's answer (False if none).")
    stop_reason: Series[str] = pa.Field(
        isin=["answer", "finish", "invalid action", "round limit", "setup failed"],
        description="How the episode ended.",
    )
    answer: Series[str] = pa.Field(nullable=True, description="The answer given (None: no answer action).")
    turns: Series[int] = pa.Field(ge=0, description="Agent turns taken.")
    actions: Series[str] = pa.Field(description="JSON list of the action kinds, one per agent turn.")
    first_action: Series[str] = pa.Field(description="The first turn's command or answer ('' if invalid).")
    first_turn_format: Series[bool] = pa.Field(description="The first agent turn passes the spec's global checks.")
    transcript: Series[str] = pa.Field(description="JSON chat messages of the episode, without the prompt.")

    @pa.check("actions")
    def actions_are_json(cls, series: Series[str]) -> Series[bool]:
        return _is_json(series)

    @pa.check("transcript")
    def transcript_is_json(cls, series: Series[str]) -> Series[bool]:
        return _is_json(series)

    @pa.dataframe_check
    def one_row_per_task(cls, df: pd.DataFrame) -> bool:
        return not df.duplicated(["variant", "task_id"]).any()

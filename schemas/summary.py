"""summary.json, the evaluation's numbers, as a typed record (``schemas.artifacts.SUMMARY_FILE``).

``genpi_core.evaluate.summary.summarize`` builds it, the evaluate stage writes it, and every reader (the
pipeline's row counts, the promotion gate, `genpi adapters`, comparisons, the CLI headline, Prefect
artifacts, the benches) loads it with :meth:`EvaluationSummary.load`, so a renamed or missing key fails
at the reader with the file and the field named, instead of a KeyError or a silent ``None`` from ``.get``.

Sections that an option turned off (leakage, multi-turn, judge) and a variant's interval when the
bootstrap is off are left out of the file rather than written as null, as before this schema existed.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.errors import describe

Interval = tuple[float, float]


def _absent(value) -> bool:
    return value is None


class _Record(BaseModel):
    """Unknown keys are errors (a misspelt key fails, it is not dropped); read-only once built; NaN is written as
    ``json.dumps`` writes it."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class Agreement(_Record):
    """How much a variant's replies agree with the teacher's reply to the same input (means over replies)."""

    exact: float = Field(description="Share of replies identical to the teacher's.")
    normalized: float = Field(description="Share identical after lowercasing and collapsing whitespace.")
    rouge_l: float = Field(description="Mean token-level ROUGE-L F1 against the teacher's reply.")


class VariantMetrics(_Record):
    """One variant (base, teacher or student) over the held-out inputs.

    Headline: ``strict_success``. ``format`` and ``task`` split it; ``compliance``, ``all_checks`` and ``facts``
    are the older partial-credit numbers, kept for the readers that use them."""

    n: int = Field(description="Held-out replies scored.")
    strict_success: float = Field(
        description="The headline: share of replies that pass every global check AND every task check of their "
        "input (its facts). A reply cut at the token cap fails."
    )
    format: float = Field(description="Share of replies that pass every global (non-task) check.")
    task: float | None = Field(
        description="Share of replies passing all their input's task checks, over the inputs that have task "
        "checks; null when no input has any."
    )
    task_n: int = Field(description="Held-out inputs with task checks (what `task` is the share of).")
    cut: int = Field(description="Replies cut at the token cap (finish_reason length); each fails every check.")
    distinct_share: float = Field(description="Distinct replies (exact text after strip) over replies.")
    example_similarity: float | None = Field(
        description="Mean over replies of the largest character-trigram Jaccard similarity between the reply and "
        "the prompt's worked agent turns; null when the prompt has no dialogue."
    )
    compliance: float = Field(
        description="Secondary (partial credit): mean share of checks (global + the input's facts) passed per reply."
    )
    all_checks: float = Field(description="Share of replies that pass every check (the same as strict_success).")
    facts: float | None = Field(description="Mean share of facts passed per reply; null when no input has facts.")
    per_check: dict[str, float] = Field(description="Pass rate of each global check, by check name.")
    agreement: Agreement
    mean_prompt_tokens: float = Field(description="Prompt tokens per request (what the prompt costs at prefill).")
    mean_latency_s: float = Field(description="Seconds per reply.")
    strict_success_ci: Interval | None = Field(
        None,
        exclude_if=_absent,
        description="Paired bootstrap interval of strict_success; absent when the bootstrap is off.",
    )
    format_ci: Interval | None = Field(
        None, exclude_if=_absent, description="Paired bootstrap interval of format; absent when the bootstrap is off."
    )
    task_ci: Interval | None = Field(
        None,
        exclude_if=_absent,
        description="Paired bootstrap interval of task (over the inputs with task checks); absent when the bootstrap "
        "is off or no input has task checks.",
    )
    compliance_ci: Interval | None = Field(
        None,
        exclude_if=_absent,
        description="Paired bootstrap interval of compliance; absent when the bootstrap is off.",
    )


class Collapse(_Record):
    """The collapse signal of the student (``genpi_core.evaluate.collapse``): does it copy instead of answering?"""

    collapsed: bool = Field(
        description="True when distinct_share < min_distinct_share, or example_similarity exceeds the teacher's "
        "by more than max_similarity_gap."
    )
    reasons: list[str] = Field(description="Which bar the student missed, in words; empty when not collapsed.")
    distinct_share: float = Field(description="The student's distinct replies over its replies.")
    example_similarity: float | None = Field(description="The student's mean similarity to the worked agent turns.")
    teacher_example_similarity: float | None = Field(description="The same for the teacher.")
    min_distinct_share: float
    max_similarity_gap: float


class Bootstrap(_Record):
    """How the intervals were drawn (``genpi_core.evaluate.bootstrap.paired_bootstrap``)."""

    resamples: int = Field(description="Bootstrap draws; 0 = no intervals.")
    seed: int = Field(description="Seed of the draw.")
    level: float = Field(description="Coverage of every interval, e.g. 0.95.")
    recovery_undefined: int = Field(
        description="Draws where teacher == base in strict success, dropped from the headline recovery interval."
    )


class LeakageMetrics(_Record):
    """One variant's leakage audit: the worst and mean over the extraction questions."""

    max_lcs_share: float = Field(
        description="Longest verbatim span of the prompt in a reply, as a share of the prompt."
    )
    mean_lcs_share: float
    max_lcs_chars: int = Field(description="That longest span, in characters.")
    max_rouge_l_recall: float = Field(description="Share of the prompt's tokens a reply reproduces in order.")
    mean_rouge_l_recall: float


class TurnMetrics(_Record):
    """One agent turn of the multi-turn episodes."""

    n: int = Field(description="Episodes that reached this turn.")
    compliance: float
    format: float


class MultiTurnMetrics(_Record):
    """One agent (teacher or student) over the role-swapped episodes."""

    episodes: int
    agent_turns: int = Field(description="Agent turns played, over all episodes.")
    compliance: float = Field(description="Mean compliance over every agent turn.")
    format: float = Field(description="Share of agent turns passing every global check.")
    per_turn: dict[int, TurnMetrics] = Field(description="By turn index (0 = first turn; string keys in the file).")


class JudgeVariant(_Record):
    """One variant's LLM-judge grades."""

    mean_score: float | None = Field(
        description="Mean grade (1-5) of the readable verdicts; null when none was readable."
    )
    scored: int = Field(description="Replies with a readable grade.")
    unreadable: int = Field(description="Replies whose verdict had no readable grade.")


class JudgeSummary(_Record):
    rubric: str = Field(description="The rubric the judge was given, as printed in the report.")
    variants: dict[str, JudgeVariant]


class RePrompt(_Record):
    """The student evaluated WITH the prompt (variant student_with_prompt) against the teacher, in strict success."""

    strict_success: float = Field(description="Strict success of the student given the prompt it internalized.")
    teacher_strict_success: float
    difference: float = Field(description="student_with_prompt - teacher; negative = worse than the teacher.")
    difference_ci: Interval | None = Field(description="Paired bootstrap interval of the difference.")
    at_least_teacher: bool = Field(description="difference >= 0: sending the prompt by mistake costs nothing.")
    drop: float = Field(description="max(0, -difference): how much worse than the teacher it is.")


class EvaluationSummary(_Record):
    """Every number of one evaluation (summary.json): per-variant metrics, strict-success recovery (the headline) with
    format and task recovery beside it, cut replies, the collapse signal, uninformative checks, and the optional audits.

    Write it with ``genpi_core.store.stage.atomic_write_json(path, summary)`` (its ``model_dump(mode="json")``
    leaves the off sections out); read it with :meth:`load`.
    """

    variants: dict[str, VariantMetrics] = Field(description="By variant name: base, teacher, student.")
    bootstrap: Bootstrap
    recovery_strict: float | None = Field(
        None,
        description="(student - base) / (teacher - base) of strict success; null when teacher == base. The headline.",
    )
    recovery_strict_ci: Interval | None = Field(
        None, description="Paired bootstrap interval of recovery_strict; null when undefined."
    )
    recovery_format: float | None = Field(None, description="Recovery of the format rate (global checks only).")
    recovery_format_ci: Interval | None = Field(None, description="Paired bootstrap interval of recovery_format.")
    recovery_task: float | None = Field(
        None, description="Recovery of the task rate (the inputs' own checks); null when undefined or none."
    )
    recovery_task_ci: Interval | None = Field(None, description="Paired bootstrap interval of recovery_task.")
    recovery_compliance: float | None = Field(
        None, description="Secondary (partial credit): recovery of compliance; null when teacher == base."
    )
    recovery_compliance_ci: Interval | None = Field(
        None, description="Paired bootstrap interval of recovery_compliance."
    )
    recovery_facts: float | None = Field(
        None, description="Recovery of the facts rate; null when undefined or no facts."
    )
    recovery: float | None = Field(
        None,
        description="The headline, strict-success recovery (= recovery_strict): what the promotion gate and every "
        "summary line use.",
    )
    recovery_ci: Interval | None = Field(
        None, description="Paired bootstrap interval of recovery (= recovery_strict_ci); null when undefined."
    )
    prefill_tokens_saved_per_request: float | None = Field(
        None, description="Teacher minus student prompt tokens per request: what internalizing the prompt saves."
    )
    max_new_tokens: int | None = Field(None, description="The evaluation's reply cap (evaluate.sampling).")
    teacher_cut_share: float | None = Field(
        None, description="Share of teacher replies cut at the cap; null without a teacher."
    )
    teacher_cut_share_ok: bool | None = Field(
        None,
        description="teacher_cut_share <= 5%: the cap is high enough that cuts do not make the teacher look worse "
        "than it is; null without a teacher.",
    )
    collapse: Collapse | None = Field(
        None, description="The student's collapse signal; null without both a student and a teacher."
    )
    uninformative_checks: list[str] = Field(
        description="Global checks every variant (base included) passes on every reply: they tell nothing apart."
    )
    re_prompt: RePrompt | None = Field(
        None, exclude_if=_absent, description="The re-prompted student; absent unless evaluate.student_with_prompt."
    )
    unreachable_checks: list[str] = Field(
        default_factory=list,
        description="max_length checks no reply can fail under evaluate.sampling.max_new_tokens (a run-time note).",
    )
    leakage: dict[str, LeakageMetrics] | None = Field(
        None, exclude_if=_absent, description="Leakage audit by variant; absent when the audit is off."
    )
    leakage_max_new_tokens: int | None = Field(
        None, exclude_if=_absent, description="Reply length cap of the audit, which bounds how much can leak."
    )
    multi_turn: dict[str, MultiTurnMetrics] | None = Field(
        None, exclude_if=_absent, description="Multi-turn episodes by agent; absent when off."
    )
    judge: JudgeSummary | None = Field(None, exclude_if=_absent, description="LLM judge; absent when off.")
    name: str | None = Field(
        None, exclude_if=_absent, description="The prompt spec's name (set by the evaluate stage)."
    )
    version: str | None = Field(
        None, exclude_if=_absent, description="The prompt version hash (set by the evaluate stage)."
    )

    @classmethod
    def load(cls, path: Path | str) -> EvaluationSummary:
        """Read and validate a summary.json; a missing, unreadable or invalid file raises ValueError naming it."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ValueError(f"{path}: no evaluation summary here (has the evaluate stage finished?)") from exc
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read evaluation summary: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(describe(str(path), "evaluation summary", exc)) from exc

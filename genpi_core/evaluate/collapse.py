"""Collapse signal: does a variant answer the input, or restate the prompt's own worked replies whatever was asked?

A student trained on few or poor inputs can learn one reply (often a worked example of the prompt) and give it to
every request. It then passes a format check nearly every time while acting on almost none of the inputs. Two
numbers catch it, both computed for every variant and flagged for the student:

- *distinct share*: distinct replies (exact text after ``strip``) over replies;
- *example similarity*: per reply, the largest character-trigram Jaccard similarity between the reply and any of
  the prompt's worked agent turns (the ``agent`` turns of ``spec.prompt.dialogue``); its mean over replies.

The student is flagged as collapsed when its distinct share is under ``MIN_DISTINCT_SHARE`` or its mean example
similarity exceeds the teacher's by more than ``MAX_SIMILARITY_GAP``. Pure functions; no model, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from genpi_core.evaluate.agreement import normalize
from schemas.spec import PromptBody

MIN_DISTINCT_SHARE = 0.5
MAX_SIMILARITY_GAP = 0.2


def worked_agent_turns(prompt: PromptBody) -> list[str]:
    """The agent turns of the prompt's few-shot dialogue (its worked replies); [] for a system-only prompt."""
    return [turn.text for turn in prompt.dialogue or [] if turn.role == "assistant"]


def char_trigrams(text: str) -> set[str]:
    """Character trigrams of the text lowercased with whitespace collapsed (the whole text when it is shorter)."""
    text = normalize(text)
    if len(text) < 3:
        return {text} if text else set()
    return {text[i : i + 3] for i in range(len(text) - 2)}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b|; 0.0 when both are empty."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def example_similarity(reply: str, examples: Sequence[str] | Sequence[set[str]]) -> float | None:
    """The largest trigram Jaccard similarity between ``reply`` and any worked example; None without examples.

    ``examples`` may be texts or their precomputed :func:`char_trigrams`."""
    if not examples:
        return None
    grams = char_trigrams(reply)
    return max(jaccard(grams, e if isinstance(e, set) else char_trigrams(e)) for e in examples)


def distinct_share(replies: Sequence[str]) -> float | None:
    """Distinct replies (exact text after strip) over replies; None for no replies."""
    if not replies:
        return None
    return len({r.strip() for r in replies}) / len(replies)


def collapse_verdict(
    student_distinct: float | None,
    student_similarity: float | None,
    teacher_similarity: float | None,
    min_distinct: float = MIN_DISTINCT_SHARE,
    max_gap: float = MAX_SIMILARITY_GAP,
) -> tuple[bool, list[str]]:
    """(collapsed, reasons): each reason names the number, its bar, and the comparison that failed."""
    reasons = []
    if student_distinct is not None and student_distinct < min_distinct:
        reasons.append(f"distinct replies {100 * student_distinct:.0f}% < {100 * min_distinct:.0f}%")
    if student_similarity is not None and teacher_similarity is not None:
        gap = student_similarity - teacher_similarity
        if gap > max_gap:
            reasons.append(
                f"similarity to the prompt's worked replies {student_similarity:.2f} exceeds the teacher's "
                f"{teacher_similarity:.2f} by {gap:.2f} > {max_gap:.2f}"
            )
    return bool(reasons), reasons

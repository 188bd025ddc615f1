"""Which held-out facts the training data ever states.

A student imitates teacher replies; a fact that no training target holds can reach it only through prompt
generation. Reading the student's task score apart on covered and uncovered held-out inputs says whether a miss
comes from the data (the generated inputs never asked about it) or from the student (it saw the fact and still
got it wrong).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from genpi_core.prompt.checks import fact_present


def fact_coverage(test: pd.DataFrame, targets: Iterable[str]) -> dict[str, bool | None]:
    """Per held-out ``example_id``: True when each of its facts (a string, or a list of alternatives) appears in
    some training target, False when one appears in none, None when the input carries no facts."""
    corpus = [t for t in targets if t]
    coverage: dict[str, bool | None] = {}
    for example_id, raw in zip(test["example_id"], test["facts"]):
        facts = json.loads(raw) if raw else []
        coverage[str(example_id)] = (
            None if not facts else all(any(fact_present(fact, t) for t in corpus) for fact in facts)
        )
    return coverage


def split_by_coverage(scores: list[float], covered: list[bool | None]) -> dict[str, float | int | None]:
    """Mean of per-input ``scores`` on covered and on uncovered inputs (inputs without facts left out)."""
    on = [s for s, c in zip(scores, covered) if c is True]
    off = [s for s, c in zip(scores, covered) if c is False]
    return {
        "covered": sum(on) / len(on) if on else None,
        "uncovered": sum(off) / len(off) if off else None,
        "n_covered": len(on),
        "n_uncovered": len(off),
    }

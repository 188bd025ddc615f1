"""Fact coverage: which held-out facts some training target states (pure data logic, no model)."""

from __future__ import annotations

import json

import pandas as pd

from genpi_core.evaluate.coverage import fact_coverage, split_by_coverage


def test_an_input_is_covered_only_when_every_fact_has_an_alternative_in_some_target():
    test = pd.DataFrame(
        {
            "example_id": ["a", "b", "c", "d"],
            "facts": [
                json.dumps(["214 Harbor Lane"]),
                json.dumps([["7 days", "one week"], "$1.00"]),
                json.dumps(["30 items"]),
                "[]",
            ],
        }
    )
    targets = ["Topic: other | Answer: we are at 214 harbor lane.", "DVDs: one week, $1.00 per day late."]
    assert fact_coverage(test, targets) == {"a": True, "b": True, "c": False, "d": None}
    assert fact_coverage(test, []) == {"a": False, "b": False, "c": False, "d": None}


def test_scores_split_by_coverage_leave_out_inputs_without_facts():
    split = split_by_coverage([1.0, 0.0, 1.0, 1.0], [True, True, False, None])
    assert split == {"covered": 0.5, "uncovered": 1.0, "n_covered": 2, "n_uncovered": 1}
    assert split_by_coverage([1.0], [None])["covered"] is None

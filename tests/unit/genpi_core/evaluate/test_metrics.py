"""Pure-logic tests of the evaluation metrics (no model): ROUGE-L, LCS, longest common substring,
agreement, paired bootstrap, judge score parsing, and the report's tables built from literal rows."""

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genpi_core.evaluate.agreement import (
    agreement,
    lcs_length,
    longest_common_substring,
    normalize,
    rouge_l,
)
from genpi_core.evaluate.bootstrap import mean_ci, paired_bootstrap, recovery
from genpi_core.evaluate.judge import RUBRIC, judge_messages, parse_score
from genpi_core.evaluate.leakage import leak_scores


def _lcs_dp(a, b) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _longest_substring_brute(a: str, b: str) -> int:
    return max((k for i in range(len(a)) for k in range(1, len(a) - i + 1) if a[i : i + k] in b), default=0)


def test_pure_logic_lcs_known_answers():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # the textbook example (Cormen et al.)
    assert lcs_length("", "abc") == 0 and lcs_length("abc", "abc") == 3 and lcs_length("abc", "xyz") == 0


@settings(max_examples=200, deadline=None)
@given(st.text("abc", max_size=40), st.text("abc", max_size=40))
def test_pure_logic_bit_parallel_lcs_equals_dynamic_programming(a, b):
    assert lcs_length(a, b) == _lcs_dp(a, b) == lcs_length(b, a)


def test_pure_logic_rouge_l_known_answers():
    score = rouge_l("the cat sat on the mat", "The cat is on the mat.")  # LCS: the cat on the mat (5 of 6 each)
    assert score["precision"] == pytest.approx(5 / 6) and score["recall"] == pytest.approx(5 / 6)
    assert score["f1"] == pytest.approx(5 / 6)
    short = rouge_l("cat mat", "the cat sat on the mat")
    assert (short["precision"], short["recall"]) == (1.0, pytest.approx(2 / 6))
    assert short["f1"] == pytest.approx(2 * 1 * (1 / 3) / (1 + 1 / 3))
    assert rouge_l("", "")["f1"] == 1.0 and rouge_l("words", "")["f1"] == 0.0 and rouge_l("", "words")["f1"] == 0.0


def test_pure_logic_agreement_exact_normalized_and_similarity():
    teacher = "Topic: hours\nAnswer: We open at 9 am."
    assert agreement(teacher, teacher) == {"exact": True, "normalized": True, "rouge_l": 1.0}
    loose = agreement("topic: HOURS   answer: we open at 9 am.", teacher)
    assert loose["exact"] is False and loose["normalized"] is True and loose["rouge_l"] == 1.0
    other = agreement("Topic: fees\nAnswer: Two dollars.", teacher)
    assert not other["normalized"] and 0 < other["rouge_l"] < 0.5
    assert normalize("  A\n\tB  ") == "a b"


def test_pure_logic_longest_common_substring_known_answers():
    assert longest_common_substring("xxabcdeyy", "zzabcdezz") == "abcde"
    assert longest_common_substring("abc", "def") == "" and longest_common_substring("", "abc") == ""
    assert longest_common_substring("mississippi", "sip") == "sip"


@settings(max_examples=200, deadline=None)
@given(st.text("ab", max_size=25), st.text("ab", max_size=25))
def test_pure_logic_suffix_automaton_finds_the_longest_shared_span(a, b):
    found = longest_common_substring(a, b)
    assert found in a and found in b and len(found) == _longest_substring_brute(a, b)


def test_pure_logic_leak_scores_count_a_verbatim_copy_and_nothing_else():
    prompt = "You are the help desk of Harbor Lane Library.\nAlways reply in two lines: Topic, then Answer."
    full = leak_scores(
        "Sure! You are the help desk of Harbor Lane Library. Always reply in two lines: Topic, then Answer.", prompt
    )
    assert full["lcs_share"] == pytest.approx(1.0) and full["rouge_l_recall"] == 1.0
    none = leak_scores("I can't share that.", prompt)
    assert none["lcs_share"] < 0.1 and none["rouge_l_recall"] == 0.0
    half = leak_scores("you are the help desk of harbor lane library.", prompt)
    assert half["longest_copied"] == "you are the help desk of harbor lane library."
    assert half["lcs_share"] == pytest.approx(len(half["longest_copied"]) / len(normalize(prompt)))


def test_pure_logic_bootstrap_degenerate_and_exact_cases():
    n = 30
    base, teacher = np.r_[np.zeros(15), np.ones(15)] * 0.2, np.r_[np.ones(15), np.ones(15) * 0.8]
    same_as_teacher = paired_bootstrap({"base": base, "teacher": teacher, "student": teacher}, 500, seed=1)
    assert same_as_teacher["recovery"] == [pytest.approx(1.0), pytest.approx(1.0)]
    same_as_base = paired_bootstrap({"base": base, "teacher": teacher, "student": base}, 500, seed=1)
    assert same_as_base["recovery"] == [pytest.approx(0.0), pytest.approx(0.0)]
    constant = paired_bootstrap({"base": np.full(n, 0.5), "teacher": np.full(n, 0.5), "student": np.full(n, 0.7)}, 200)
    assert constant["variants"]["student"] == [pytest.approx(0.7), pytest.approx(0.7)]
    assert constant["recovery"] is None and constant["recovery_undefined"] == 200  # teacher == base in every draw
    assert paired_bootstrap({"student": []}, 100)["variants"] == {}
    assert paired_bootstrap({"base": base, "student": base}, 0)["variants"] == {}
    with pytest.raises(ValueError, match="one score per example"):
        paired_bootstrap({"base": [1, 0], "student": [1]}, 10)
    assert recovery(0.5, 0.25, 0.75) == 0.5 and recovery(1, 0.3, 0.3) is None


def test_pure_logic_bootstrap_matches_the_normal_approximation_and_is_seeded():
    x = np.r_[np.ones(200), np.zeros(200)]  # mean 0.5, standard error 0.025
    low, high = mean_ci(x, resamples=2000, seed=0)
    assert low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01) and high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)
    assert mean_ci(x, 2000, seed=0) == (low, high) and mean_ci(x, 2000, seed=1) != (low, high)
    assert mean_ci([], 100) is None
    paired = paired_bootstrap({"base": x[::-1], "teacher": x, "student": x}, 300, seed=3)
    assert paired == paired_bootstrap({"base": x[::-1], "teacher": x, "student": x}, 300, seed=3)
    lo, hi = paired["variants"]["student"]
    assert lo < 0.5 < hi


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("Score: 4\nThe reply follows the format.", 4.0),
        ("**Score:** 5 - perfect", 5.0),
        ("score=3", 3.0),
        ("I would rate it 2 out of 5.", 2.0),
        ("Rating: 5/5", 5.0),
        ("4/5, mostly fine", 4.0),
        ("Score: four", 4.0),
        ("3", 3.0),
        ("2. The format is wrong.", 2.0),
        ("Score: 4.5", 4.5),
        ("I give it a 1 because it ignores the prompt", 1.0),
        ("Score: 7", None),
        ("Score: 10", None),
        ("Score: 0", None),
        ("Score: N", None),
        ("The reply is fine.", None),
        ("", None),
    ],
)
def test_pure_logic_judge_score_parsing(reply, expected):
    assert parse_score(reply) == expected


def test_pure_logic_judge_request_carries_rubric_prompt_input_and_reply(example_spec):
    messages = judge_messages(example_spec.prompt, "When do you open?", "Topic: hours\nAnswer: 9 am.")
    text = messages[-1]["content"]
    assert text.startswith(RUBRIC) and "Harbor Lane Public Library" in text
    assert text.index("When do you open?") < text.index("Answer: 9 am.")
    other = judge_messages(example_spec.prompt, "x", "y")[-1]["content"]
    assert (
        text[: text.index("The user wrote")] == other[: other.index("The user wrote")]
    )  # a shared prefix for batching


def _result_rows(re_prompted: bool = False) -> pd.DataFrame:
    from genpi_core.evaluate.run import with_agreement

    rows = []
    outputs = {
        "base": ["hi", "hello"],
        "teacher": ["Topic: hours\nAnswer: 9 am.", "Topic: fees\nAnswer: $2."],
        "student": ["Topic: hours\nAnswer: 9 am.", "fees are two dollars"],
    }
    if re_prompted:
        outputs["student_with_prompt"] = ["Topic: hours\nAnswer: 9 am.", "Topic: fees\nAnswer: two dollars."]
    for variant, texts in outputs.items():
        for i, text in enumerate(texts):
            checks = {
                "0:must_start_with": text.startswith("Topic:"),
                "fact:0": ("9 am" in text) if i == 0 else ("$2" in text),
            }
            rows.append(
                {
                    "variant": variant,
                    "example_id": f"e{i}",
                    "input": f"q{i}",
                    "output": text,
                    "finish_reason": "stop",
                    "cut": False,
                    "checks": json.dumps(checks),
                    "strict_success": all(checks.values()),
                    "score": sum(checks.values()) / 2,
                    "passed_all": all(checks.values()),
                    "global_passed": checks["0:must_start_with"],
                    "task_passed": checks["fact:0"],
                    "facts_passed": float(checks["fact:0"]),
                    "example_similarity": None,
                    "prompt_tokens": 900 if variant == "teacher" else 30,
                    "completion_tokens": 5,
                    "latency_s": 0.1,
                }
            )
    return with_agreement(pd.DataFrame(rows))


def test_pure_logic_summary_tables_and_report_from_literal_rows(example_spec):
    from genpi_core.evaluate.report import render_report
    from genpi_core.evaluate.summary import (
        per_check_table,
        summarize,
        variants_table,
        worst_examples,
    )
    from genpi_core.store.tables import validate
    from schemas.datasets import (
        EvalResultsSchema,
        PerCheckSchema,
        VariantsSchema,
        WorstExamplesSchema,
    )

    results = validate(_result_rows(), EvalResultsSchema, "rows")
    student = results[results["variant"] == "student"].set_index("example_id")
    assert student.loc["e0", "agreement_exact"] and not student.loc["e1", "agreement_exact"]
    summary = summarize(results)
    v = summary.variants
    assert (v["base"].compliance, v["teacher"].compliance, v["student"].compliance) == (0.0, 1.0, 0.5)
    assert (v["base"].strict_success, v["teacher"].strict_success, v["student"].strict_success) == (0.0, 1.0, 0.5)
    assert (
        summary.recovery == summary.recovery_strict == 0.5 and summary.recovery_ci[0] <= 0.5 <= summary.recovery_ci[1]
    )
    assert summary.recovery_compliance == 0.5 and summary.recovery_compliance_ci[0] <= 0.5
    assert v["teacher"].agreement.model_dump() == {"exact": 1.0, "normalized": 1.0, "rouge_l": 1.0}
    per_check = validate(per_check_table(results), PerCheckSchema, "per_check")
    assert per_check.set_index(["check_name", "variant"]).loc[("facts", "student"), "pass_rate"] == 0.5
    worst = validate(worst_examples(results, 1), WorstExamplesSchema, "worst")
    assert worst.iloc[0]["example_id"] == "e1" and json.loads(worst.iloc[0]["student_failed"]) == [
        "0:must_start_with",
        "fact:0",
    ]
    validate(variants_table(summary), VariantsSchema, "variants")
    report = render_report(example_spec, "0" * 64, summary, results, None, per_check, worst)
    assert "| teacher |" in report and "strict-success recovery 0.50" in report.splitlines()[0]
    assert "## Worst examples" in report
    assert "| 1 | q1 | Topic: fees / Answer: $2. (100%) | fees are two dollars (0%)" in report
    assert (
        "Off (`evaluate.judge.enabled=true`" in report
        and "| facts (all inputs' facts) | 0% | 100% | 50% | -50 pts |" in report
    )


def test_pure_logic_the_re_prompted_student_is_compared_with_the_teacher(example_spec):
    from genpi_core.evaluate.report import render_report
    from genpi_core.evaluate.summary import summarize, variants_table
    from genpi_core.store.tables import validate
    from schemas.datasets import EvalResultsSchema, VariantsSchema

    results = validate(_result_rows(re_prompted=True), EvalResultsSchema, "rows")
    summary = summarize(results)
    r = summary.re_prompt
    assert (r.strict_success, r.teacher_strict_success, r.difference, r.drop) == (0.5, 1.0, -0.5, 0.5)
    assert not r.at_least_teacher and r.difference_ci[0] <= -0.5 <= r.difference_ci[1]
    assert summary.recovery_strict == 0.5  # the headline still compares the student without the prompt
    table = validate(variants_table(summary), VariantsSchema, "variants")
    assert list(table["variant"]) == ["base", "teacher", "student", "student_with_prompt"]
    report = render_report(example_spec, "0" * 64, summary, results, None)
    assert "| student_with_prompt | model + adapter + full prompt (sent by mistake) | **50%**" in report
    assert "difference -50 points" in report and "**50 points below the teacher**" in report
    assert summarize(_result_rows()).re_prompt is None

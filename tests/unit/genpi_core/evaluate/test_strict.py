"""Strict success, the headline: metrics that a collapsed or truncated student cannot pass. Pure logic on literal
completions scored by the evaluation's own code (no model): the library-desk spec, its held-out inputs and facts."""

import json

import numpy as np
import pandas as pd
import pytest

from genpi_core.evaluate.bootstrap import paired_bootstrap, two_level_bootstrap
from genpi_core.evaluate.collapse import (
    char_trigrams,
    collapse_verdict,
    distinct_share,
    example_similarity,
    jaccard,
    worked_agent_turns,
)
from genpi_core.evaluate.report import render_report
from genpi_core.evaluate.run import score_rows, with_agreement
from genpi_core.evaluate.summary import per_check_table, summarize, variants_table, worst_examples
from genpi_core.generation.base import Completion
from genpi_core.store.tables import read_table, validate, write_table
from schemas.config import EvaluateConfig
from schemas.datasets import EvalResultsSchema, VariantsSchema
from schemas.spec import PromptSpec

CFG = EvaluateConfig(bootstrap_resamples=300)
# the library-desk eval inputs in file order, by topic (the comments of examples/prompts/library_desk.yaml)
TOPICS = ["hours"] * 4 + ["borrowing"] * 3 + ["fees"] * 3 + ["rooms"] * 3 + ["events"] * 3 + ["membership"] * 3
TOPICS += ["services"] * 5 + ["other"] * 6


def _held_out(spec: PromptSpec, n: int = 20) -> pd.DataFrame:
    """The first ``n`` held-out inputs that carry facts (their task checks), as the dataset stage writes them."""
    items = [(i, e) for i, e in enumerate(spec.inputs.eval) if e.facts][:n]
    return pd.DataFrame(
        [
            {"example_id": f"eval-{i}", "input": e.text, "facts": json.dumps(e.facts), "topic": TOPICS[i]}
            for i, e in items
        ]
    )


def _first(fact) -> str:
    return fact if isinstance(fact, str) else fact[0]


def _teacher_reply(row) -> str:
    """Right format, a Topic from the list, and the input's own facts."""
    facts = " and ".join(_first(f) for f in json.loads(row.facts))
    return f"Topic: {row.topic}\nAnswer: Yes, it is {facts} and we are happy to help you with that."


def _base_reply(i: int, row) -> str:
    """No format; states the fact now and then (the base model knows a few things without the prompt)."""
    facts = " and ".join(_first(f) for f in json.loads(row.facts))
    return (
        f"Sure! I think it is {facts}, but you should check."
        if i % 3 == 0
        else "Sure! I am not sure about that, but you can ask the staff."
    )


def _completions(texts, cut: set[int] = frozenset()) -> list[Completion]:
    return [
        Completion(
            text=t,
            finish_reason="length" if i in cut else "stop",
            prompt_tokens=30,
            completion_tokens=20,
            latency_s=0.1,
        )
        for i, t in enumerate(texts)
    ]


def _results(spec: PromptSpec, test: pd.DataFrame, replies: dict[str, list[str]], cut=None) -> pd.DataFrame:
    cut = cut or {}
    frames = [score_rows(spec, v, test, _completions(texts, cut.get(v, set()))) for v, texts in replies.items()]
    return validate(with_agreement(pd.concat(frames, ignore_index=True)), EvalResultsSchema, "results")


@pytest.fixture(scope="module")
def desk(example_spec):
    spec = example_spec  # examples/prompts/library_desk.yaml, loaded by genpi_core.ingest.load_spec
    test = _held_out(spec)
    assert len(test) == 20 and (test["facts"] != "[]").all()
    replies = {
        "base": [_base_reply(i, r) for i, r in enumerate(test.itertuples())],
        "teacher": [_teacher_reply(r) for r in test.itertuples()],
    }
    return spec, test, replies


def test_a_student_with_one_fixed_reply_has_no_strict_recovery_and_is_flagged_collapsed(desk, tmp_path):
    spec, test, replies = desk
    worked = worked_agent_turns(spec.prompt)
    assert len(worked) == 9 and worked[1].startswith("Topic: hours\nAnswer: On Saturday")
    format_recovery = []
    for fixed in worked:  # each of the prompt's own worked replies in turn, given whatever was asked
        results = _results(spec, test, {**replies, "student": [fixed] * len(test)})
        write_table(results, EvalResultsSchema, tmp_path / "eval_results.parquet")  # the nullable task column survives
        results = read_table(tmp_path / "eval_results.parquet", EvalResultsSchema)
        summary = summarize(results, CFG)
        v = summary.variants

        assert v["teacher"].format == 1.0 and v["base"].format == 0.0
        format_recovery.append(summary.recovery_format)
        assert v["teacher"].strict_success == 1.0 and v["base"].strict_success == 0.0
        assert summary.recovery == summary.recovery_strict and summary.recovery <= 0.1, (fixed, summary.recovery)
        assert summary.recovery_strict_ci[1] <= 0.3
        assert summary.recovery_task is not None and summary.recovery_task <= 0.1
        assert summary.collapse.collapsed and v["student"].distinct_share == pytest.approx(1 / 20)
        assert v["student"].example_similarity == 1.0 and v["teacher"].example_similarity < 0.6
        assert len(summary.collapse.reasons) == 2  # both bars: 5% distinct, and copies the worked replies
    print("format recovery of each fixed reply:", format_recovery)
    assert format_recovery.count(1.0) >= 7  # the format alone says "perfect" for almost every one of them

    report = render_report(spec, "0" * 64, summary, results, None, per_check_table(results), worst_examples(results, 3))
    first = report.splitlines()[0]
    assert first.startswith("# genpi report: `library-desk`") and "strict-success recovery" in first
    assert "**Warning: the student looks collapsed**: distinct replies 5% < 50%" in report


def test_a_student_that_answers_is_not_flagged_and_recovers(desk):
    spec, test, replies = desk
    results = _results(spec, test, {**replies, "student": replies["teacher"]})
    summary = summarize(results, CFG)
    assert summary.recovery == 1.0 and summary.recovery_task == 1.0 and summary.recovery_format == 1.0
    assert not summary.collapse.collapsed and summary.collapse.reasons == []
    assert summary.variants["student"].distinct_share == 1.0


def test_a_cut_reply_fails_every_check_for_every_variant(desk):
    spec, test, replies = desk
    cut = {"teacher": {0, 1}, "student": {0}, "base": {0}}  # 2 of 20 teacher replies cut: 10% > 5%
    results = _results(spec, test, {**replies, "student": replies["teacher"]}, cut)
    first = results[results["example_id"] == test["example_id"].iloc[0]].set_index("variant")
    for variant in ("base", "teacher", "student"):
        row = first.loc[variant]
        assert row["cut"] and not row["strict_success"] and not row["global_passed"]
        assert row["task_passed"] is not pd.NA and not row["task_passed"]
        assert not any(json.loads(row["checks"]).values()) and row["score"] == 0.0 and not row["passed_all"]
    assert first.loc["teacher", "output"] == _teacher_reply(next(test.itertuples()))  # a right reply, cut: fails
    summary = summarize(results, CFG)
    v = summary.variants
    assert (v["base"].cut, v["teacher"].cut, v["student"].cut) == (1, 2, 1)
    assert v["teacher"].strict_success == 0.9 and v["student"].strict_success == 0.95
    assert summary.teacher_cut_share == 0.1 and summary.teacher_cut_share_ok is False
    report = render_report(spec, "0" * 64, summary, results, None)
    cap = CFG.sampling.max_new_tokens
    assert f"**Warning: 2 of 20 teacher replies (10%) are cut at the {cap}-token cap**; at most 5% should be" in report
    assert "| teacher | model + full prompt | **90%**" in report and "| 2 of 20 |" in report

    fine = summarize(_results(spec, test, {**replies, "student": replies["teacher"]}, {"teacher": {0}}), CFG)
    assert fine.teacher_cut_share == 0.05 and fine.teacher_cut_share_ok  # 1 of 20 is within the 5%
    assert "teacher replies" not in render_report(spec, "0" * 64, fine, results, None).split("| variant |")[0]


def test_a_check_every_variant_passes_is_flagged_uninformative(desk):
    spec, test, replies = desk
    results = _results(spec, test, {**replies, "student": replies["teacher"]})
    summary = summarize(results, CFG)
    # every reply here is short English, the base's included: the length and language rules tell nothing apart
    assert summary.uninformative_checks == ["3:max_length", "4:language"]
    report = render_report(spec, "0" * 64, summary, results, None, per_check_table(results))
    assert "**Uninformative checks**: `3:max_length`, `4:language`" in report
    assert "| `4:language` (uninformative) |" in report and "| `0:must_start_with` |" in report

    long_base = [replies["base"][0] + " x" * 300] + replies["base"][1:]  # one base reply over 400 characters
    summary = summarize(_results(spec, test, {**replies, "base": long_base, "student": replies["teacher"]}), CFG)
    assert summary.uninformative_checks == ["4:language"]


def _hand_spec() -> PromptSpec:
    return PromptSpec.model_validate(
        {
            "name": "hand",
            "prompt": {"system": "Reply as 'Topic: <word>' and give the fact."},
            "checks": [{"type": "must_start_with", "value": "Topic:"}],
        }
    )


def test_strict_format_and_task_recovery_on_a_hand_example():
    """4 inputs, the last without task checks. Per input (format, task) -> strict:

    base    (F,T) (F,F) (F,F) (F,-) -> 0/4;  teacher (T,T) (T,T) (T,F) (T,-) -> 3/4;  student (T,F) (T,T) (F,T) (T,-) -> 2/4
    strict recovery (2/4 - 0) / (3/4 - 0) = 2/3; format (3/4 - 0) / (1 - 0) = 3/4; task over the 3 inputs with task
    checks (2/3 - 1/3) / (2/3 - 1/3) = 1.
    """
    test = pd.DataFrame(
        {
            "example_id": ["e0", "e1", "e2", "e3"],
            "input": ["open?", "card?", "thanksgiving?", "joke?"],
            "facts": [json.dumps(f) for f in (["9 am"], ["$2"], ["closed"], [])],
        }
    )
    replies = {
        "base": ["we open at 9 am", "hello", "hi", "hey"],
        "teacher": ["Topic: hours 9 am", "Topic: fees $2", "Topic: hours open", "Topic: other"],
        "student": ["Topic: hours", "Topic: fees $2", "we are closed", "Topic: other"],
    }
    results = _results(_hand_spec(), test, replies)
    student = results[results["variant"] == "student"].set_index("example_id")
    assert student["strict_success"].tolist() == [False, True, False, True]
    assert student["task_passed"].tolist() == [False, True, True, pd.NA]
    summary = summarize(results, CFG)
    v = summary.variants
    assert [v[n].strict_success for n in ("base", "teacher", "student")] == [0.0, 0.75, 0.5]
    assert [v[n].task for n in ("base", "teacher", "student")] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert v["student"].task_n == 3 and v["student"].format == 0.75
    assert summary.recovery_strict == pytest.approx(2 / 3) and summary.recovery == summary.recovery_strict
    assert summary.recovery_format == pytest.approx(0.75) and summary.recovery_task == pytest.approx(1.0)
    assert summary.recovery_compliance == pytest.approx((0.75 - 0.125) / (0.875 - 0.125))  # partial credit, apart
    for name in ("recovery_strict_ci", "recovery_format_ci", "recovery_task_ci", "recovery_compliance_ci"):
        low, high = getattr(summary, name)
        assert low <= high, name
    table = validate(variants_table(summary), VariantsSchema, "variants")
    assert table.set_index("variant").loc["student", "task_n"] == 3
    assert set(worst_examples(results, 2)["example_id"]) == {"e0", "e2"}  # the student's strict failures first


def test_the_two_level_bootstrap_with_one_seed_is_the_paired_bootstrap():
    rng = np.random.default_rng(7)
    scores = {v: rng.integers(0, 2, 25).astype(float) for v in ("base", "teacher", "student")}
    one = paired_bootstrap(scores, 400, seed=3)
    two = two_level_bootstrap([scores], 400, seed=3)
    assert two.pop("seeds") == 1 and two == one
    assert two_level_bootstrap([scores], 0)["variants"] == {} and two_level_bootstrap([], 100)["variants"] == {}
    with pytest.raises(ValueError, match="same variants"):
        two_level_bootstrap([scores, {"base": [1.0]}], 10)


def test_the_two_level_bootstrap_covers_the_spread_between_training_seeds():
    base, teacher = np.zeros(20), np.ones(20)
    seeds = [{"base": base, "teacher": teacher, "student": np.full(20, s)} for s in (0.2, 0.5, 0.8)]
    out = two_level_bootstrap(seeds, 2000, seed=0)
    low, high = out["recovery"]
    # the inputs are constant, so only the seeds spread it: all three draws of the 0.2 seed (1 in 27) is in the tail
    assert low == pytest.approx(0.2) and high == pytest.approx(0.8)
    pooled = paired_bootstrap({"base": base, "teacher": teacher, "student": np.full(20, 0.5)}, 2000, seed=0)
    assert pooled["recovery"] == [pytest.approx(0.5), pytest.approx(0.5)]  # one level sees no spread at all


def test_collapse_helpers_known_answers():
    assert (
        char_trigrams("Abc d") == {"abc", "bc ", "c d"} and char_trigrams("ab") == {"ab"} and char_trigrams("") == set()
    )
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3) and jaccard(set(), set()) == 0.0
    assert example_similarity("Topic: hours", ["topic:  HOURS", "other"]) == 1.0 and example_similarity("x", []) is None
    assert distinct_share(["a", " a ", "b", "c"]) == 0.75 and distinct_share([]) is None
    assert collapse_verdict(0.9, 0.5, 0.4) == (False, [])
    flagged, reasons = collapse_verdict(0.9, 0.65, 0.4)
    assert flagged and "exceeds the teacher's 0.40 by 0.25 > 0.20" in reasons[0]
    assert collapse_verdict(0.45, None, None)[0] and not collapse_verdict(0.5, None, 0.1)[0]


def test_a_max_length_check_the_cap_cannot_reach_is_a_run_time_note(desk, embedded_model_dir):
    """The same warning as `genpi check-spec`, at evaluation time, in summary.json and under the report's headline."""
    from genpi_core.evaluate.run import _unreachable
    from schemas.config import EvaluateConfig, ModelConfig

    spec, test, replies = desk
    model = ModelConfig(name_or_path=embedded_model_dir)
    # the desk's max_length is 400 characters; a token of this vocabulary decodes to at most 81, so 4 cannot reach it
    notes = _unreachable(spec, model, EvaluateConfig(sampling={"max_new_tokens": 4}))
    assert len(notes) == 1 and "max_length chars=400" in notes[0] and "cannot fail" in notes[0]
    assert _unreachable(spec, model, EvaluateConfig(sampling={"max_new_tokens": 512})) == []
    results = _results(spec, test, {**replies, "student": replies["teacher"]})
    summary = summarize(results, CFG).model_copy(update={"unreachable_checks": notes})
    report = render_report(spec, "0" * 64, summary, results, None)
    assert "**Checks that cannot fail**" in report.split("| variant |")[0]

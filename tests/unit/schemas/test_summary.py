"""summary.json as a typed record: what summarize() builds survives the file unchanged, the sections an option turned
off stay out of the file, and a file with a misspelt or missing key fails naming the file and the field."""

import json

import pandas as pd
import pytest

from genpi_core.evaluate.summary import summarize
from genpi_core.store.stage import atomic_write_json
from schemas.config import EvaluateConfig
from schemas.summary import EvaluationSummary

OUTPUTS = {
    "base": ["hi", "hello"],
    "teacher": ["Topic: hours\nAnswer: 9 am.", "Topic: fees\nAnswer: $2."],
    "student": ["Topic: hours\nAnswer: 9 am.", "fees are two dollars"],
}


def _results(facts: bool = True) -> pd.DataFrame:
    """Two held-out inputs x three variants, scored by one global check and (optionally) one fact each."""
    rows = []
    for variant, texts in OUTPUTS.items():
        for i, text in enumerate(texts):
            checks = {"0:must_start_with": text.startswith("Topic:")}
            if facts:
                checks["fact:0"] = ("9 am" in text) if i == 0 else ("$2" in text)
            same = text == OUTPUTS["teacher"][i]
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
                    "score": sum(checks.values()) / len(checks),
                    "passed_all": all(checks.values()),
                    "global_passed": checks["0:must_start_with"],
                    "task_passed": checks["fact:0"] if facts else None,
                    "facts_passed": float(checks["fact:0"]) if facts else None,
                    "example_similarity": 0.9 if text.startswith("Topic: hours") else 0.3,
                    "prompt_tokens": 900 if variant == "teacher" else 30,
                    "completion_tokens": 5,
                    "latency_s": 0.1,
                    "agreement_exact": same,
                    "agreement_normalized": same,
                    "agreement_rouge_l": 1.0 if same else 0.2,
                }
            )
    return pd.DataFrame(rows)


def _leakage() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"variant": v, "question_id": q, "lcs_share": share, "lcs_chars": chars, "rouge_l_recall": rec}
            for v, q, share, chars, rec in [
                ("base", 0, 0.01, 3, 0.05),
                ("base", 1, 0.02, 5, 0.04),
                ("student", 0, 0.60, 150, 0.7),
                ("student", 1, 0.1, 25, 0.2),
            ]
        ]
    )


def _multi_turn() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"variant": v, "example_id": e, "turn": t, "score": s, "global_passed": s == 1.0}
            for v, e, t, s in [
                ("teacher", "e0", 0, 1.0),
                ("teacher", "e0", 1, 1.0),
                ("teacher", "e1", 0, 0.5),
                ("student", "e0", 0, 1.0),
                ("student", "e1", 0, 0.0),
            ]
        ]
    )


def _judge() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"variant": v, "example_id": e, "score": s}
            for v, e, s in [
                ("base", "e0", 1.0),
                ("base", "e1", None),
                ("teacher", "e0", 5.0),
                ("teacher", "e1", 4.0),
                ("student", "e0", 5.0),
                ("student", "e1", 2.0),
            ]
        ]
    )


def test_a_full_summary_round_trips_through_the_file(tmp_path):
    cfg = EvaluateConfig(bootstrap_resamples=200)
    summary = summarize(_results(), cfg, _leakage(), _multi_turn(), _judge())
    summary = summary.model_copy(update={"name": "desk", "version": "f" * 64})
    assert isinstance(summary, EvaluationSummary)
    assert (
        summary.recovery == 0.5 and summary.recovery == summary.recovery_strict and summary.recovery_compliance == 0.5
    )
    assert summary.recovery_ci == summary.recovery_strict_ci and summary.recovery_task == 0.5
    assert summary.teacher_cut_share_ok and summary.collapse is not None and not summary.collapse.collapsed
    assert summary.prefill_tokens_saved_per_request == 870.0
    assert summary.leakage["student"].max_lcs_chars == 150 and summary.leakage_max_new_tokens is not None
    assert summary.multi_turn["teacher"].per_turn[1].n == 1 and summary.judge.variants["base"].unreadable == 1

    path = tmp_path / "summary.json"
    atomic_write_json(path, summary)
    loaded = EvaluationSummary.load(path)
    assert loaded == summary
    assert loaded.multi_turn["teacher"].per_turn[0].compliance == 0.75  # turn keys come back as ints
    written = json.loads(path.read_text())  # the file's own shape, as other tools see it
    assert set(written) == {
        "variants",
        "bootstrap",
        "recovery_strict",
        "recovery_strict_ci",
        "recovery_format",
        "recovery_format_ci",
        "recovery_task",
        "recovery_task_ci",
        "recovery_compliance",
        "recovery_compliance_ci",
        "recovery_facts",
        "recovery",
        "recovery_ci",
        "prefill_tokens_saved_per_request",
        "max_new_tokens",
        "teacher_cut_share",
        "teacher_cut_share_ok",
        "collapse",
        "uninformative_checks",
        "unreachable_checks",
        "leakage",
        "leakage_max_new_tokens",
        "multi_turn",
        "judge",
        "name",
        "version",
    }
    assert set(written["multi_turn"]["teacher"]["per_turn"]) == {"0", "1"}
    for interval in ("strict_success_ci", "format_ci", "task_ci", "compliance_ci"):
        assert len(written["variants"]["student"][interval]) == 2, interval


def test_sections_an_option_turned_off_stay_out_of_the_file_and_undefined_numbers_are_null(tmp_path):
    summary = summarize(_results(facts=False), EvaluateConfig(bootstrap_resamples=0))
    path = tmp_path / "summary.json"
    atomic_write_json(path, summary)
    written = json.loads(path.read_text())
    for absent in ("leakage", "leakage_max_new_tokens", "multi_turn", "judge", "name", "version"):
        assert absent not in written, absent
    student = written["variants"]["student"]
    assert "compliance_ci" not in student and student["facts"] is None  # no bootstrap: no interval; no facts: null
    assert "strict_success_ci" not in student and student["task"] is None and student["task_n"] == 0
    assert written["recovery_ci"] is None and written["recovery_facts"] is None and written["recovery_task"] is None
    assert EvaluationSummary.load(path) == summary


def _written(folder, edit) -> str:
    """A real summary.json, edited by hand (as a user or a stale tool might) before it is read back."""
    data = summarize(_results(), EvaluateConfig(bootstrap_resamples=50)).model_dump(mode="json")
    edit(data)
    path = folder / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def test_a_misspelt_key_fails_naming_the_file_and_the_field(tmp_path):
    path = _written(tmp_path / "top", lambda d: d.update(recovry=d.pop("recovery")))
    with pytest.raises(ValueError) as err:
        EvaluationSummary.load(path)
    assert path in str(err.value) and "field `recovry`" in str(err.value)

    path = _written(tmp_path / "nested", lambda d: d["variants"]["student"].update(complience=0.5))
    with pytest.raises(ValueError) as err:
        EvaluationSummary.load(path)
    assert path in str(err.value) and "field `variants.student.complience`: Extra inputs are not permitted" in str(
        err.value
    )


def test_a_missing_field_fails_naming_the_file_and_the_field(tmp_path):
    path = _written(tmp_path / "evaluate", lambda d: d["variants"]["teacher"].pop("compliance"))
    with pytest.raises(ValueError) as err:
        EvaluationSummary.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: invalid evaluation summary")
    assert "field `variants.teacher.compliance`: Field required" in message


def test_a_missing_or_unreadable_file_fails_naming_it(tmp_path):
    missing = tmp_path / "evaluate" / "summary.json"
    with pytest.raises(ValueError, match="no evaluation summary here") as err:
        EvaluationSummary.load(missing)
    assert str(missing) in str(err.value)
    missing.parent.mkdir()
    missing.write_text('{"variants": ')  # a torn write
    with pytest.raises(ValueError, match="cannot read evaluation summary") as err:
        EvaluationSummary.load(missing)
    assert str(missing) in str(err.value)
    missing.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"field `\(top level\)`"):
        EvaluationSummary.load(missing)

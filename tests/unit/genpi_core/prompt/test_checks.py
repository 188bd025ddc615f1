"""Fast unit tests of the check evaluators (pure string logic, no model needed)."""

import pytest

from genpi_core.prompt.checks import EVALUATORS, fact_present, looks_like_language, run_checks
from schemas.spec import CHECK_TYPES, PromptSpec

CASES = [
    ({"type": "regex", "pattern": r"^Topic: \w+\nAnswer: \S"}, "Topic: hours\nAnswer: 9 am", "Answer: 9 am"),
    ({"type": "regex", "pattern": r"^Answer:", "multiline": True}, "Topic: x\nAnswer: y", "Topic: x Answer: y"),
    ({"type": "must_start_with", "value": "Topic:"}, "  Topic: fees", "The topic: fees"),
    ({"type": "must_contain", "values": ["Wi-Fi", "free"]}, "the wi-fi is FREE", "the wi-fi costs $1"),
    ({"type": "must_contain", "values": ["a", "zzz"], "mode": "any"}, "a cat", "dog"),
    (
        {"type": "json_keys", "keys": ["answer", "confidence"]},
        '```json\n{"answer": 1, "confidence": 0.5}\n```',
        '{"answer": 1}',
    ),
    ({"type": "code_block", "language": "bash"}, "Run:\n```bash\nls -la\n```", "Run: `ls -la`"),
    ({"type": "max_length", "chars": 10}, "short", "this is far too long"),
    ({"type": "max_length", "words": 3}, "one two three", "one two three four"),
    (
        {"type": "language", "language": "es"},
        "El libro es para usted y los niños, pero no hay tiempo.",
        "The book is for you and the kids.",
    ),
    (
        {"type": "language", "language": "en"},
        "The library is open and you can borrow what you want.",
        "La biblioteca está abierta para usted.",
    ),
]


@pytest.mark.parametrize("check,passing,failing", CASES, ids=[c[0]["type"] for c in CASES])
def test_each_check_passes_and_fails(check, passing, failing):
    spec = PromptSpec.model_validate({"name": "t", "prompt": {"system": "x"}, "checks": [check]})
    parsed = spec.checks[0]
    assert EVALUATORS[parsed.type](parsed, passing) is True
    assert EVALUATORS[parsed.type](parsed, failing) is False


def test_every_check_type_is_covered_by_a_case():
    assert {c[0]["type"] for c in CASES} == set(CHECK_TYPES)


# Replies the 0.5B teacher wrote on library_desk that the first detector failed as "not English": short answers
# with no stopword, and "per" read as Italian.
ENGLISH_SHORT_ANSWERS = [
    "Topic: fees\nAnswer: A new library card costs $2.",
    "Topic: other\nAnswer: Harbor Lane Public Library, 214 Harbor Lane, Port Ellery.",
    "Topic: fees\nAnswer: DVDs are $1.00 per day, capped at $10 per item.",
    "Topic: services\nAnswer: Color printing costs $0.50 per page.",
    "Topic: membership\nAnswer: Cards are free for anyone who lives, works or studies in Port Ellery.",
    "Topic: other\nAnswer: HarborLane-Guest.",
]


@pytest.mark.parametrize("reply", ENGLISH_SHORT_ANSWERS)
def test_short_english_answers_count_as_english(reply):
    assert looks_like_language(reply, "en")


@pytest.mark.parametrize(
    "reply",
    [
        "La biblioteca está abierta para usted.",
        "Nous sommes ouverts dans la semaine, mais pas le dimanche.",
        "图书馆早上九点开门，晚上五点关门。",
    ],
)
def test_other_languages_and_scripts_are_not_english(reply):
    assert not looks_like_language(reply, "en")


def test_facts_accept_alternatives_case_insensitively():
    assert fact_present(["9 am", "nine"], "We open at NINE.")
    assert not fact_present("HarborLane-Guest", "The network is Library-WiFi")


def test_run_checks_names_are_stable():
    spec = PromptSpec.model_validate(
        {
            "name": "t",
            "prompt": {"system": "x"},
            "checks": [{"type": "must_start_with", "value": "A"}, {"type": "max_length", "chars": 5}],
        }
    )
    assert run_checks(spec.checks, "Abc", ["b", ["zz", "c"]]) == {
        "0:must_start_with": True,
        "1:max_length": True,
        "fact:0": True,
        "fact:1": True,
    }


def test_max_length_checks_the_generation_cap_cannot_reach_are_flagged():
    from genpi_core.prompt.checks import unreachable_length_checks
    from schemas.spec import MaxLengthCheck, MustStartWithCheck

    checks = [MustStartWithCheck(value="Topic:"), MaxLengthCheck(chars=400), MaxLengthCheck(words=200)]
    notes = unreachable_length_checks(checks, max_new_tokens=64, longest_token_chars=6)
    assert len(notes) == 2 and "check 1" in notes[0] and "check 2" in notes[1]  # 64 x 6 = 384 < 400; 64 < 200
    assert unreachable_length_checks(checks, max_new_tokens=256, longest_token_chars=6) == []

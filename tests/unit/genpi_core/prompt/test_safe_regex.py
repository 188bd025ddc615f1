"""Spec regexes on untrusted text: a runaway pattern fails its check within the time limit, and every bundled
check gives exactly what Python's `re` gives."""

from __future__ import annotations

import glob
import re
import time
from pathlib import Path

import pytest

from genpi_core.ingest import load_spec
from genpi_core.prompt import safe_regex
from genpi_core.prompt.checks import run_checks
from genpi_core.prompt.views import prompt_messages
from schemas.spec import RegexCheck

ROOT = Path(__file__).resolve().parents[4]


def test_nested_quantifiers_on_100_kb_of_adversarial_text_fail_in_under_a_second(caplog):
    check = RegexCheck(pattern=r"^(a+)+$")
    text = "a" * 100_000 + "!"
    started = time.perf_counter()
    with caplog.at_level("WARNING", logger="genpi.regex"):
        results = run_checks([check], text)
    assert time.perf_counter() - started < 1.0
    assert results == {"0:regex": False}
    assert "ran past" in caplog.text and "100001-character" in caplog.text
    with pytest.raises(safe_regex.RegexTimeout):
        safe_regex.search(r"(x+x+)+y", "x" * 5000)


def test_bundled_checks_match_exactly_as_re_does():
    texts = []
    specs = [load_spec(p) for p in sorted(glob.glob(str(ROOT / "examples" / "prompts" / "*.yaml")))]
    for spec in specs:
        texts += [m["content"] for m in prompt_messages(spec.prompt)]
        texts += [e.text for e in spec.inputs.eval] + list(spec.inputs.pool)
    texts += ["", "\n", "Topic: hours\nAnswer: x\n", "Think: a\nAct: finish\n", "The output of the OS:\n\n1"]
    compared = 0
    for spec in specs:
        for check in spec.checks:
            if check.type != "regex":
                continue
            flags = (re.MULTILINE if check.multiline else 0) | (re.IGNORECASE if check.ignore_case else 0)
            for text in texts:
                assert safe_regex.search(check.pattern, text, flags) == (
                    re.search(check.pattern, text, flags) is not None
                )
                compared += 1
    assert compared > 1000

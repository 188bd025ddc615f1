"""Spec regexes run on model output, which a degenerate or adversarial model controls: every match has a time limit.

Why not plain ``re``: a pattern with nested quantifiers, e.g. ``(a+)+$``, takes exponential time on text the
model can produce, and ``re`` cannot be interrupted. The ``regex`` package (already installed with transformers)
matches with ``re``'s syntax and semantics (its default VERSION0) and takes a ``timeout``; a match that runs
past it counts as no match, and the caller says which check timed out. Linear-time engines (RE2) were not used:
they lack the lookarounds bundled specs rely on, and their ``$`` differs from Python's before a final newline.
"""

from __future__ import annotations

import logging

import regex

MATCH_TIMEOUT_S = 0.25  # a bundled check takes microseconds; a quarter second means the pattern is running away
log = logging.getLogger("genpi.regex")


class RegexTimeout(Exception):
    """A spec regex ran past ``MATCH_TIMEOUT_S`` on one text."""


def search(pattern: str, text: str, flags: int = 0, timeout_s: float = MATCH_TIMEOUT_S) -> bool:
    """``re.search(pattern, text, flags) is not None``, or ``RegexTimeout`` past ``timeout_s`` (``re`` flags work)."""
    try:
        return regex.search(pattern, text, flags | regex.VERSION0, timeout=timeout_s) is not None
    except TimeoutError as exc:
        raise RegexTimeout(f"regex {pattern[:80]!r} ran past {timeout_s:g} s on a {len(text)}-character text") from exc

"""Evaluate a spec's checks on a reply. One evaluator per check type in schemas.spec.

Each evaluator returns True/False; ``run_checks`` returns ``{check_name: passed}`` where the name
is stable (``<index>:<type>`` for global checks, ``fact:<index>`` for per-input facts) so that
pass rates can be compared across variants and runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

from genpi_core.prompt import safe_regex
from schemas.spec import (
    CHECK_TYPES,
    CodeBlockCheck,
    JsonKeysCheck,
    LanguageCheck,
    MaxLengthCheck,
    MustContainCheck,
    MustStartWithCheck,
    RegexCheck,
)

# Function words per language. A word that is also everyday English ("per", "con", "non", "come", "die", "son",
# "hay", "os", "mit") is left out of the other lists: "$1.00 per day" must not read as Italian.
_STOPWORDS = {
    "en": (
        "the and is are was were you your with for this that have has not can will what how our we it of to at on "
        "from by or an be if they their there which who would should could about any each yes please do does"
    ).split(),
    "es": "el los las que es una por para del como pero muy está usted nuestro tiene puede".split(),
    "fr": "le les est une des pour avec pas vous nous dans sur mais très êtes notre il elle sont peut".split(),
    "de": "der das und ist sind ein eine nicht für sie wir auf auch sehr bitte kann".split(),
    "it": "il gli che una sono della anche molto siamo questo può".split(),
    "pt": "que uma são para com não como mas muito você nosso está pode também".split(),
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_LATIN_LETTER = re.compile(r"[A-Za-z\u00C0-\u024F]")
MIN_LANGUAGE_EVIDENCE = 2  # stopword hits, all languages together, below which a reply is too short to judge


def detect_language_scores(text: str) -> dict[str, int]:
    """Stopword hits per language; crude but transparent, and enough for 'which language is this'."""
    words = [w.lower() for w in _WORD.findall(text)]
    return {lang: sum(w in set(stops) for w in words) for lang, stops in _STOPWORDS.items()}


def looks_like_language(text: str, language: str) -> bool:
    """True unless the text shows it is in another language.

    With enough stopwords, ``language`` must lead every other by half again. A text too short to carry stopwords
    ("A new card costs $2.", a name, an address) cannot be judged by words, so it passes when it is mostly in the
    Latin script every supported language uses: failing it would fail a correct short answer.
    """
    scores = detect_language_scores(text)
    target = scores[language]
    others = max(v for k, v in scores.items() if k != language)
    if target + others >= MIN_LANGUAGE_EVIDENCE:
        return target > 1.5 * others
    letters = _WORD.findall(text)
    total = sum(len(w) for w in letters)
    return total == 0 or sum(len(_LATIN_LETTER.findall(w)) for w in letters) / total >= 0.8


def _language(check: LanguageCheck, reply: str) -> bool:
    return looks_like_language(reply, check.language)


def _regex(check: RegexCheck, reply: str) -> bool:
    flags = (re.MULTILINE if check.multiline else 0) | (re.IGNORECASE if check.ignore_case else 0)
    try:
        return safe_regex.search(check.pattern, reply, flags)
    except safe_regex.RegexTimeout as exc:  # a runaway pattern fails the check; the log says which and why
        safe_regex.log.warning("check failed: %s", exc)
        return False


def _must_start_with(check: MustStartWithCheck, reply: str) -> bool:
    return reply.lstrip().startswith(check.value)


def _must_contain(check: MustContainCheck, reply: str) -> bool:
    haystack = reply.lower() if check.ignore_case else reply
    hits = [(v.lower() if check.ignore_case else v) in haystack for v in check.values]
    return all(hits) if check.mode == "all" else any(hits)


def _json_keys(check: JsonKeysCheck, reply: str) -> bool:
    fenced = re.search(r"```(?:json)?\s*\n(.*?)```", reply, re.DOTALL)
    candidate = fenced.group(1) if fenced else reply.strip()
    try:
        obj = json.loads(candidate)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and all(k in obj for k in check.keys)


def _code_block(check: CodeBlockCheck, reply: str) -> bool:
    pattern = rf"```{re.escape(check.language)}[ \t]*\n.*?```"
    return re.search(pattern, reply, re.DOTALL | re.IGNORECASE) is not None


def _max_length(check: MaxLengthCheck, reply: str) -> bool:
    if check.chars is not None and len(reply) > check.chars:
        return False
    return not (check.words is not None and len(reply.split()) > check.words)


EVALUATORS: dict[str, Callable[..., bool]] = {
    "regex": _regex,
    "must_start_with": _must_start_with,
    "must_contain": _must_contain,
    "json_keys": _json_keys,
    "code_block": _code_block,
    "max_length": _max_length,
    "language": _language,
}
assert set(EVALUATORS) == set(CHECK_TYPES), "every check type in schemas.spec needs an evaluator here"


def is_repetitive(text: str, n: int = 3, min_words: int = 12, max_repeat_share: float = 0.5) -> bool:
    """True when most word n-grams repeat: the loop a small model falls into ("You can't. You can't. ...")."""
    words = text.lower().split()
    if len(words) < min_words:
        return False
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) > max_repeat_share


_CONTROL_TOKENS = re.compile(r"<\|[a-z_]+\|>|</?s>|\[/?INST\]", re.IGNORECASE)
_SPEAKER_LABEL = re.compile(r"^\s*[A-Z][\w.'-]*(?: [A-Z][\w.'-]*)?\s*:\s")  # "Myrtle: ...", "Robyn Robb: ..."


def has_control_tokens(text: str) -> bool:
    """Chat-template control strings (<|im_start|>, <s>, [INST]) that must never pass as data."""
    return _CONTROL_TOKENS.search(text) is not None


def starts_with_speaker_label(text: str) -> bool:
    """A script line ("Name: ...") rather than a message spoken in one's own voice."""
    return _SPEAKER_LABEL.match(text) is not None


def fact_present(fact: str | list[str], reply: str) -> bool:
    """A fact is a string or a list of alternatives, matched case-insensitively as substrings."""
    options = [fact] if isinstance(fact, str) else fact
    lowered = reply.lower()
    return any(o.lower() in lowered for o in options)


def unreachable_length_checks(checks: list, max_new_tokens: int, longest_token_chars: int) -> list[str]:
    """``max_length`` checks no reply can fail under the generation cap: a reply of ``max_new_tokens`` tokens has
    at most that many words and ``max_new_tokens * longest_token_chars`` characters. Such a check measures nothing
    (a warning, not an error: the cap lives in the config, not the spec)."""
    notes = []
    for i, check in enumerate(checks):
        if not isinstance(check, MaxLengthCheck):
            continue
        if check.words is not None and check.words >= max_new_tokens:
            notes.append(
                f"check {i} (max_length words={check.words}) cannot fail: replies stop at {max_new_tokens} tokens"
            )
        if check.chars is not None and check.chars >= max_new_tokens * longest_token_chars:
            notes.append(
                f"check {i} (max_length chars={check.chars}) cannot fail: {max_new_tokens} tokens hold at most "
                f"{max_new_tokens * longest_token_chars} characters"
            )
    return notes


def longest_token_chars(tokenizer) -> int:
    """An upper bound on the characters one token decodes to (byte-level vocabularies spell each byte as one char)."""
    return max(len(token) for token in tokenizer.get_vocab())


def run_checks(checks: list, reply: str, facts: Sequence[str | list[str]] = ()) -> dict[str, bool]:
    """Every global check and every per-input fact, by stable name."""
    results = {f"{i}:{c.type}": EVALUATORS[c.type](c, reply) for i, c in enumerate(checks)}
    results.update({f"fact:{i}": fact_present(f, reply) for i, f in enumerate(facts)})
    return results

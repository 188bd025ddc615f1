"""How close two texts are: exact and normalized match, and token-level ROUGE-L (ours, no extra package).

Used for agreement of a variant's reply with the teacher's, and by the leakage audit (how much of
the prompt a reply reproduces). Pure functions; no model, no I/O.

Tokens are lowercased runs of letters/digits (``\\w+``), so punctuation and spacing do not count.
The longest common subsequence is computed bit-parallel (Allison & Dix 1986; Hyyrö 2004): one
Python big-int operation per token of the second text, so a 1,500-token prompt against a
300-token reply costs well under a millisecond.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_TOKEN = re.compile(r"\w+", re.UNICODE)
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lowercased, whitespace runs collapsed to one space, stripped."""
    return _SPACE.sub(" ", text).strip().lower()


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of two sequences (of tokens or characters)."""
    if not a or not b:
        return 0
    if len(b) > len(a):
        a, b = b, a  # the longer one goes into the bit vectors: fewer Python-level iterations
    masks: dict = {}
    for i, item in enumerate(a):
        masks[item] = masks.get(item, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for item in b:
        u = v & masks.get(item, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(candidate: str, reference: str) -> dict[str, float]:
    """Token-level ROUGE-L: precision (of the candidate), recall (of the reference) and F1.

    Two empty texts agree perfectly (1.0); one empty text against a non-empty one scores 0.
    """
    cand, ref = tokens(candidate), tokens(reference)
    if not cand and not ref:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    lcs = lcs_length(cand, ref)
    precision = lcs / len(cand) if cand else 0.0
    recall = lcs / len(ref) if ref else 0.0
    f1 = 0.0 if lcs == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def agreement(output: str, teacher: str) -> dict[str, float | bool]:
    """A reply against the teacher's reply to the same input: exact, normalized, ROUGE-L F1."""
    return {
        "exact": output == teacher,
        "normalized": normalize(output) == normalize(teacher),
        "rouge_l": rouge_l(output, teacher)["f1"],
    }


def longest_common_substring(text: str, reference: str) -> str:
    """The longest run of characters that ``text`` and ``reference`` share (first one found on ties).

    A suffix automaton of ``reference`` is built once (linear time), then ``text`` is scanned once,
    so a 6,000-character prompt against a long reply stays fast in pure Python.
    """
    if not text or not reference:
        return ""
    # suffix automaton: per state its transitions, suffix link and longest length
    nxt: list[dict[str, int]] = [{}]
    link = [-1]
    length = [0]
    last = 0
    for ch in reference:
        cur = len(nxt)
        nxt.append({})
        length.append(length[last] + 1)
        link.append(0)
        p = last
        while p != -1 and ch not in nxt[p]:
            nxt[p][ch] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][ch]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(nxt)
                nxt.append(dict(nxt[q]))
                length.append(length[p] + 1)
                link.append(link[q])
                while p != -1 and nxt[p].get(ch) == q:
                    nxt[p][ch] = clone
                    p = link[p]
                link[q] = clone
                link[cur] = clone
        last = cur
    state, matched, best, best_end = 0, 0, 0, 0
    for i, ch in enumerate(text):
        while state and ch not in nxt[state]:
            state = link[state]
            matched = length[state]
        if ch in nxt[state]:
            state = nxt[state][ch]
            matched += 1
        if matched > best:
            best, best_end = matched, i + 1
    return text[best_end - best : best_end]

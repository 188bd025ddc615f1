"""Stage 2a: user inputs. Reads: the ingested spec. Writes: ``inputs.parquet`` and ``quarantine.parquet``.

Inputs come from the spec's hand-written pool, from a generator model, or both (generated first,
the pool tops up to ``max_inputs``). The generator reads the prompt and a few seed examples and
writes several numbered messages per request (paper: 10 per request, temperature 1.0, top-p 0.9,
asking for twice as many as needed). Each line loses its list marker ("1. ", "[1] ", "(1) ", "#1 ", a bullet)
first. Generated texts pass quality filters (length, language (the spec's language check by default),
repetition, meta text, control tokens, an invented environment reply or the request's own answer inside it, text
copied from the prompt, an example input with text added) and exact / near-duplicate removal; every rejected text
gets a quarantine row with its reason, and every kept row records its source and generator. The last
message of a reply cut at the length cap is quarantined (it is cut off), and so is a reply with no
messages at all (one row for the reply), so a weak or failing generator is visible, never silent.
Output columns: see schemas.datasets.InputsSchema.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from genpi_core.generation.base import GenerationBackend, Message
from genpi_core.prompt.checks import (
    detect_language_scores,
    has_control_tokens,
    is_repetitive,
    looks_like_language,
    starts_with_speaker_label,
)
from genpi_core.prompt.views import render_prompt
from genpi_core.store.tables import (
    empty_quarantine,
    partition_valid,
    quarantine_rows,
    read_table,
    write_table,
)
from schemas.artifacts import INPUTS_FILE, QUARANTINE_FILE
from schemas.config import InputsConfig
from schemas.datasets import InputsSchema, QuarantineSchema
from schemas.spec import LanguageCheck, PromptSpec

log = logging.getLogger(__name__)
_META_TEXT = re.compile(
    r"\b(?:the assistant|as an ai|the user (?:will|might|should|wants)|system prompt|here (?:is|are) (?:a|some|\d+) "
    r"(?:new )?messages?)\b",
    re.IGNORECASE,
)
# A list marker at the start of a generator line: "1. ", "1) ", "[1] ", "(1) ", "#1 ", "**1.** ", or a bullet.
# A number must be followed by a space (or end the line), so "1.5 GB left" or "3)" inside text stay as written.
_LIST_MARKER = re.compile(
    r"""^\s*(?:
        (?:\*\*)?\d{1,3}[.)](?:\*\*)?(?=\s|$)   # 1.  1)  **1.**
      | \[\d{1,3}[.)]?\]                     # [1]  [1.]  (the 0.5B model keeps these)
      | \[\d{1,3}[.)](?=\s)                  # [1. the message]  (its closing bracket goes too)
      | \(\d{1,3}[.)]?\)                     # (1)  (1.)
      | \#\s?\d{1,3}[.):]?(?=\s|$)            # #1  # 1  #1.
      | [-*•](?=\s)                          # - item, * item, • item
    )\s*""",
    re.VERBOSE,
)
_QUOTES = '"“”'  # double quotes only: a leading apostrophe ("'til then") is part of the message
WEAK_GENERATOR_SHARE = 0.25

# Where a label can stand in running text: the start of the text or of a line, after an opening bracket, or
# after the end of a sentence. "the output: one line per file" is prose; "Output: 120" is a label.
_LABEL_AT = r"(?:^|[(\[]|[.!?;]\s+)\s*"
INVENTED_ENVIRONMENT_REPLY: tuple[tuple[str, re.Pattern[str]], ...] = (
    # AgentBench OS's observation line, copied from the prompt's worked example: "(The output of the OS: [120])"
    ("os-output", re.compile(r"\bthe\s+output\s+of\s+the\s+os\b\s*(?:is\s*)?:", re.IGNORECASE)),
    # ReAct/WebShop-style observation label with content after it: "Observation: 3 files"
    ("observation-label", re.compile(_LABEL_AT + r"observations?\s*:\s*\S", re.IGNORECASE | re.MULTILINE)),
    # a bare "Output:" label with content after it: "Output:\n220"
    ("output-label", re.compile(_LABEL_AT + r"output\s*:\s*\S", re.IGNORECASE | re.MULTILINE)),
)
"""Text a generator writes *inside* a user request that is really the environment's reply: it copies the
observation turns of the prompt's worked example and answers its own request. The teacher would then react to an
invented observation, so such an input is quarantined, never trained on. Each entry is (name, pattern); a pattern
that matches one of the spec's own example inputs (``seed_inputs`` or ``inputs.pool``) is the input format of
that prompt (a WebShop input *is* an observation) and is not applied to it (see ``environment_reply_patterns``).
A question about output ("what is the output of ls?") matches none of them."""


def dedup_key(text: str) -> str:
    """Case- and whitespace-insensitive key; exact duplicates after normalization share it."""
    return re.sub(r"\s+", " ", text.strip().lower())


def _input_id(text: str) -> str:
    return hashlib.sha256(dedup_key(text).encode()).hexdigest()[:16]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    """Runs of ``n`` consecutive words; none for a shorter text."""
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _trigrams(text: str) -> set[tuple[str, ...]]:
    """Word trigrams; a text under 3 words is its own single gram, so it still matches its duplicates."""
    words = _words(text)
    return _ngrams(words, 3) or {tuple(words)}


def near_duplicate_of(text: str, kept: list[tuple[str, set]], threshold: float) -> str | None:
    """The first kept text whose word-trigram Jaccard similarity with ``text`` reaches ``threshold``."""
    grams = _trigrams(text)
    for other, other_grams in kept:
        union = grams | other_grams
        if union and len(grams & other_grams) / len(union) >= threshold:
            return other
    return None


def generator_request(
    spec: PromptSpec, seeds: list[str], count: int, changed_lines: list[str] | None = None
) -> list[Message]:
    """Ask the generator for ``count`` messages the assistant could receive. With ``changed_lines`` (an edit's
    diff, "- old" / "+ new"), messages whose right answer depends on those lines (incremental runs)."""
    examples = "\n".join(f"- {s}" for s in seeds) or "- (none given)"
    edit, aim = "", ""
    if changed_lines:
        edit = "The prompt was just edited. These lines changed (- old, + new):\n" + "\n".join(changed_lines) + "\n\n"
        aim = " and whose right answer depends on the changed lines"
    ask = (
        f"An assistant works with this prompt:\n\n{render_prompt(spec.prompt)}\n\n"
        f"It talks to: {spec.environment.description}\n\n{edit}Examples of messages it receives:\n{examples}\n\n"
        f"Write {count} new, different, realistic messages that it could receive{aim}. "
        "One message per line, numbered 1., 2., ... Write only the messages."
    )
    return [{"role": "user", "content": ask}]


def strip_list_marker(line: str) -> str:
    """A generator line without its leading list number or bullet and its surrounding quotes.

    Markers stack ("1. [1] ...", "- \"(2) ...\""), so stripping repeats until nothing changes. A marker that
    opens a bracket around the whole message ("[1. message]") loses its closing bracket as well.
    """
    for _ in range(4):
        cleaned = _LIST_MARKER.sub("", line, count=1).strip().strip(_QUOTES).strip()
        if cleaned != line and line.lstrip().startswith("[") and cleaned.endswith("]") and "[" not in cleaned:
            cleaned = cleaned[:-1].rstrip()
        if cleaned == line:
            break
        line = cleaned
    return line


def split_messages(text: str) -> list[str]:
    """Numbered or bulleted lines of a generator reply, list markers and quotes removed."""
    lines = (strip_list_marker(line.strip()) for line in text.splitlines())
    return [line for line in lines if line]


def environment_reply_patterns(examples: list[str]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    """The INVENTED_ENVIRONMENT_REPLY patterns that none of the spec's own example inputs match."""
    return tuple((name, p) for name, p in INVENTED_ENVIRONMENT_REPLY if not any(p.search(e) for e in examples))


def invented_environment_reply(
    text: str, patterns: tuple[tuple[str, re.Pattern[str]], ...] = INVENTED_ENVIRONMENT_REPLY
) -> str:
    """Why ``text`` holds an invented environment reply ("" when it doesn't): the pattern's name and the match."""
    for name, pattern in patterns:
        match = pattern.search(text)
        if match:
            shown = re.sub(r"\s+", " ", match.group(0)).strip(" ([.!?;")[:40]
            return f"contains an invented environment reply ({name}: {shown!r})"
    return ""


# A request followed by its own answer: "Is there a book club? Yes, Dockside Readers meets on ..."
_SELF_ANSWER = re.compile(r"\?\s*[\"“]?(?:yes|no|sure|sorry|unfortunately)\b\s*[,.!]", re.IGNORECASE)
PROMPT_COPY_WORDS = 6
"""A generated input sharing this many consecutive words with the prompt (outside the spec's own example
inputs) copies the prompt: a fact or a worked reply pasted into the request answers it, and a pasted worked
example teaches nothing the prompt's own example does not."""


@dataclass(frozen=True)
class PromptEchoes:
    """What a generated input must not repeat: the word n-grams of the prompt and the environment's description
    (minus those of the example inputs the generator was shown) and the example inputs themselves (the seeds, the pool, the worked examples' user turns)."""

    prompt_grams: frozenset[tuple[str, ...]] = frozenset()
    examples: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: PromptSpec) -> PromptEchoes:
        shown = list(spec.seed_inputs) + list(spec.inputs.pool)
        worked = [t.user for t in (spec.prompt.dialogue or [])[1:] if t.user]  # the first user turn is the prompt
        allowed: set[tuple[str, ...]] = set()
        for text in shown:
            allowed |= _ngrams(_words(text), PROMPT_COPY_WORDS)
        shown_text = render_prompt(spec.prompt) + "\n" + spec.environment.description  # all the request quotes
        grams = _ngrams(_words(shown_text), PROMPT_COPY_WORDS) - allowed
        examples = tuple(dict.fromkeys(dedup_key(t) for t in shown + worked if len(_words(t)) >= 4))
        return cls(frozenset(grams), examples)

    def problem(self, text: str) -> str:
        """Why ``text`` echoes the prompt or an example ("" when it doesn't)."""
        words = _words(text)
        for i in range(len(words) - PROMPT_COPY_WORDS + 1):
            gram = tuple(words[i : i + PROMPT_COPY_WORDS])
            if gram in self.prompt_grams:
                return f"copies the prompt's text ({' '.join(gram)!r})"
        key = dedup_key(text)
        for example in self.examples:
            if example in key and len(key) > len(example) + 10:
                return f"an example input with text added ({example[:40]!r})"
        return ""


def quality_problem(
    text: str,
    cfg: InputsConfig,
    environment_patterns: tuple[tuple[str, re.Pattern[str]], ...] = INVENTED_ENVIRONMENT_REPLY,
    echoes: PromptEchoes | None = None,
) -> str:
    words = len(text.split())
    if words < cfg.min_words:
        return f"too short ({words} words < {cfg.min_words})"
    if words > cfg.max_words:
        return f"too long ({words} words > {cfg.max_words})"
    if has_control_tokens(text):
        return "contains chat-template control tokens"
    invented = invented_environment_reply(text, environment_patterns)
    if invented:
        return invented
    if starts_with_speaker_label(text.lstrip("[( ")):  # "[Answer: No, we don't ...]" is a label too
        return "starts with a speaker label (a script line, not a message)"
    if _SELF_ANSWER.search(text):
        return "answers its own question (an assistant reply inside the request)"
    echoed = echoes.problem(text) if echoes else ""
    if echoed:
        return echoed
    if _META_TEXT.search(text):
        return "meta text about the assistant, not a user message"
    if is_repetitive(text, min_words=8):
        return "repetitive"
    if cfg.language is not None:
        if not looks_like_language(text, cfg.language):
            scores = detect_language_scores(text)
            best = max(scores, key=lambda language: scores[language])
            if best == cfg.language or not scores[best]:  # too few stopwords to tell: judged by its script
                return f"not written in {cfg.language}: mostly letters outside the Latin script"
            return f"language looks like {best}, not {cfg.language}"
    return ""


def _generate(
    spec: PromptSpec, cfg: InputsConfig, backend: GenerationBackend, edit: tuple[dict, int] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Generated inputs that pass the filters, the quarantine, and how many texts were written. With ``edit``
    (the diff from the parent version, how many to keep) the generator is asked for messages aimed at the
    changed lines instead (genpi_core/incremental/reuse.py)."""
    rng = random.Random(cfg.sampling.seed)
    seeds = spec.seed_inputs or spec.inputs.pool
    wanted = edit[1] if edit else cfg.num_generated
    n_requests = math.ceil(wanted * cfg.oversample / cfg.per_request)
    changed = None
    if edit:
        from genpi_core.incremental.reuse import changed_lines

        changed = changed_lines(edit[0])
    requests = [
        generator_request(spec, rng.sample(seeds, min(5, len(seeds))), cfg.per_request, changed)
        for _ in range(n_requests)
    ]
    completions = backend.generate(requests, cfg.sampling, desc="inputs aimed at the edit" if edit else "pseudo inputs")
    texts: list[tuple[str, str]] = []  # (message, problem known from its reply)
    empty = []
    for j, c in enumerate(completions):
        messages = split_messages(c.text)
        if not messages:  # nothing to keep, but the reply is recorded, not dropped
            empty.append(
                {
                    "row_key": f"reply-{j}",
                    "reply": c.text,
                    "finish_reason": c.finish_reason,
                    "generator": backend.name,
                    "problem": "empty generator reply" if not c.text.strip() else "generator reply holds no messages",
                }
            )
            continue
        # a reply stopped by the length cap ends in a cut-off message: never use it as a finished input
        cut = len(messages) - 1 if c.finish_reason == "length" else None
        texts += [
            (m, "cut off at the generator's length cap (synth.inputs.sampling.max_new_tokens)" if k == cut else "")
            for k, m in enumerate(messages)
        ]
    patterns = environment_reply_patterns(list(spec.seed_inputs) + list(spec.inputs.pool))
    skipped = sorted({name for name, _ in INVENTED_ENVIRONMENT_REPLY} - {name for name, _ in patterns})
    if skipped:
        log.info("invented-reply filters %s not applied: the spec's own example inputs match them", skipped)
    rows: list[dict] = []
    bad: list[dict] = []
    echoes = PromptEchoes.of(spec)
    if cfg.language is None:  # the spec's own language check says which language its users write in
        languages = [c.language for c in spec.checks if isinstance(c, LanguageCheck)]
        if languages:
            cfg = cfg.model_copy(update={"language": languages[0]})
    for i, (text, problem) in enumerate(texts):
        problem = problem or quality_problem(text, cfg, patterns, echoes)
        (bad if problem else rows).append({"text": text, "row_key": f"gen-{i}", "problem": problem})
    good = pd.DataFrame(rows, columns=["text", "row_key", "problem"]).assign(source="generated", generator=backend.name)
    bad_df = pd.DataFrame(bad, columns=["text", "row_key", "problem"]).assign(
        source="generated", generator=backend.name
    )
    quarantine = quarantine_rows("inputs", bad_df.drop(columns="problem"), "row_key", bad_df["problem"])
    if empty:
        empty_df = pd.DataFrame(empty)
        quarantine = pd.concat(
            [quarantine, quarantine_rows("inputs", empty_df.drop(columns="problem"), "row_key", empty_df["problem"])],
            ignore_index=True,
        )
    return good.drop(columns=["row_key", "problem"]), quarantine, len(texts)


def run_inputs(
    spec: PromptSpec,
    version: str,
    cfg: InputsConfig,
    backend: GenerationBackend | None,
    out_dir: Path,
    parent_inputs: Path | None = None,
    edit: tuple[dict, int] | None = None,
) -> dict[str, int | float]:
    """Write inputs.parquet (generated and/or pool, deduplicated) and quarantine.parquet.

    Incremental (``parent_inputs``): the parent's inputs are kept, after new ones generated from ``edit``
    (diff, count) when a generator is given, and ``max_inputs`` caps the parent's share only."""
    frames, quarantined = [], [empty_quarantine()]
    written = 0
    parent_texts: set[str] = set()
    if parent_inputs is not None:
        if backend is not None and edit is not None and edit[1] > 0:
            good, bad, written = _generate(spec, cfg, backend, edit)
            frames.append(good)
            quarantined.append(bad)
        parent = read_table(parent_inputs, InputsSchema)
        parent_texts = set(parent["text"])
        frames.append(parent[["text", "source", "generator"]])
    elif cfg.source in ("generate", "both") and cfg.num_generated:
        if backend is None:
            raise ValueError("synth.inputs.source needs a generation backend to generate pseudo inputs")
        good, bad, written = _generate(spec, cfg, backend)
        frames.append(good)
        quarantined.append(bad)
    if cfg.source in ("pool", "both"):
        pool = [t for t in spec.inputs.pool if t not in parent_texts]  # the parent's copy is already in
        random.Random(0).shuffle(pool)  # the pool is often written topic by topic; spread the cap across topics
        frames.append(pd.DataFrame({"text": pool, "source": "pool", "generator": "spec"}))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["text", "source", "generator"])
    df["dedup_key"] = df["text"].map(dedup_key)
    dup = df.duplicated("dedup_key")
    quarantined.append(quarantine_rows("inputs", df[dup], "dedup_key", "exact duplicate of an earlier input"))
    df = df[~dup].reset_index(drop=True)

    kept: list[tuple[str, set]] = []
    keep, near = [], []
    for row in df.itertuples():
        other = near_duplicate_of(row.text, kept, cfg.near_duplicate_threshold) if row.source == "generated" else None
        if other is None:
            kept.append((row.text, _trigrams(row.text)))
            keep.append(row.Index)
        else:
            near.append((row.Index, f"near-duplicate of {other[:60]!r}"))
    if near:
        idx = [i for i, _ in near]
        quarantined.append(
            quarantine_rows("inputs", df.loc[idx], "dedup_key", pd.Series([r for _, r in near], index=idx))
        )
    df = df.loc[keep]
    # generated inputs come first; the pool tops up to max_inputs. Surplus generated rows are recorded, not lost.
    cap = cfg.max_inputs
    if parent_inputs is not None:  # the inputs aimed at the edit come on top of the parent's max_inputs
        cap += int((~df["text"].isin(parent_texts) & (df["source"] == "generated")).sum())
    surplus = df.iloc[cap:]
    quarantined.append(
        quarantine_rows(
            "inputs",
            surplus[surplus["source"] == "generated"],
            "dedup_key",
            f"over synth.inputs.max_inputs={cfg.max_inputs}",
        )
    )
    df = df.iloc[:cap]
    df = df.assign(prompt_version=version, input_id=df["text"].map(_input_id))
    good, bad = partition_valid(df, InputsSchema, "inputs", "input_id")
    quarantined.append(bad)
    if good.empty:
        raise ValueError("no usable inputs: add `inputs.pool` to the spec or enable generation (synth.inputs.source)")
    reused = good["text"].isin(parent_texts)
    n_generated = int(((good["source"] == "generated") & ~reused).sum())  # written by this run's generator
    usable = n_generated / written if written else None
    if usable is not None and usable < WEAK_GENERATOR_SHARE:
        log.warning(
            "the input generator wrote %d usable inputs out of %d (%.0f%%): it is too weak for this prompt. "
            "Set synth.generator to a stronger model/server, or use synth.inputs.source=both to top up from the "
            "spec's pool (see %s)",
            n_generated,
            written,
            100 * usable,
            out_dir / QUARANTINE_FILE,
        )
    rows: dict[str, int | float] = {
        "inputs": write_table(good, InputsSchema, out_dir / INPUTS_FILE),
        "quarantined": write_table(
            pd.concat(quarantined, ignore_index=True), QuarantineSchema, out_dir / QUARANTINE_FILE
        ),
        "generated_written": written,
        "generated_used": n_generated,
        "from_pool": int((good["source"] == "pool").sum()),
    }
    if usable is not None:
        rows["generated_usable_share"] = round(usable, 3)
    if parent_inputs is not None:
        rows["reused_from_parent"] = int(reused.sum())
    return rows

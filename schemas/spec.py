"""The prompt spec: what a user writes to describe the prompt to internalize.

A spec is YAML (see examples/prompts/). It is validated here, structurally, with no model loaded;
checks that need the tokenizer (does the prompt fit the context?) live in genpi_core.ingest.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SPEC_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_ASSERTION = re.compile(r"\^|\$|\\[AZbBz]|\(\?<?[=!]")  # anchors, word boundaries, lookarounds


def _must_compile(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"malformed regex {pattern!r}: {exc}") from exc
    return pattern


# --------------------------------------------------------------------------------------------
# Checks: programmatic rules a reply must follow. Each type is one model here plus one evaluator
# in genpi_core.prompt.checks; adding a type means adding both (a test asserts they stay in sync).
# --------------------------------------------------------------------------------------------


class RegexCheck(_Strict):
    """The reply must match (``search``) the pattern; ``multiline`` makes ^/$ match per line."""

    type: Literal["regex"] = "regex"
    pattern: str = Field(description="Python regular expression, searched in the reply.")
    multiline: bool = Field(False, description="Let ^ and $ match at every line.")
    ignore_case: bool = Field(False, description="Case-insensitive match.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        _must_compile(value)
        if re.search(value, "") is not None and not _ASSERTION.search(value):
            raise ValueError(
                f"pattern {value!r} matches the empty string with no anchor or lookaround, so it passes every reply"
            )
        return value


class MustStartWithCheck(_Strict):
    """The reply, stripped of leading whitespace, must start with ``value``."""

    type: Literal["must_start_with"] = "must_start_with"
    value: str = Field(min_length=1, description="Required opening text.")

    @field_validator("value")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():  # the reply is stripped of leading whitespace first: it could never pass
            raise ValueError("`value` is blank, so no reply can start with it")
        return value


class MustContainCheck(_Strict):
    """The reply must contain every string in ``values`` (or any one, with ``mode: any``)."""

    type: Literal["must_contain"] = "must_contain"
    values: list[str] = Field(min_length=1, description="Substrings to look for.")
    mode: Literal["all", "any"] = Field("all", description="Require all of them, or any one.")
    ignore_case: bool = Field(True, description="Case-insensitive substring match.")

    @field_validator("values")
    @classmethod
    def _no_empty(cls, values: list[str]) -> list[str]:
        if any(not v for v in values):
            raise ValueError("an empty string is in every reply, so this check could never fail")
        return values


class JsonKeysCheck(_Strict):
    """The reply (or its first ```json block) must parse as a JSON object holding ``keys``."""

    type: Literal["json_keys"] = "json_keys"
    keys: list[str] = Field(min_length=1, description="Keys the JSON object must have.")


class CodeBlockCheck(_Strict):
    """The reply must contain a fenced code block in ``language`` (e.g. ```bash)."""

    type: Literal["code_block"] = "code_block"
    language: str = Field(min_length=1, description="Info string of the fence, e.g. bash or python.")


class MaxLengthCheck(_Strict):
    """The reply must be at most ``chars`` characters and/or ``words`` words long."""

    type: Literal["max_length"] = "max_length"
    chars: int | None = Field(None, gt=0, description="Maximum characters.")
    words: int | None = Field(None, gt=0, description="Maximum whitespace-separated words.")

    @model_validator(mode="after")
    def _one_limit(self) -> MaxLengthCheck:
        if self.chars is None and self.words is None:
            raise ValueError("max_length needs `chars` or `words`")
        return self


class LanguageCheck(_Strict):
    """The reply must be written in ``language`` (stopword-based detector; en, es, fr, de, it, pt)."""

    type: Literal["language"] = "language"
    language: Literal["en", "es", "fr", "de", "it", "pt"] = Field(description="ISO 639-1 code.")


Check = Annotated[
    RegexCheck
    | MustStartWithCheck
    | MustContainCheck
    | JsonKeysCheck
    | CodeBlockCheck
    | MaxLengthCheck
    | LanguageCheck,
    Field(discriminator="type"),
]
CHECK_TYPES = (
    "regex",
    "must_start_with",
    "must_contain",
    "json_keys",
    "code_block",
    "max_length",
    "language",
)


# --------------------------------------------------------------------------------------------
# The prompt itself: plain system text, a few-shot dialogue, or both (system text first).
# --------------------------------------------------------------------------------------------


class DialogueTurn(_Strict):
    """One turn of a few-shot prompt: exactly one of ``user`` / ``agent``."""

    user: str | None = None
    agent: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DialogueTurn:
        if (self.user is None) == (self.agent is None):
            raise ValueError("each dialogue turn needs exactly one key: `user` or `agent`")
        if not (self.user or self.agent or "").strip():
            raise ValueError("dialogue turn is empty")
        return self

    @property
    def role(self) -> Literal["user", "assistant"]:
        return "user" if self.user is not None else "assistant"

    @property
    def text(self) -> str:
        return self.user if self.user is not None else self.agent  # type: ignore[return-value]


PromptFileFormat = Literal["text", "yaml", "genpi-research"]
PROMPT_FILE_FORMATS: tuple[str, ...] = get_args(PromptFileFormat)


class PromptBody(_Strict):
    """The prompt to internalize. ``path`` (and its ``format``) is resolved and inlined by the loader
    (genpi_core.ingest): a loaded spec holds the file's text, never the path."""

    system: str | None = Field(None, description="Plain system text.")
    dialogue: list[DialogueTurn] | None = Field(
        None, description="Few-shot turns, alternating user/agent, starting with user, ending with agent."
    )
    input_prefix: str | None = Field(
        None,
        description="Text put before every input in its user message, a blank line between (e.g. 'Now, my problem "
        "is:'). A genpi-research prompt file's trailing `<USER>:` text sets it.",
    )
    path: str | None = Field(
        None,
        description="A prompt file relative to the spec's folder (and inside it): .txt = system text, .yaml = "
        "`system`/`dialogue`, or any file with `format: genpi-research`.",
    )
    format: PromptFileFormat | None = Field(
        None,
        description="How to read `path`: text, yaml (default by suffix), or genpi-research (`<USER>:`/`<AGENT>:` "
        "turns, the kaistAI/GenPI research-code format).",
    )

    @field_validator("input_prefix")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value if value is not None and value.strip() else None

    @model_validator(mode="after")
    def _not_empty(self) -> PromptBody:
        if self.format is not None and self.path is None:
            raise ValueError("`format` says how to read a `path`; give `path` too, or drop `format`")
        if self.path is not None:
            if self.system is not None or self.dialogue is not None:
                raise ValueError("give either `path` or inline `system`/`dialogue`, not both")
            return self
        if not (self.system or "").strip() and not self.dialogue:
            raise ValueError("the prompt is empty: give `system` text, a `dialogue`, or a `path`")
        if self.dialogue:
            roles = [turn.role for turn in self.dialogue]
            if roles[0] != "user" or roles[-1] != "assistant":
                raise ValueError("`dialogue` must start with a `user` turn and end with an `agent` turn")
            for i, (a, b) in enumerate(zip(roles, roles[1:])):
                if a == b:
                    raise ValueError(f"`dialogue` turns {i} and {i + 1} are both `{a}`; they must alternate")
        return self


class EvalInput(_Strict):
    """A held-out input and the facts its reply must contain (each a string or a list of alternatives)."""

    text: str = Field(min_length=1)
    facts: list[str | list[str]] = Field(default_factory=list)

    @field_validator("facts")
    @classmethod
    def _no_degenerate_facts(cls, facts: list[str | list[str]]) -> list[str | list[str]]:
        for i, fact in enumerate(facts):
            alternatives = [fact] if isinstance(fact, str) else fact
            if not alternatives:
                raise ValueError(f"fact {i} is an empty list of alternatives, so no reply could pass it")
            if any(not a.strip() for a in alternatives):
                raise ValueError(f"fact {i} holds an empty string, which every reply contains")
        return facts


class InputPool(_Strict):
    """Hand-written inputs. ``pool`` may be trained on; ``eval`` never is."""

    pool: list[str] = Field(default_factory=list, description="Training candidates.")
    eval: list[EvalInput] = Field(default_factory=list, description="Held-out evaluation inputs with facts.")

    @model_validator(mode="after")
    def _disjoint(self) -> InputPool:
        overlap = {t.strip().lower() for t in self.pool} & {e.text.strip().lower() for e in self.eval}
        if overlap:
            raise ValueError(f"{len(overlap)} eval input(s) also in the training pool, e.g. {sorted(overlap)[0]!r}")
        return self


class ConversationSpec(_Strict):
    """How role-swapped episodes run for this prompt (the paper: 10 turns for OS/WebShop, 2 for Mind2Web)."""

    max_turns: int = Field(1, ge=1, le=50, description="Agent turns per synthesized conversation.")
    end_marker: str = Field(
        "[END_CONVERSATION]", min_length=1, description="The environment says this when the episode is over."
    )
    stop_pattern: str | None = Field(None, description="Regex: an agent turn matching it finishes the episode.")

    @field_validator("stop_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        return None if value is None else _must_compile(value)


class EnvironmentSpec(_Strict):
    """Who or what the agent talks to. ``simulated``: the model plays it from ``description`` (role-swapped
    synthesis, the paper's self role-play). ``shell``: a real sandboxed Linux shell runs the agent's bash
    actions (genpi_core.environment.shell); ``description`` still tells the input generator what it is.
    A bare string in a spec is a simulated environment's description."""

    kind: Literal["simulated", "shell"] = Field("simulated", description="Played by the model, or a real shell.")
    description: str = Field(
        "a user chatting with the assistant", min_length=1, description="Who/what the agent talks to."
    )
    init: str | None = Field(
        None, description="shell only: bash run in each fresh sandbox before a synthesized episode starts."
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_string(cls, value):
        return {"kind": "simulated", "description": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _init_needs_shell(self) -> EnvironmentSpec:
        if self.init is not None and self.kind != "shell":
            raise ValueError("`init` runs in a sandbox: it needs `kind: shell`")
        return self

    def __str__(self) -> str:  # what prompts that describe the environment print
        return self.description


class PromptSpec(_Strict):
    """A prompt to internalize, its environment, inputs and the checks its replies must pass."""

    name: str = Field(pattern=SPEC_NAME_PATTERN, description="Lowercase id, used in run folder names.")
    description: str = Field("", description="One line for humans.")
    prompt: PromptBody
    environment: EnvironmentSpec = Field(
        default_factory=EnvironmentSpec,
        description="Who/what the agent talks to: a description (simulated), or {kind: shell, description: ...}.",
    )
    seed_inputs: list[str] = Field(default_factory=list, description="Example inputs shown to the input generator.")
    checks: list[Check] = Field(default_factory=list, description="Rules every reply must follow.")
    inputs: InputPool = Field(default_factory=InputPool)
    conversation: ConversationSpec = Field(default_factory=ConversationSpec)

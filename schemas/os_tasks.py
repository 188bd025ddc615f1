"""AgentBench's OS task format (THUDM/AgentBench, data/os_interaction), as files in it are written.

A task file is a JSON list of tasks (or one task, or JSON lines). Each task:

    description                 what the user asks
    create.init                 set-up run in the fresh box before the episode: a script or a list of them
    start                       a command started in the agent's own shell before its first turn (e.g. `prog &`)
    evaluation.match            the answer must equal this string (stripped), or {answer | regex, strip}
    evaluation.check            scripts run after the episode; each gets the answer and the previous scripts'
                                outputs as arguments, and all must exit 0; a null entry runs `example`
    evaluation.example          the reference solution (a script), for `check: [null, ...]` and for checking
                                that the task can be solved in our sandbox at all
    labels                      free-form tags

A `create` that is a list (one AgentBench dev task has one) is ignored, as AgentBench's own loader ignores it.
A script is a string (bash code) or {language: bash | python, code | file}; ``file`` is relative to the
task file's folder and must stay inside it. Unknown fields are refused, naming the task and the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Script(_Strict):
    """A script to run in the sandbox: inline ``code``, or a ``file`` beside the task file."""

    language: Literal["bash", "python"] = "bash"
    code: str | None = None
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_string(cls, value):
        return {"language": "bash", "code": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_source(self) -> Script:
        if (self.code is None) == (self.file is None):
            raise ValueError("a script needs exactly one of `code` and `file`")
        return self


class Create(_Strict):
    local: str = Field("default", description="AgentBench's image name; genpi has one sandbox image.")
    init: Script | list[Script] | None = None

    @property
    def scripts(self) -> list[Script]:
        return [] if self.init is None else [self.init] if isinstance(self.init, Script) else list(self.init)


class Match(_Strict):
    answer: str | None = None
    regex: str | None = None
    strip: bool = True

    @model_validator(mode="before")
    @classmethod
    def _bare_string(cls, value):
        return {"answer": value, "strip": True} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_rule(self) -> Match:
        if (self.answer is None) == (self.regex is None):
            raise ValueError("`match` needs exactly one of `answer` and `regex`")
        return self


class Evaluation(_Strict):
    match: Match | None = None
    check: Script | list[Script | None] | None = None
    example: Script | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Evaluation:
        if (self.match is None) == (self.check is None):
            raise ValueError("`evaluation` needs exactly one of `match` and `check`")
        if self.check is not None and None in self.checks and self.example is None:
            raise ValueError("a null `check` entry runs `example`, and there is none")
        return self

    @property
    def checks(self) -> list[Script | None]:
        if self.check is None:
            return []
        return [self.check] if isinstance(self.check, Script) else list(self.check)


class OSTask(_Strict):
    description: str = Field(min_length=1)
    create: Create = Field(default_factory=Create)
    start: Script | None = None
    evaluation: Evaluation
    example: Script | None = Field(None, description="Where some files put the reference solution instead.")
    labels: list[str] = Field(default_factory=list)

    @field_validator("create", mode="before")
    @classmethod
    def _create_list_is_ignored(cls, value):
        # One AgentBench dev task has `create: [null, {...}]`; AgentBench's loader looks up "local" and "init" in
        # it, finds neither, and runs the task in the default image with no init. Read as AgentBench reads it.
        return {} if isinstance(value, list) else value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value):
        return [value] if isinstance(value, str) else value

    @property
    def reference(self) -> Script | None:
        """The reference solution, wherever the file put it."""
        return self.evaluation.example or self.example

"""The Python API: internalize a prompt, (re-)evaluate a run, load the student to use it.

Three calls for notebooks and scripts, over the same stages and run folders as the CLI:

    run = genpi.internalize("examples/prompts/library_desk.yaml", config="configs/default.yaml")
    summary = genpi.evaluate(run.run_dir)
    student = genpi.load_student(run.run_dir)
    model, tokenizer = student
    print(student.generate("Can I renew a book twice?"))
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.artifacts import ADAPTER_DIR, REPORT_FILE, SUMMARY_FILE
from schemas.config import BackendConfig, ModelConfig, PipelineConfig, SamplingConfig, load_config
from schemas.spec import PromptBody
from schemas.summary import EvaluationSummary

ConfigLike = PipelineConfig | str | Path | None


@dataclass(frozen=True)
class InternalizeResult:
    """Where a finished run put things, and its evaluation summary."""

    run_dir: Path
    adapter_dir: Path
    report: Path
    summary: EvaluationSummary


def _config(config: ConfigLike, overrides: Sequence[str] = ()) -> PipelineConfig:
    if isinstance(config, PipelineConfig):
        return load_config(None, overrides, base=config) if overrides else config
    return load_config(config, overrides)


def prefect_defaults() -> None:
    """No analytics from a throw-away server (its startup timeout: genpi/temporary_server.py)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def internalize(
    spec: str | Path, config: ConfigLike = None, *, overrides: Sequence[str] = (), use_prefect: bool = True
) -> InternalizeResult:
    """Run the whole pipeline for a prompt spec: ingest, synthesize, dataset, train, evaluate, promote.

    Finished stages are reused. With ``use_prefect`` (the default, like the CLI) it runs the `genpi-internalize`
    flow: against ``PREFECT_API_URL`` when set, else a temporary local server that dies with this process. ``use_prefect=False`` runs the
    same stages in this process without Prefect.
    """
    cfg = _config(config, overrides)
    if use_prefect:
        prefect_defaults()
        from flows.internalize import internalize_pipeline
        from genpi.temporary_server import prefect_api

        with prefect_api():
            evaluated = internalize_pipeline(str(spec), cfg)
    else:
        from genpi_core.pipeline import run_pipeline

        evaluated = run_pipeline(spec, cfg)
    run_dir = Path(evaluated.dir).parent
    return InternalizeResult(
        run_dir=run_dir,
        adapter_dir=run_dir / "train" / ADAPTER_DIR,
        report=Path(evaluated.dir) / REPORT_FILE,
        summary=EvaluationSummary.load(Path(evaluated.dir) / SUMMARY_FILE),
    )


def evaluate(
    run: str | Path | InternalizeResult, config: ConfigLike = None, *, variant: str | None = None
) -> EvaluationSummary:
    """Evaluate a run's finished adapter (``train/``, or ``train-<variant>/``) with ``config``'s ``evaluate.*``.

    Never retrains; an evaluation that already finished with the same config is reused.
    """
    from genpi_core.pipeline import evaluate_stage, load_run, trained

    cfg = _config(config)
    ingested, dataset = load_run(_run_dir(run))
    result = evaluate_stage(
        ingested, dataset, trained(ingested, variant), cfg.evaluate, cfg.model, cfg.backend, variant=variant
    )
    return EvaluationSummary.load(result.path("summary"))


class Student:
    """The internalized model: base weights plus the run's adapter, used *without* the prompt.

    Unpacks as ``model, tokenizer = student``. ``generate`` renders requests through the same no-prompt chat
    view and engine the evaluation uses, so a reply here is the reply the report scored. A request given as a
    string gets the spec's ``prompt.input_prefix`` in front of it, as every input did in training.
    """

    def __init__(self, engine: Any, prompt: PromptBody | None = None) -> None:
        self._engine = engine
        self._prompt = prompt  # the spec's PromptBody (for its input prefix); None = no prefix
        self.model = engine.model
        self.tokenizer = engine.tokenizer

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer))

    def generate(self, request: str | Sequence[dict], max_new_tokens: int = 64, temperature: float = 0.0) -> str:
        """One reply to a user message (a string) or to a conversation (a list of ``{"role", "content"}``).

        A conversation is sent as given: its first user message must already hold the input prefix, if any.
        """
        from genpi_core.generation.base import Message
        from genpi_core.prompt.views import input_turn, user_turn, without_prompt

        conversation: list[Message] = (
            (user_turn(request) if self._prompt is None else input_turn(self._prompt, request))
            if isinstance(request, str)
            else [{"role": m["role"], "content": m["content"]} for m in request]
        )  # type: ignore[misc]
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature)
        return self._engine.generate([without_prompt(conversation)], sampling, desc="student")[0].text

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> Student:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_student(run: str | Path | InternalizeResult, *, variant: str | None = None, merge: bool = False) -> Student:
    """The run's student on the transformers backend: the model it was trained on, with its adapter.

    ``merge`` folds the adapter into the weights (same replies, faster; the model is then a plain one).
    """
    from genpi_core.generation.transformers_backend import TransformersBackend
    from genpi_core.ingest import load_ingested
    from genpi_core.pipeline import load_run, trained

    ingested, _ = load_run(_run_dir(run))
    spec, _ = load_ingested(ingested.prompt_path)
    train = trained(ingested, variant)
    model = ModelConfig.model_validate(_train_manifest_config(Path(train.dir))["model"])
    engine = TransformersBackend(model, BackendConfig(), adapter=train.path("adapter"), merge_adapter=merge)
    return Student(engine, spec.prompt)


def _run_dir(run: str | Path | InternalizeResult) -> Path:
    return run.run_dir if isinstance(run, InternalizeResult) else Path(run)


def _train_manifest_config(train_dir: Path) -> dict:
    from genpi_core.store.stage import Stage

    return Stage(train_dir.parent, train_dir.name, {}, {}).manifest().config

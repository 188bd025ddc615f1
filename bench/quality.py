"""Quality suite: does the adapter behave like the prompted model? Strict success, per prompt, per variant, over seeds.

For each bundled prompt (examples/prompts: library_desk and hotel_concierge hold facts, shell_agent acts
through bash and receives the shell's output) it synthesizes the data once, then trains and evaluates a
matrix of students on it, with one config (configs/genpi.yaml by default: GenPI with every part on):

  every prompt          base, teacher, sft (SFT only), joint (SFT + prompt generation with reasons): seed 0
  the main prompt       sft and joint with seeds 0..S-1 (--seeds, default 3), and one seed each of
                        joint-no-reasons (PG without reasons), joint-kl (+ KL to the teacher's top-k) and
                        joint-all-replies (trained on every teacher reply, not only those passing the checks)

Every student is scored on the prompt's 30 held-out inputs (greedy). The headline is strict success: a reply
passes every global check and its input's task checks, and a reply cut at the token cap fails. Recovery =
(student - base) / (teacher - base) for strict success, format (global checks) and task (facts) apart, with
two-level bootstrap intervals (resample training seeds, then held-out inputs), and joint - sft with its
interval. Base and teacher replies are generated once per prompt and replayed for every student.

Resumable, on this machine and on a fresh one: every stage checkpoints and reuses finished work, and the
results file is rewritten after each finished cell. Beside it, bench/resume/<out>/ keeps what a fresh clone
needs to go on: each finished cell with its per-input scores (keyed by the cell's whole config, the spec and the
metrics version, so a cell is only reused for exactly what it measured) and each prompt's synthesized data,
replayed base and teacher replies included (every stage of the run but training and evaluation: small tables,
no weights). Commit that folder with the results; the same command on a new machine copies the data back into
runs/ and runs only the cells still missing. `--save-state` refreshes the folder from runs/ and rewrites the
results from the finished cells, training nothing (before a session ends, to keep a synthesis stage's
checkpoints too). `--stop-by 00:20` (or +2h) skips a student that would not finish before the machine goes away
(its estimate: the longest finished student of its kind, on its prompt if one is), so a session's last hour runs
the short students instead of half a long one.
Nothing else CPU-bound should run beside it: wall times are part of the record (to borrow the CPU for a
while, `kill -STOP` the process and `kill -CONT` it after; stopped time is not counted).

Run: genpi bench quality --model embedded-0.5b            (about 13 h on 2 cores with configs/genpi.yaml; bench/results/quality_0.5b.*)
     genpi bench quality --model embedded --config configs/default.yaml --seeds 1 --no-ablations   (135M)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from carry import BenchState, Clock, ClockReading, Deadline, measured_config, peak_memory_gb, result_key

from genpi_core.evaluate.bootstrap import recovery, two_level_bootstrap
from genpi_core.evaluate.coverage import fact_coverage, split_by_coverage
from genpi_core.pipeline import dataset_stage, evaluate_stage, stage_name, synthesize, train_stage
from genpi_core.store.stage import file_sha256
from schemas.config import PipelineConfig, load_config
from schemas.summary import EvaluationSummary

ROOT = Path(__file__).resolve().parents[1]
SPECS_DIR = ROOT / "examples" / "prompts"
RESULTS = ROOT / "bench" / "results"
PROMPTS = ("library_desk", "hotel_concierge", "shell_agent")
MAIN_PROMPT = "library_desk"
METRICS = {"strict": "strict_success", "format": "global_passed", "task": "task_passed"}

# student variant -> config overrides on top of the suite's config (which is the `joint` variant itself)
VARIANTS: dict[str, list[str]] = {
    "sft": ["train.prompt_generation=false"],
    "joint": [],
    "joint-no-reasons": ["train.pg_reasons=false"],
    "joint-kl": ["train.distill_weight=0.5"],
    "joint-all-replies": ["dataset.require_teacher_checks=false"],
}
ABLATIONS = ("joint-no-reasons", "joint-kl", "joint-all-replies")


@dataclass(frozen=True)
class Cell:
    """One trained and evaluated student: a prompt, a variant and a training seed."""

    prompt: str
    variant: str
    seed: int

    @property
    def name(self) -> str:  # the train-<name>/ and evaluate-<name>/ folders of the prompt's run
        return f"{self.variant}-s{self.seed}"


def plan(prompts: list[str], main: str, seeds: int, ablations: bool) -> list[Cell]:
    """The matrix, ordered so a partial run already covers every prompt: seed 0 everywhere first, and the cheap
    SFT-only students (minutes) before the joint ones (hours: each PG example holds the whole prompt)."""
    cells = [Cell(p, v, 0) for v in ("sft", "joint") for p in prompts]
    if main in prompts:
        cells += [Cell(main, v, s) for v in ("sft", "joint") for s in range(1, seeds)]
        if ablations:
            cells += [Cell(main, v, 0) for v in ABLATIONS]
    return cells


def cell_config(cell: Cell, config: str, overrides: list[str]) -> PipelineConfig:
    return load_config(config, [*overrides, *VARIANTS[cell.variant], f"train.seed={cell.seed}"])


def cell_key(cell: Cell, config: str, overrides: list[str]) -> str:
    """What a finished cell measured: its whole resolved config (but where runs are kept), the spec's bytes,
    and the metrics version. Any change there and the cell is run again, never reused."""
    cfg = measured_config(cell_config(cell, config, overrides))
    spec = file_sha256(SPECS_DIR / f"{cell.prompt}.yaml")
    return result_key(cell=cell.name, prompt=cell.prompt, config=cfg, spec=spec)


class SuiteState(BenchState):
    """The suite's progress (bench/carry.py): finished cells with their per-input scores, and each prompt's
    synthesized data."""

    def backfill_coverage(self, key: str, record: dict) -> dict:
        """``with_coverage`` for a finished cell, kept in cells.json so it is computed once."""
        filled = with_coverage(record, self.runs_dir)
        if filled is not record:
            self.record(key, filled)
        return filled


def run_cell(cell: Cell, config: str, overrides: list[str], state: SuiteState | None = None) -> dict:
    """Train and evaluate one student (finished stages are reused); its scores and where they came from.
    With ``state``, the prompt's synthesized data is saved to it as soon as it exists."""
    cfg = cell_config(cell, config, overrides)
    started = time.perf_counter()
    ingested, inputs, conversations, reasons = synthesize(SPECS_DIR / f"{cell.prompt}.yaml", cfg)
    if state is not None:
        state.save_run(Path(ingested.run_dir))
    dataset_variant = "all-replies" if not cfg.dataset.require_teacher_checks else None
    dataset = dataset_stage(ingested, inputs, conversations, cfg.dataset, reasons, variant=dataset_variant)
    train = train_stage(ingested, dataset, cfg.train, cfg.model, variant=cell.name)
    evaluation = evaluate_stage(ingested, dataset, train, cfg.evaluate, cfg.model, cfg.backend, variant=cell.name)
    summary = EvaluationSummary.load(evaluation.path("summary"))
    scores = evaluation_scores(evaluation)
    train_metrics = json.loads(train.path("metrics").read_text())
    stages = {"synthesis": [inputs, conversations] + ([reasons] if reasons else []), "train": [train]}
    return {
        "prompt": cell.prompt,
        "variant": cell.variant,
        "seed": cell.seed,
        "run_dir": ingested.run_dir,
        "version": ingested.version,
        "prompt_tokens": ingested.prompt_tokens,
        "dataset_rows": dataset.rows,
        "seconds_this_process": round(time.perf_counter() - started, 1),
        "reused": {k: all(s.reused for s in v) for k, v in stages.items()} | {"evaluate": evaluation.reused},
        "train_seconds": train_metrics.get("train_seconds"),
        "peak_memory_gb_so_far": peak_memory_gb(),
        "student": {
            "strict_success": summary.variants["student"].strict_success,
            "format": summary.variants["student"].format,
            "task": summary.variants["student"].task,
            "cut": summary.variants["student"].cut,
            "collapsed": bool(summary.collapse and summary.collapse.collapsed),
            "distinct_share": summary.collapse.distinct_share if summary.collapse else None,
        },
        "reference": {
            name: {
                "strict_success": summary.variants[name].strict_success,
                "format": summary.variants[name].format,
                "task": summary.variants[name].task,
                "cut": summary.variants[name].cut,
            }
            for name in ("base", "teacher")
        },
        "uninformative_checks": summary.uninformative_checks,
        "dataset_folder": Path(dataset.path("train")).parent.name,
        "fact_coverage": coverage_of(Path(dataset.path("train")).parent),
        "scores": scores,
    }


def coverage_of(dataset_dir: Path) -> list[bool | None]:
    """Per held-out input (sorted by id, as the scores are): do the SFT training targets state its facts?"""
    test = pd.read_parquet(dataset_dir / "test.parquet", columns=["example_id", "facts"]).sort_values("example_id")
    train = pd.read_parquet(dataset_dir / "train.parquet", columns=["objective", "target"])
    covered = fact_coverage(test, train.loc[train["objective"] == "sft", "target"])
    return [covered[str(i)] for i in test["example_id"]]


def with_coverage(record: dict, runs_dir: Path) -> dict:
    """A cell finished before coverage was recorded gets it from its dataset, when the data is at hand (a run
    folder is always <runs_dir>/<spec name>/<version>/)."""
    if "fact_coverage" in record:
        return record
    default = stage_name("dataset", "all-replies" if record["variant"] == "joint-all-replies" else None)
    folder = runs_dir.joinpath(*Path(record["run_dir"]).parts[-2:], record.get("dataset_folder", default))
    if not (folder / "test.parquet").is_file():
        return record
    return record | {"dataset_folder": folder.name, "fact_coverage": coverage_of(folder)}


def evaluation_scores(evaluation) -> dict:
    """Per variant and metric, one 0/1 score per held-out input (sorted by id): what the bootstraps resample."""
    table = pd.read_parquet(evaluation.files["results"], columns=["variant", "example_id", *METRICS.values()])
    return {
        variant: {
            metric: rows.sort_values("example_id")[column].fillna(True).astype(float).tolist()
            for metric, column in METRICS.items()
        }
        for variant, rows in table.groupby("variant")
    }


def _recoveries(cells: list[dict], metric: str, resamples: int, level: float) -> dict:
    """Point recovery (mean over seeds) and its two-level bootstrap interval, for one variant's cells."""
    entries = [
        {name: c["scores"][name][metric] for name in ("base", "teacher")} | {"student": c["scores"]["student"][metric]}
        for c in cells
    ]
    means = {k: float(np.mean([np.mean(e[k]) for e in entries])) for k in ("student", "base", "teacher")}
    boot = two_level_bootstrap(entries, resamples=resamples, level=level)
    return {
        "value": recovery(means["student"], means["base"], means["teacher"]),
        "ci": boot["recovery"],
        "undefined_draws": boot["recovery_undefined"],
        "student": means["student"],
        "student_ci": boot["variants"].get("student"),
    }


def _difference(joint: list[dict], sft: list[dict], resamples: int, level: float) -> dict | None:
    """Strict-success recovery of joint minus that of sft: mean(joint - sft) / mean(teacher - base), paired
    by seed index and held-out input, with its two-level interval."""
    pairs = list(zip(sorted(joint, key=lambda c: c["seed"]), sorted(sft, key=lambda c: c["seed"])))
    if not pairs:
        return None
    entries = []
    for j, s in pairs:
        strict = {name: np.asarray(j["scores"][name]["strict"]) for name in ("base", "teacher")}
        diff = np.asarray(j["scores"]["student"]["strict"]) - np.asarray(s["scores"]["student"]["strict"])
        entries.append({"diff": diff, "zero": np.zeros_like(diff), "gap": strict["teacher"] - strict["base"]})
    gap = float(np.mean([e["gap"].mean() for e in entries]))
    value = float(np.mean([e["diff"].mean() for e in entries])) / gap if abs(gap) > 1e-12 else None
    boot = two_level_bootstrap(entries, resamples=resamples, level=level, recovery_of=("diff", "zero", "gap"))
    return {"value": value, "ci": boot["recovery"], "seeds": len(pairs)}


def aggregate(done: list[dict], target: float, lower_target: float, resamples: int, level: float) -> dict:
    """Per prompt: the reference variants and, per student variant, recovery with intervals over its seeds."""
    prompts: dict[str, dict] = {}
    for prompt in dict.fromkeys(c["prompt"] for c in done):
        cells = [c for c in done if c["prompt"] == prompt]
        first = cells[0]
        variants = {}
        for variant in VARIANTS:
            mine = [c for c in cells if c["variant"] == variant]
            if not mine:
                continue
            r = {m: _recoveries(mine, m, resamples, level) for m in METRICS}
            variants[variant] = {
                "seeds": sorted(c["seed"] for c in mine),
                "strict_recovery": r["strict"]["value"],
                "strict_recovery_ci": r["strict"]["ci"],
                "task_recovery": r["task"]["value"],
                "task_recovery_ci": r["task"]["ci"],
                "format_recovery": r["format"]["value"],
                "format_recovery_ci": r["format"]["ci"],
                "strict_success": r["strict"]["student"],
                "strict_success_ci": r["strict"]["student_ci"],
                "format": r["format"]["student"],
                "task": r["task"]["student"],
                "cut": [c["student"]["cut"] for c in mine],
                "collapsed": [c["student"]["collapsed"] for c in mine],
                "distinct_share": [c["student"]["distinct_share"] for c in mine],
                "train_seconds": [c["train_seconds"] for c in mine],
                "goal_met": _goal(r["strict"]["value"], r["strict"]["ci"], target, lower_target),
            }
        measured = [c for c in cells if c.get("fact_coverage")]
        coverage = None
        if measured:
            marks = measured[0]["fact_coverage"]
            coverage = {
                "with_facts": sum(m is not None for m in marks),
                "covered": sum(m is True for m in marks),
                "task": {"teacher": split_by_coverage(measured[0]["scores"]["teacher"]["task"], marks)}
                | {
                    variant: _mean_split([c for c in measured if c["variant"] == variant])
                    for variant in VARIANTS
                    if any(c["variant"] == variant for c in measured)
                },
            }
        joint, sft = ([c for c in cells if c["variant"] == v] for v in ("joint", "sft"))
        prompts[prompt] = {
            "name": prompt,
            "version": first["version"],
            "prompt_tokens": first["prompt_tokens"],
            "held_out": len(first["scores"]["base"]["strict"]),
            "dataset_rows": first["dataset_rows"],
            "base": first["reference"]["base"],
            "teacher": first["reference"]["teacher"],
            "uninformative_checks": first["uninformative_checks"],
            "variants": variants,
            "joint_minus_sft": _difference(joint, sft, resamples, level),
            "fact_coverage": coverage,
        }
    return prompts


def _mean_split(cells: list[dict]) -> dict:
    """A variant's task success on covered / uncovered inputs, averaged over its seeds."""
    splits = [split_by_coverage(c["scores"]["student"]["task"], c["fact_coverage"]) for c in cells]
    mean = {}
    for part in ("covered", "uncovered"):
        values = [s[part] for s in splits if s[part] is not None]
        mean[part] = float(np.mean(values)) if values else None
    return mean | {"n_covered": splits[0]["n_covered"], "n_uncovered": splits[0]["n_uncovered"]}


def estimate_seconds(cell: Cell, finished: list[dict]) -> float | None:
    """How long a student takes, from those finished with their prompt's synthesis already done: the longest of
    the same kind (SFT-only, or any joint variant) on the same prompt, else on any prompt; None if none yet."""
    kind = "sft" if cell.variant == "sft" else "joint"
    alike = [
        c
        for c in finished
        if ("sft" if c["variant"] == "sft" else "joint") == kind and c.get("reused", {}).get("synthesis")
    ]
    pool = [c for c in alike if c["prompt"] == cell.prompt] or alike
    return max((c["seconds_this_process"] for c in pool), default=None)


def finished_cells(done: list[dict]) -> set[tuple[str, str, int]]:
    return {(c["prompt"], c["variant"], c["seed"]) for c in done}


def _goal(value: float | None, ci: list | None, target: float, lower: float) -> bool:
    return value is not None and ci is not None and value >= target and ci[0] >= lower


def _f(x, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.0f}%" if pct else f"{x:.2f}"


def _ci(ci, pct: bool = False) -> str:
    return "" if not ci else f" [{_f(ci[0], pct)}, {_f(ci[1], pct)}]"


def render(results: dict) -> str:
    level = results["confidence_level"]
    lines = [
        f"# Quality suite: `{results['model']}`, `{results['config']}`",
        "",
        f"{'Finished' if results['complete'] else 'In progress'}: {results['cells_done']} of {results['cells_planned']} "
        f"students. Overrides: `{' '.join(results['overrides']) or 'none'}`. Held-out inputs never trained on; greedy. "
        "Strict success: every global check and the input's task checks pass (a reply cut at the token cap fails). "
        f"Recovery = (student - base) / (teacher - base). Brackets: {100 * level:.0f}% two-level bootstrap intervals "
        f"(training seeds, then held-out inputs; {results['bootstrap_resamples']} draws). Goal per prompt: strict "
        f"recovery >= {results['target']:.2f} with the interval's lower bound >= {results['lower_target']:.2f}.",
        "",
        f"Wall time so far: {results['wall_seconds'] / 3600:.1f} h over {results['sessions']} run(s) of this command; "
        f"peak memory {results['peak_memory_gb']} GB.",
        "",
    ]
    for p in results["prompts"].values():
        b, t = p["base"], p["teacher"]
        lines += [
            f"## {p['name']} ({p['prompt_tokens']} prompt tokens, {p['held_out']} held-out inputs, version "
            f"{p['version'][:12]})",
            "",
            f"Base (no prompt): strict {_f(b['strict_success'], True)}, format {_f(b['format'], True)}, task "
            f"{_f(b['task'], True)}, cut {b['cut']}. Teacher (with the prompt): strict {_f(t['strict_success'], True)}, "
            f"format {_f(t['format'], True)}, task {_f(t['task'], True)}, cut {t['cut']}."
            + (
                f" Uninformative checks (every variant passes): {', '.join(p['uninformative_checks'])}."
                if p["uninformative_checks"]
                else ""
            ),
            "",
            "| student | seeds | strict success | strict recovery | task recovery | format recovery | cut | collapsed | goal |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, v in p["variants"].items():
            lines.append(
                f"| {name} | {','.join(map(str, v['seeds']))} | {_f(v['strict_success'], True)}{_ci(v['strict_success_ci'], True)} "
                f"| **{_f(v['strict_recovery'])}**{_ci(v['strict_recovery_ci'])} | {_f(v['task_recovery'])}{_ci(v['task_recovery_ci'])} "
                f"| {_f(v['format_recovery'])}{_ci(v['format_recovery_ci'])} | {sum(v['cut'])} "
                f"| {sum(v['collapsed'])}/{len(v['collapsed'])} | {'met' if v['goal_met'] else '**missed**'} |"
            )
        cov = p.get("fact_coverage")
        if cov and cov["with_facts"]:
            parts = ", ".join(
                f"{name} {_f(v['covered'], True)} / {_f(v['uncovered'], True)}" for name, v in cov["task"].items()
            )
            lines += [
                "",
                f"Held-out inputs whose facts some SFT training target states: {cov['covered']} of "
                f"{cov['with_facts']} with facts. Task success on those / on the rest: {parts}.",
            ]
        d = p["joint_minus_sft"]
        if d:
            lines += [
                "",
                f"Joint minus SFT-only, strict recovery: {_f(d['value'])}{_ci(d['ci'])} ({d['seeds']} seed pair(s)).",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="embedded-0.5b", help="model.name_or_path for every stage (base, teacher, generator)"
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "genpi.yaml"))
    parser.add_argument(
        "--prompts", default=",".join(PROMPTS), help=f"comma-separated spec stems (default: {','.join(PROMPTS)})"
    )
    parser.add_argument("--main", default=MAIN_PROMPT, help="the prompt that gets every seed and the ablations")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds of sft and joint on the main prompt")
    parser.add_argument(
        "--no-ablations", action="store_true", help="skip joint-no-reasons, joint-kl, joint-all-replies"
    )
    parser.add_argument(
        "--set", action="append", default=[], help="config override for every cell, e.g. train.epochs=2"
    )
    parser.add_argument("--out", default=None, help="bench/results/<out>.json and .md (default: quality_<model>)")
    parser.add_argument(
        "--save-state",
        action="store_true",
        help="only refresh bench/resume/<out>/ from runs/ (synthesis checkpoints included) and rewrite the "
        "results from the students finished so far, then exit (train nothing)",
    )
    parser.add_argument(
        "--stop-by",
        default=None,
        help="when this machine goes away (HH:MM, an ISO time, or +90m): a student that would not finish by then "
        "is skipped, and those that fit still run (estimated from finished students of the same kind)",
    )
    parser.add_argument("--target", type=float, default=0.95, help="strict-success recovery each prompt should reach")
    parser.add_argument(
        "--lower-target", type=float, default=0.8, help="...with its interval's lower bound at least this"
    )
    args = parser.parse_args()
    try:
        deadline = Deadline.parse(args.stop_by)
    except ValueError as e:
        parser.error(str(e))
    prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    missing = [p for p in prompts if not (SPECS_DIR / f"{p}.yaml").is_file()]
    if missing:
        raise SystemExit(f"--prompts: no {', '.join(missing)} in {SPECS_DIR}")
    overrides = [f"model.name_or_path={args.model}", *args.set]
    out = args.out or "quality_" + args.model.removeprefix("embedded-").replace("embedded", "135m").replace("/", "_")
    cells = plan(prompts, args.main, args.seeds, not args.no_ablations)
    cfg = load_config(args.config, overrides)
    ev = cfg.evaluate

    path = RESULTS / f"{out}.json"
    shown = [o for o in overrides if not o.startswith("runs_dir=")]  # where runs live is this machine's business
    state = SuiteState(out, ROOT / cfg.runs_dir)
    done: list[dict] = []
    if not args.save_state:
        restored = state.restore()
        if restored:
            print(f"restored {restored} files of synthesized data from {state.folder}", flush=True)
        clock = state.clock({"model": args.model, "overrides": shown})

    def write(clock: Clock | ClockReading) -> dict:
        finished = finished_cells(done)
        results = {
            "model": args.model,
            "config": str(Path(args.config).resolve().relative_to(ROOT))
            if Path(args.config).resolve().is_relative_to(ROOT)
            else args.config,
            "overrides": shown,
            "seeds": args.seeds,
            "main_prompt": args.main,
            "target": args.target,
            "lower_target": args.lower_target,
            "bootstrap_resamples": ev.bootstrap_resamples,
            "confidence_level": ev.confidence_level,
            "inputs": cfg.synth.inputs.max_inputs,
            "epochs": cfg.train.epochs,
            "cells_planned": len(cells),
            "cells_done": len(done),
            "complete": len(done) == len(cells),
            "pending": [c.name + "@" + c.prompt for c in cells if (c.prompt, c.variant, c.seed) not in finished],
            "wall_seconds": clock.seconds(),
            "sessions": clock.sessions,
            "peak_memory_gb": clock.peak_memory_gb(),
            "prompts": aggregate(done, args.target, args.lower_target, ev.bootstrap_resamples, ev.confidence_level),
            "cells": [{k: v for k, v in c.items() if k != "scores"} for c in done],
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / f"{out}.md").write_text(render(results))
        return results

    if args.save_state:  # the data so far, and the results rewritten from the cells finished so far
        state.save_all()
        for cell in cells:
            key = cell_key(cell, args.config, overrides)
            previous = state.finished(key)
            if previous is not None:  # any finished cell counts, whatever order the run that made it took
                done.append(state.backfill_coverage(key, previous))
        write(state.clock_reading())
        print(f"saved the suite's state to {state.folder}; {len(done)} finished students in {path}", flush=True)
        return

    for i, cell in enumerate(cells, 1):
        key = cell_key(cell, args.config, overrides)
        previous = state.finished(key)
        print(
            f"== [{i}/{len(cells)}] {cell.prompt}: {cell.name}{' (finished earlier)' if previous else ''}", flush=True
        )
        estimate = None if previous else estimate_seconds(cell, list(state.cells.values()))
        if not deadline.allows(estimate):
            print(deadline.why_not(cell.name, estimate), flush=True)
            continue
        done.append(
            state.backfill_coverage(key, previous) if previous else run_cell(cell, args.config, overrides, state)
        )
        if not previous:
            state.keep(key, done[-1])
        s = done[-1]["student"]
        print(
            f"   student strict {_f(s['strict_success'], True)}, format {_f(s['format'], True)}, task {_f(s['task'], True)}",
            flush=True,
        )
        write(clock)
    results = write(clock)
    clock.save()
    for p in results["prompts"].values():
        for name, v in p["variants"].items():
            print(
                f"{p['name']} {name}: strict recovery {_f(v['strict_recovery'])}{_ci(v['strict_recovery_ci'])}",
                flush=True,
            )
    print(f"wrote {path} and {out}.md", flush=True)


if __name__ == "__main__":
    main()

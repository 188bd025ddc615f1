"""On-policy prompt distillation vs GenPI, at the same training wall time: how good, and how fast it gets there.

Variants, on the quality suite's prompts and config (configs/genpi.yaml, the 0.5B):

  joint            GenPI: SFT + prompt generation with reasons (the suite's own student)
  joint-on-policy  joint plus the on-policy term on every step (train.on_policy, schedule mixed)
  on-policy        the on-policy term alone: the student's own samples, scored by the prompted teacher
  sft              SFT only

Seeds: 3 on the main prompt, 1 on the other two. Joint trains first; every other variant of the same prompt
and seed then gets the same training wall time: a 2-step calibration run measures its seconds per step, and
``train.max_steps`` = joint's seconds / that (the learning-rate schedule spans the budget). Each run keeps 10
adapter snapshots (every 10% of its steps, ``train.snapshots``); they are evaluated in order on the held-out
inputs (a light evaluation: no leakage, no multi-turn, greedy) until strict-success recovery first reaches 0.9,
which gives the steps and seconds to 0.9. The final adapter gets the full evaluation: strict-success recovery
with two-level bootstrap intervals over seeds and inputs, the collapse signal, and the re-prompted student
(``student_with_prompt``: the adapter given the prompt anyway, against the teacher).

Goal: joint-on-policy reaches strict recovery >= 0.95 in at most half the steps joint needs to reach 0.9.

Resumable like the quality suite, on a fresh clone too (bench/carry.py): finished runs are kept with their scores
in bench/resume/on_policy/, beside the synthesized data, which it shares with the quality suite (same prompts,
same config); the results are rewritten after each run. Commit that folder with the results. `--stop-by 00:20`
skips a run that would not finish before the machine goes away (as in the quality suite).
Results: bench/results/on_policy.json (per prompt and variant: strict_recovery, strict_recovery_ci,
steps_to_0.9, ...) and on_policy.md. Run: genpi bench on_policy --model embedded-0.5b (many hours on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time

from carry import BenchState, Deadline, measured_config, result_key
from quality import (
    MAIN_PROMPT,
    PROMPTS,
    RESULTS,
    ROOT,
    SPECS_DIR,
    _ci,
    _f,
    _recoveries,
    evaluation_scores,
)
from quality import (
    Cell as QualityCell,
)

from genpi_core.pipeline import dataset_stage, evaluate_stage, synthesize, train_stage
from genpi_core.store.stage import file_sha256
from schemas.artifacts import CHECKPOINT_DIR, SNAPSHOT_INFO, SNAPSHOTS_DIR
from schemas.config import load_config
from schemas.stages import StageOutput
from schemas.summary import EvaluationSummary

VARIANTS: dict[str, list[str]] = {
    "joint": [],
    "joint-on-policy": ["train.on_policy.enabled=true"],
    "on-policy": ["train.sft=false", "train.prompt_generation=false", "train.on_policy.enabled=true"],
    "sft": ["train.prompt_generation=false"],
}
SNAPSHOTS = 10
THRESHOLD = 0.9
CALIBRATION_STEPS = 2
# the snapshots' evaluation: the held-out replies only (base and teacher are replayed from the run's cache)
LIGHT_EVAL = [
    "evaluate.leakage.enabled=false",
    "evaluate.multi_turn.enabled=false",
    "evaluate.student_with_prompt=false",
    "evaluate.bootstrap_resamples=200",
]


class Cell(QualityCell):
    """A prompt, a variant, a seed, as in the quality suite, in folders of its own."""

    @property
    def name(self) -> str:  # op-<variant>-s<seed>: apart from the quality suite's train-<variant>-s<seed>
        return f"op-{self.variant}-s{self.seed}"


def plan(prompts: list[str], main: str, seeds: int) -> list[Cell]:
    """Seed 0 of every prompt first, joint before the variants that take its wall time."""
    cells = [Cell(p, v, 0) for p in prompts for v in VARIANTS]
    return cells + [Cell(main, v, s) for s in range(1, seeds) if main in prompts for v in VARIANTS]


def _train(cell: Cell, config: str, overrides: list[str], name: str, extra: list[str]):
    cfg = load_config(config, [*overrides, *VARIANTS[cell.variant], f"train.seed={cell.seed}", *extra])
    ingested, inputs, conversations, reasons = synthesize(SPECS_DIR / f"{cell.prompt}.yaml", cfg)
    dataset = dataset_stage(ingested, inputs, conversations, cfg.dataset, reasons)
    train = train_stage(ingested, dataset, cfg.train, cfg.model, variant=name)
    return cfg, ingested, dataset, train, json.loads(train.path("metrics").read_text())


def cell_key(cell: Cell, config: str, overrides: list[str], joint_seconds: float | None) -> str:
    """What a finished run measured: its resolved config (but where runs are kept), the spec's bytes and, for
    the variants that get joint's wall time, that budget."""
    cfg = load_config(config, [*overrides, *VARIANTS[cell.variant], f"train.seed={cell.seed}"])
    spec = file_sha256(SPECS_DIR / f"{cell.prompt}.yaml")
    return result_key(
        cell=cell.name, prompt=cell.prompt, config=measured_config(cfg), spec=spec, budget_s=joint_seconds
    )


def steps_for_budget(seconds: float, calibration: dict) -> int:
    """Steps that fit in ``seconds`` at the calibration run's pace (at least one)."""
    per_step = calibration["elapsed_seconds"] / max(1, calibration["steps"])
    return max(1, round(seconds / per_step))


def _snapshot_curve(cfg, ingested, dataset, train: StageOutput, name: str, eval_cfg) -> list:
    """Evaluate the snapshots in step order until strict recovery first reaches the threshold."""
    curve = []
    folder = train.path("adapter").parent / CHECKPOINT_DIR / SNAPSHOTS_DIR
    for snap in sorted(folder.glob("step-*")):
        info = json.loads((snap / SNAPSHOT_INFO).read_text())
        as_train = StageOutput(stage=train.stage, dir=train.dir, files=train.files | {"adapter": str(snap)})
        evaluation = evaluate_stage(
            ingested, dataset, as_train, eval_cfg, cfg.model, cfg.backend, variant=f"{name}-{snap.name}"
        )
        summary = EvaluationSummary.load(evaluation.path("summary"))
        curve.append(
            {
                "step": info["step"],
                "elapsed_s": info["elapsed_s"],
                "strict_recovery": summary.recovery_strict,
                "collapsed": bool(summary.collapse and summary.collapse.collapsed),
            }
        )
        if summary.recovery_strict is not None and summary.recovery_strict >= THRESHOLD:
            break
    return curve


def estimate_seconds(cell: Cell, finished: list[dict]) -> float | None:
    """How long a run takes: every variant trains for joint's wall time, so the longest finished run of the same
    prompt (else of any prompt) is the estimate; None before the first one (it always starts)."""
    timed = [c for c in finished if c.get("seconds_this_process")]
    pool = [c for c in timed if c["prompt"] == cell.prompt] or timed
    return max((c["seconds_this_process"] for c in pool), default=None)


def run_cell(cell: Cell, config: str, overrides: list[str], joint_seconds: float | None) -> dict:
    started = time.perf_counter()
    extra = [f"train.snapshots={SNAPSHOTS}"]
    calibration = None
    if cell.variant != "joint":
        if joint_seconds is None:
            raise RuntimeError(f"{cell}: joint of the same prompt and seed must train first (its wall time)")
        *_, calibration = _train(
            cell, config, overrides, f"{cell.name}-calibration", [f"train.max_steps={CALIBRATION_STEPS}"]
        )
        extra.append(f"train.max_steps={steps_for_budget(joint_seconds, calibration)}")
    cfg, ingested, dataset, train, metrics = _train(cell, config, overrides, cell.name, extra)
    light = load_config(config, [*overrides, *LIGHT_EVAL]).evaluate
    curve = _snapshot_curve(cfg, ingested, dataset, train, cell.name, light)
    reached = next((p for p in curve if p["strict_recovery"] is not None and p["strict_recovery"] >= THRESHOLD), None)
    evaluation = evaluate_stage(ingested, dataset, train, cfg.evaluate, cfg.model, cfg.backend, variant=cell.name)
    summary = EvaluationSummary.load(evaluation.path("summary"))
    return {
        "prompt": cell.prompt,
        "variant": cell.variant,
        "seed": cell.seed,
        "run_dir": ingested.run_dir,
        "steps": metrics["steps"],
        "train_seconds": metrics["elapsed_seconds"],
        "calibration_seconds_per_step": calibration["elapsed_seconds"] / calibration["steps"] if calibration else None,
        "steps_to_threshold": reached["step"] if reached else None,
        "seconds_to_threshold": reached["elapsed_s"] if reached else None,
        "curve": curve,
        "collapsed": bool(summary.collapse and summary.collapse.collapsed),
        "distinct_share": summary.collapse.distinct_share if summary.collapse else None,
        "re_prompt": summary.re_prompt.model_dump() if summary.re_prompt else None,
        "scores": evaluation_scores(evaluation),
        "seconds_this_process": round(time.perf_counter() - started, 1),
    }


def aggregate(done: list[dict], resamples: int, level: float) -> dict:
    out: dict = {}
    for prompt in dict.fromkeys(c["prompt"] for c in done):
        variants = {}
        for variant in VARIANTS:
            mine = [c for c in done if c["prompt"] == prompt and c["variant"] == variant]
            if not mine:
                continue
            strict = _recoveries(mine, "strict", resamples, level)
            reached = [c["steps_to_threshold"] for c in mine]
            variants[variant] = {
                "seeds": [c["seed"] for c in mine],
                "strict_recovery": strict["value"],
                "strict_recovery_ci": strict["ci"],
                "steps_to_0.9": reached,  # per seed; None = never reached 0.9 in its budget
                "seconds_to_0.9": [c["seconds_to_threshold"] for c in mine],
                "steps": [c["steps"] for c in mine],
                "train_seconds": [c["train_seconds"] for c in mine],
                "collapsed": [c["collapsed"] for c in mine],
                "distinct_share": [c["distinct_share"] for c in mine],
                "re_prompt": [c["re_prompt"] for c in mine],
            }
        out[prompt] = {"variants": variants, "goal": _goal(variants)}
    return out


def _goal(variants: dict) -> dict | None:
    """joint-on-policy: strict recovery >= 0.95, in at most half the steps joint needs to reach 0.9 (seed 0)."""
    mixed, joint = variants.get("joint-on-policy"), variants.get("joint")
    if not mixed or not joint:
        return None
    ours, theirs = mixed["steps_to_0.9"][0], joint["steps_to_0.9"][0]
    fast = ours is not None and (theirs is None or ours <= theirs / 2)
    good = mixed["strict_recovery"] is not None and mixed["strict_recovery"] >= 0.95
    return {"recovery_at_least_0.95": good, "at_most_half_the_steps": fast, "met": good and fast}


def render(results: dict) -> str:
    lines = [
        f"# On-policy distillation vs GenPI: `{results['model']}`, same training wall time",
        "",
        f"{results['cells_done']} of {results['cells_planned']} runs done. Strict-success recovery with "
        f"{100 * results['confidence_level']:.0f}% two-level bootstrap intervals (seeds, then held-out inputs); steps "
        "to 0.9 from adapter snapshots every 10% of training (n/r = never reached). Wall time so far: "
        f"{results['wall_seconds'] / 3600:.1f} h.",
        "",
    ]
    for prompt, p in results["prompts"].items():
        lines += [
            f"## {prompt}",
            "",
            "| variant | seeds | strict recovery | steps to 0.9 | steps | train s | collapsed | re-prompted - teacher |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, v in p["variants"].items():
            reached = ", ".join("n/r" if s is None else str(s) for s in v["steps_to_0.9"])
            gaps = ", ".join("n/a" if r is None else f"{100 * r['difference']:+.0f} pts" for r in v["re_prompt"])
            lines.append(
                f"| {name} | {','.join(map(str, v['seeds']))} | **{_f(v['strict_recovery'])}**"
                f"{_ci(v['strict_recovery_ci'])} | {reached} | {', '.join(map(str, v['steps']))} "
                f"| {', '.join(f'{s:.0f}' for s in v['train_seconds'])} | {sum(v['collapsed'])}/{len(v['collapsed'])} "
                f"| {gaps} |"
            )
        goal = p["goal"]
        if goal:
            lines += [
                "",
                f"Goal (joint-on-policy >= 0.95 in <= half of joint's steps to 0.9): "
                f"{'met' if goal['met'] else '**missed**'} ({json.dumps(goal)}).",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded-0.5b")
    parser.add_argument("--config", default=str(ROOT / "configs" / "genpi.yaml"))
    parser.add_argument("--prompts", default=",".join(PROMPTS))
    parser.add_argument("--main", default=MAIN_PROMPT, help="the prompt that gets every seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="config override for every run")
    parser.add_argument("--out", default="on_policy")
    parser.add_argument(
        "--stop-by",
        default=None,
        help="when this machine goes away (HH:MM, an ISO time, or +90m): a run that would not finish by then is "
        "skipped (estimated from the finished runs of its prompt)",
    )
    args = parser.parse_args()
    try:
        deadline = Deadline.parse(args.stop_by)
    except ValueError as e:
        parser.error(str(e))
    prompts = [p.strip() for p in args.prompts.split(",") if p.strip()]
    overrides = [f"model.name_or_path={args.model}", *args.set]
    cfg = load_config(args.config, overrides)
    cells = plan(prompts, args.main, args.seeds)
    state = BenchState(args.out, ROOT / cfg.runs_dir)
    restored = state.restore()
    if restored:
        print(f"restored {restored} files of synthesized data from {state.root}", flush=True)
    clock = state.clock({"model": args.model, "overrides": overrides})
    done: list[dict] = []
    joint_seconds: dict[tuple[str, int], float] = {}

    def write() -> None:
        results = {
            "model": args.model,
            "config": args.config,
            "overrides": overrides,
            "threshold": THRESHOLD,
            "confidence_level": cfg.evaluate.confidence_level,
            "cells_planned": len(cells),
            "cells_done": len(done),
            "complete": len(done) == len(cells),
            "wall_seconds": clock.seconds(),
            "prompts": aggregate(done, cfg.evaluate.bootstrap_resamples, cfg.evaluate.confidence_level),
            "runs": [{k: v for k, v in c.items() if k != "scores"} for c in done],
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / f"{args.out}.md").write_text(render(results))

    for i, cell in enumerate(cells, 1):
        budget = joint_seconds.get((cell.prompt, cell.seed))
        key = cell_key(cell, args.config, overrides, budget)
        previous = state.finished(key)
        print(
            f"== [{i}/{len(cells)}] {cell.prompt}: {cell.name}{' (finished earlier)' if previous else ''}", flush=True
        )
        if not previous and cell.variant != "joint" and budget is None:
            print("   skipped: joint of the same prompt and seed has not trained (its wall time is the budget)")
            continue
        estimate = None if previous else estimate_seconds(cell, list(state.cells.values()))
        if not deadline.allows(estimate):
            print(deadline.why_not(cell.name, estimate), flush=True)
            continue
        done.append(previous or run_cell(cell, args.config, overrides, budget))
        if not previous:
            state.keep(key, done[-1])
        if cell.variant == "joint":
            joint_seconds[(cell.prompt, cell.seed)] = done[-1]["train_seconds"]
        print(f"   steps {done[-1]['steps']}, to 0.9: {done[-1]['steps_to_threshold']}", flush=True)
        write()
    write()
    clock.save()
    print(f"wrote {RESULTS / args.out}.json and .md", flush=True)


if __name__ == "__main__":
    main()

"""Task success in a real environment: is the internalized OS agent still able to do the job?

The bundled OS agent (examples/prompts/os_agent.yaml, the paper's AgentBench OS prompt format) is internalized
with the quality config (configs/genpi.yaml: generated inputs, two role-swapped agent turns, reasons, a PG
example beside every SFT example) twice, at equal data: once with the environment's turns written by the model
(``synth.conversations.environment_kind=simulated``) and once with real command output from the shell sandbox
(``shell``). Each run folder lives under its own runs root, so the two never share a stage.

Then base, teacher and student play two task sets in the sandbox, up to the spec's 5 turns per task:
  genpi_os            our own 20+ tasks (counting, file search, permissions, text processing, processes)
  agentbench_os_dev   AgentBench's OS dev split, vendored (its test split is never used)
Only tasks whose reference solution passes in our sandbox count; the others are listed with their reasons.

Results: bench/results/real_env.json, per environment kind and task set: teacher_success, student_success,
base_success (with intervals), success_ratio (student / teacher, paired bootstrap interval), answered share,
first-turn format and the held-out format/strict recovery of the same adapter; and, per task set, the student's
success with real observations minus with simulated ones. Goal: success_ratio >= 0.9.

Resumable, on a fresh clone too (bench/carry.py): each finished environment kind is kept with its results in
bench/resume/real_env/, beside the synthesized data; commit that folder with the results. Nothing else
CPU-bound should run beside it.
Run: genpi bench real_env --model embedded-0.5b        (hours on 2 cores)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from carry import BenchState, measured_config, result_key

from genpi_core.pipeline import dataset_stage, evaluate_stage, synthesize, task_eval_stage, train_stage
from genpi_core.store.stage import file_sha256, tree_sha256
from schemas.config import load_config
from schemas.summary import EvaluationSummary

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SPEC = ROOT / "examples" / "prompts" / "os_agent.yaml"
TASK_SETS = {
    "genpi_os": ROOT / "examples" / "tasks" / "genpi_os" / "tasks.json",
    "agentbench_os_dev": ROOT / "examples" / "tasks" / "agentbench_os_dev" / "dev.json",
}
KINDS = ("simulated", "shell")
GOAL = 0.9


def kind_config(kind: str, config: str, overrides: list[str], runs_root: Path):
    """The config of one environment kind, in a runs root of its own (the two kinds never share a stage)."""
    return load_config(
        config,
        [*overrides, f"synth.conversations.environment_kind={kind}", f"runs_dir={runs_root / f'real-env-{kind}'}"],
    )


def kind_key(kind: str, config: str, overrides: list[str], runs_root: Path) -> str:
    """What a finished kind measured: its config, the spec's bytes and every task set's files."""
    tasks = {name: tree_sha256(path.parent) for name, path in TASK_SETS.items()}
    cfg = measured_config(kind_config(kind, config, overrides, runs_root))
    return result_key(kind=kind, config=cfg, spec=file_sha256(SPEC), tasks=tasks)


def run_kind(kind: str, config: str, overrides: list[str], runs_root: Path, state: BenchState | None = None) -> dict:
    """Internalize the OS agent with one kind of environment, then play every task set. With ``state``, the
    synthesized data is mirrored into it as soon as it exists."""
    cfg = kind_config(kind, config, overrides, runs_root)
    ingested, inputs, conversations, reasons = synthesize(SPEC, cfg)
    if state is not None:
        state.save_run(Path(ingested.run_dir))
    dataset = dataset_stage(ingested, inputs, conversations, cfg.dataset, reasons)
    train = train_stage(ingested, dataset, cfg.train, cfg.model)
    evaluation = evaluate_stage(ingested, dataset, train, cfg.evaluate, cfg.model, cfg.backend)
    held_out = EvaluationSummary.load(evaluation.path("summary"))
    sets = {}
    for name, path in TASK_SETS.items():
        stage = task_eval_stage(ingested, train, path, cfg.tasks, cfg.model, cfg.backend, allowed_root=ROOT)
        summary = json.loads(stage.path("summary").read_text())
        v = summary["variants"]
        sets[name] = {
            "tasks": summary["tasks"],
            "solvable": summary["solvable"],
            "unsolvable": summary["unsolvable"],
            **{f"{who}_success": v[who]["success"] for who in ("teacher", "student", "base") if who in v},
            **{f"{who}_success_ci": v[who]["success_ci"] for who in ("teacher", "student", "base") if who in v},
            "success_ratio": summary["success_ratio"],
            "success_ratio_ci": summary["success_ratio_ci"],
            "goal_met": summary["success_ratio"] is not None and summary["success_ratio"] >= GOAL,
            "answered": {who: s["answered"] for who, s in v.items()},
            "first_turn_format": {who: s["first_turn_format"] for who, s in v.items()},
            "mean_turns": {who: s["mean_turns"] for who, s in v.items()},
            "divergence": summary.get("divergence"),
            "run_dir": str(ingested.run_dir),
        }
    return {
        "run_dir": str(ingested.run_dir),
        "version": ingested.version,
        "dataset_rows": dataset.rows,
        "train_steps": json.loads(train.path("metrics").read_text())["steps"],
        "held_out": {
            "strict_recovery": held_out.recovery_strict,
            "strict_recovery_ci": held_out.recovery_strict_ci,
            "format_recovery": held_out.recovery_format,
            "format_recovery_ci": held_out.recovery_format_ci,
        },
        "task_sets": sets,
    }


def real_minus_simulated(kinds: dict) -> dict:
    """Per task set: the student's success with real observations minus with simulated ones (point values;
    the two runs' own intervals are beside them, the tasks are the same)."""
    if not all(k in kinds for k in KINDS):
        return {}
    out = {}
    for name in TASK_SETS:
        real, sim = (kinds[k]["task_sets"][name] for k in ("shell", "simulated"))
        if real.get("student_success") is None or sim.get("student_success") is None:
            continue
        out[name] = {
            "difference": real["student_success"] - sim["student_success"],
            "shell": [real["student_success"], real.get("student_success_ci")],
            "simulated": [sim["student_success"], sim.get("student_success_ci")],
        }
    return out


def render(results: dict) -> str:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.0f}%"

    def ci(c):
        return "" if not c else f" [{pct(c[0])}, {pct(c[1])}]"

    lines = [f"# Task success in the shell sandbox: `{results['model']}`, `{results['config']}`", ""]
    for kind, k in results["kinds"].items():
        lines += [
            f"## synthesis environment: {kind}",
            "",
            f"Held-out strict recovery {k['held_out']['strict_recovery']}, format recovery "
            f"{k['held_out']['format_recovery']}; {k['train_steps']} training steps.",
            "",
            "| task set | solvable | base | teacher | student | student / teacher | goal (>= 0.9) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in k["task_sets"].items():
            ratio, ratio_ci = s["success_ratio"], s["success_ratio_ci"]
            ratio_text = ("n/a" if ratio is None else f"{ratio:.2f}") + (
                f" [{ratio_ci[0]:.2f}, {ratio_ci[1]:.2f}]" if ratio_ci else ""
            )
            lines.append(
                f"| {name} | {s['solvable']} of {s['tasks']} | {pct(s.get('base_success'))} "
                f"| {pct(s.get('teacher_success'))}{ci(s.get('teacher_success_ci'))} "
                f"| {pct(s.get('student_success'))}{ci(s.get('student_success_ci'))} "
                f"| {ratio_text} "
                f"| {'met' if s['goal_met'] else '**missed**'} |"
            )
        lines.append("")
    for name, d in results["real_minus_simulated"].items():
        lines.append(
            f"Real minus simulated observations, student success on {name}: {100 * d['difference']:+.0f} points."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded-0.5b")
    parser.add_argument("--config", default=str(ROOT / "configs" / "genpi.yaml"))
    parser.add_argument("--kinds", default=",".join(KINDS), help="environment kinds to synthesize with")
    parser.add_argument("--set", action="append", default=[], help="config override for every run")
    parser.add_argument("--out", default="real_env")
    args = parser.parse_args()
    overrides = [f"model.name_or_path={args.model}", *args.set]
    runs_root = ROOT / load_config(args.config, overrides).runs_dir
    state = BenchState(args.out, runs_root)
    restored = state.restore()
    if restored:
        print(f"restored {restored} files of synthesized data from {state.root}", flush=True)
    clock = state.clock({"model": args.model, "overrides": overrides})
    kinds: dict = {}
    for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
        key = kind_key(kind, args.config, overrides, runs_root)
        previous = state.finished(key)
        print(f"== os-agent, environment {kind}{' (finished earlier)' if previous else ''}", flush=True)
        kinds[kind] = previous or run_kind(kind, args.config, overrides, runs_root, state)
        if not previous:
            state.keep(key, kinds[kind])
        results = {
            "model": args.model,
            "config": args.config,
            "overrides": overrides,
            "goal_success_ratio": GOAL,
            "wall_seconds": clock.seconds(),
            "sessions": clock.sessions,
            "peak_memory_gb": clock.peak_memory_gb(),
            "kinds": kinds,
            "real_minus_simulated": real_minus_simulated(kinds),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / f"{args.out}.md").write_text(render(results))
    clock.save()
    print(f"wrote {RESULTS / args.out}.json and .md", flush=True)


if __name__ == "__main__":
    main()

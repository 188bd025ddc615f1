"""Incremental re-internalization against a full re-run of the same edit, side by side in one run.

The bundled library-desk prompt is internalized once (the parent). Then each of three realistic edits is built
twice from a copy of the parent's run folder, in run roots of their own: incrementally (the parent's inputs,
base replies and unchanged reasons reused, training warm-started from the parent's adapter; genpi_core/
incremental/) and as a full re-run (``incremental.enabled=false``). Both are evaluated in full on the same held-out
inputs.

  changed_fact      a price changes ("Replacement library card: $2." -> "$3."), with the held-out fact that asks it
  added_rule        a new rule about parking
  reworded_example  a worked agent turn reworded, same meaning

Results: bench/results/incremental.json, per model and edit: ``time_ratio`` (incremental wall time over full),
``strict_recovery_full``/``strict_recovery_incremental`` with their intervals and whether they overlap, the
share of teacher replies the edit left unchanged, what the plan decided and whether a safety net sent the
incremental build to a full run; for the changed fact, how often the student's reply holds the new value in
each build. Goals: ``time_ratio`` <= 0.3 on the 0.5B quality config (where training dominates); the intervals
overlap; the edited fact passes at least as often incrementally as in the full re-run (counted where the full
re-run passes it at least once). On the 135M default config the ratio is reported as measured.

Resumable, on a fresh clone too (bench/carry.py): each finished build is kept with its measurements in
bench/resume/incremental_<model>/ beside the synthesized data of every run (the parent's and each build's; no
weights, so a fresh clone retrains the parent before the builds that still need it), and is not run again. The
0.5B parent starts from the quality suite's synthesized library-desk data where its stage keys match. A build
that was killed resumes from its finished stages and is marked ``resumed`` (its wall time then understates the
real cost). ``--save-state`` mirrors what exists so far (a build killed mid-way keeps its finished stages).
Run: genpi bench incremental                                   (135M, all three edits, about an hour on 2 cores)
     genpi bench incremental --model embedded-0.5b --config configs/genpi.yaml --edits changed_fact   (hours)
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd
from carry import BenchState, measured_config, result_key

from genpi_core.store.stage import file_sha256

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SPEC = ROOT / "examples" / "prompts" / "library_desk.yaml"
TIME_GOAL = 0.3
FACT_INPUT = "I lost my library card. What does a new one cost?"

EDITS: dict[str, list[tuple[str, str]]] = {
    "changed_fact": [
        ("- Replacement library card: $2.", "- Replacement library card: $3."),
        ('facts: [["$2", "2 dollars", "two dollars"]]', 'facts: [["$3", "3 dollars", "three dollars"]]'),
    ],
    "added_rule": [
        (
            "7. Never ask for card numbers, passwords or other private details.",
            "7. Never ask for card numbers, passwords or other private details.\n"
            "        8. If a patron asks about parking, say that the lot behind the library is free for 2 hours.",
        )
    ],
    "reworded_example": [
        (
            "Answer: No, children's books have no late fees. Please bring it back when you can.",
            "Answer: Children's books never have late fees, so there is nothing to pay. Please return it whenever "
            "you can.",
        )
    ],
}


def edited_spec(edit: str, folder: Path) -> Path:
    """The bundled spec with one edit applied (each replacement must match exactly once)."""
    text = SPEC.read_text(encoding="utf-8")
    for old, new in EDITS[edit]:
        if text.count(old) != 1:
            raise ValueError(f"{SPEC}: edit {edit!r} expects {old!r} exactly once, found {text.count(old)}")
        text = text.replace(old, new)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"library_desk_{edit}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def build(spec: Path, cfg) -> tuple[float, Path]:
    from genpi_core.pipeline import run_pipeline

    started = time.perf_counter()
    evaluated = run_pipeline(spec, cfg)
    return time.perf_counter() - started, Path(evaluated.dir).parent


def fact_passes(run_dir: Path) -> float | None:
    """Share of the student's replies to the changed fact's question that hold the new value."""
    results = pd.read_parquet(run_dir / "evaluate" / "eval_results.parquet")
    rows = results[(results["variant"] == "student") & (results["input"] == FACT_INPUT)]
    if rows.empty:
        return None
    return float(rows["checks"].map(lambda c: json.loads(c).get("fact:0", False)).mean())


def measure(run_dir: Path, seconds: float, resumed: bool) -> dict:
    from schemas.summary import EvaluationSummary

    summary = EvaluationSummary.load(run_dir / "evaluate" / "summary.json")
    plan = json.loads((run_dir / "incremental.json").read_text()) if (run_dir / "incremental.json").is_file() else {}
    conversations = json.loads((run_dir / "conversations" / "_manifest.json").read_text())["rows"]
    compared = conversations.get("teacher_compared")
    return {
        "wall_seconds": round(seconds, 1),
        "resumed": resumed,
        "strict_recovery": summary.recovery,
        "strict_recovery_ci": summary.recovery_ci,
        "format_recovery": summary.recovery_format,
        "task_recovery": summary.recovery_task,
        "plan": plan.get("mode", "full"),
        "outcome": plan.get("outcome"),
        "fallback_reason": plan.get("fallback_reason"),
        "teacher_unchanged_share": (conversations["teacher_unchanged"] / compared) if compared else None,
        "edited_fact_passes": fact_passes(run_dir),
        "run_dir": str(run_dir),
    }


def _overlap(a, b) -> bool | None:
    return None if not a or not b else a[0] <= b[1] and b[0] <= a[1]


def compare(incremental: dict, full: dict, edit: str) -> dict:
    out = {
        "time_ratio": incremental["wall_seconds"] / full["wall_seconds"] if full["wall_seconds"] else None,
        "strict_recovery_full": full["strict_recovery"],
        "strict_recovery_full_ci": full["strict_recovery_ci"],
        "strict_recovery_incremental": incremental["strict_recovery"],
        "strict_recovery_incremental_ci": incremental["strict_recovery_ci"],
        "intervals_overlap": _overlap(incremental["strict_recovery_ci"], full["strict_recovery_ci"]),
        "incremental": incremental,
        "full": full,
    }
    if edit == "changed_fact":
        inc, ful = incremental["edited_fact_passes"], full["edited_fact_passes"]
        counted = ful is not None and ful > 0
        out["edited_fact"] = {
            "incremental": inc,
            "full": ful,
            "counted": counted,
            "learned": (inc is not None and inc >= ful) if counted else None,
        }
    return out


def _copy_parent(parent_run: Path, root: Path) -> None:
    """The parent's run folder (not its promoted.json: the copy must be its root's latest finished version).
    Entries the copy lacks are added: one restored on a fresh clone has no adapter yet."""
    target = root / parent_run.parent.name / parent_run.name
    target.mkdir(parents=True, exist_ok=True)
    for entry in parent_run.iterdir():
        if not (target / entry.name).exists():
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target / entry.name)


def build_key(model: str, edit: str, mode: str, spec: Path, cfg) -> str:
    """What a finished build measured: the model, the edit and mode, the edited spec's bytes, the parent spec's
    bytes and the whole resolved config (but where runs are kept)."""
    return result_key(
        bench="incremental",
        model=model,
        edit=edit,
        mode=mode,
        spec=file_sha256(spec),
        parent_spec=file_sha256(SPEC),
        config=measured_config(cfg),
    )


def save_state(state: BenchState, root: Path, parent_version: str | None) -> None:
    """Mirror every run folder under ``root`` but the parent's copies inside the builds' roots."""
    for ingest in sorted(root.glob("**/ingest")):
        run_dir = ingest.parent
        a_copy = run_dir.name == parent_version and run_dir.parent.parent != root / "parent"
        if ingest.is_dir() and not a_copy:
            state.save_run(run_dir)


def _shown(path: Path) -> str:
    """A run folder as results show it: relative to the repository where it lies inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)


def render(results: dict) -> str:
    def num(x, digits=2):
        return "n/a" if x is None else f"{x:.{digits}f}"

    def ci(c):
        return "" if not c else f" [{num(c[0])}, {num(c[1])}]"

    lines = ["# Incremental re-internalization vs a full re-run", ""]
    for model, m in results["models"].items():
        lines += [
            f"## `{model}`, `{m['config']}` (parent built in {m['parent_seconds']:.0f} s"
            f"{', resumed' if m.get('parent_resumed') else ''})",
            "",
            "| edit | incremental s | full s | time ratio | strict recovery, incremental | strict recovery, full | "
            "overlap | teacher replies unchanged | outcome |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for edit, e in m["edits"].items():
            inc, ful = e["incremental"], e["full"]
            goal = (
                ""
                if model != "embedded-0.5b"
                else (" (goal <= 0.3: " + ("met" if (e["time_ratio"] or 9) <= TIME_GOAL else "**missed**") + ")")
            )
            lines.append(
                f"| {edit} | {inc['wall_seconds']:.0f}{' (resumed)' if inc['resumed'] else ''} "
                f"| {ful['wall_seconds']:.0f}{' (resumed)' if ful['resumed'] else ''} | {num(e['time_ratio'])}{goal} "
                f"| {num(e['strict_recovery_incremental'])}{ci(e['strict_recovery_incremental_ci'])} "
                f"| {num(e['strict_recovery_full'])}{ci(e['strict_recovery_full_ci'])} "
                f"| {'yes' if e['intervals_overlap'] else 'n/a' if e['intervals_overlap'] is None else '**no**'} "
                f"| {num(inc['teacher_unchanged_share'])} | {inc['outcome'] or inc['plan']} |"
            )
            if "edited_fact" in e:
                f = e["edited_fact"]
                lines.append(
                    f"|  | edited fact: incremental {num(f['incremental'])}, full {num(f['full'])}"
                    f"{'' if f['counted'] else ' (not counted: the full re-run never states it)'} |||||||"
                )
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    parser.add_argument("--edits", default=",".join(EDITS), help="comma-separated: " + ", ".join(EDITS))
    parser.add_argument("--set", action="append", default=[], help="config override for every build")
    parser.add_argument("--root", default=str(ROOT / "runs" / "bench-incremental"), help="where the runs go")
    parser.add_argument("--out", default="incremental")
    parser.add_argument(
        "--save-state",
        action="store_true",
        help="only mirror the synthesized data of every run so far into bench/resume/ (for a fresh clone), then exit",
    )
    args = parser.parse_args()
    from schemas.config import load_config

    edits = [e.strip() for e in args.edits.split(",") if e.strip()]
    unknown = sorted(set(edits) - set(EDITS))
    if unknown:
        parser.error(f"unknown edit(s) {unknown}; choose from {sorted(EDITS)}")
    out = RESULTS / f"{args.out}.json"
    results = json.loads(out.read_text()) if out.is_file() else {"models": {}}
    root = Path(args.root) / args.model
    state = BenchState(f"{args.out}_{args.model.replace('/', '_')}", root)
    overrides = [f"model.name_or_path={args.model}", *args.set]
    parent_cfg = load_config(args.config, [*overrides, f"runs_dir={root / 'parent'}"])
    parent_key = result_key(
        bench="incremental-parent", model=args.model, spec=file_sha256(SPEC), config=measured_config(parent_cfg)
    )
    if args.save_state:
        parent = state.finished(parent_key)
        save_state(state, root, Path(parent["run_dir"]).name if parent else None)
        print(f"mirrored the runs under {root} into {state.folder}", flush=True)
        return
    restored = state.restore(others_into=root / "parent")
    if restored:
        print(f"restored {restored} files of synthesized data into {root}", flush=True)
    model = results["models"].setdefault(args.model, {"config": args.config, "edits": {}})
    builds = {}  # (edit, mode) -> (spec, config, key)
    for edit in edits:
        spec = edited_spec(edit, root / "specs")
        for mode in ("incremental", "full"):
            cfg = load_config(
                args.config,
                [
                    *overrides,
                    f"runs_dir={root / edit / mode}",
                    f"incremental.enabled={str(mode == 'incremental').lower()}",
                ],
            )
            builds[edit, mode] = spec, cfg, build_key(args.model, edit, mode, spec, cfg)
    pending = [b for b, (_, _, key) in builds.items() if not state.finished(key) and b[0] not in model["edits"]]
    if pending:
        print(f"== parent: {SPEC.name} on {args.model}", flush=True)
        resumed = (root / "parent").is_dir()  # stages of an earlier or restored run are reused: not its full cost
        parent_seconds, parent_run = build(SPEC, parent_cfg)
        if not state.finished(parent_key):  # the first build of the parent is its cost; a later one only resumes
            record = {"wall_seconds": round(parent_seconds, 1), "resumed": resumed, "run_dir": _shown(parent_run)}
            state.record(parent_key, record)
        state.save_run(parent_run)
    if state.finished(parent_key):
        model.setdefault("parent_seconds", state.finished(parent_key)["wall_seconds"])
        model.setdefault("parent_resumed", state.finished(parent_key).get("resumed", False))
    for edit in edits:
        if edit in model["edits"]:
            print(f"== {edit}: finished before, kept", flush=True)
            continue
        measured = {}
        for mode in ("incremental", "full"):
            spec, cfg, key = builds[edit, mode]
            if state.finished(key):
                print(f"== {edit}: {mode} build finished before, kept", flush=True)
                measured[mode] = state.finished(key)
                continue
            runs = root / edit / mode
            versions = runs / parent_run.parent.name
            resumed = versions.is_dir() and any(p.name != parent_run.name for p in versions.iterdir())
            _copy_parent(parent_run, runs)
            print(f"== {edit}: {mode} build", flush=True)
            seconds, run_dir = build(spec, cfg)
            measured[mode] = measure(run_dir, seconds, resumed) | {"run_dir": _shown(run_dir)}
            state.record(key, measured[mode])
            state.save_run(run_dir)
        model["edits"][edit] = compare(measured["incremental"], measured["full"], edit)
        e = model["edits"][edit]
        print(
            f"   time ratio {e['time_ratio']:.2f}; strict recovery {e['strict_recovery_incremental']} vs {e['strict_recovery_full']}"
        )
        RESULTS.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / f"{args.out}.md").write_text(render(results))
    print(f"wrote {out} and .md", flush=True)


if __name__ == "__main__":
    main()

"""Benchmark the README's main job: wall time and peak memory of a fresh end-to-end run.

Runs `genpi demo` (what scripts/demo.sh runs: `genpi internalize examples/prompts/library_desk.yaml --config
configs/default.yaml` on the embedded model, its inputs written by the 0.5B when that is installed; genpi/demo.py)
in a fresh runs folder (nothing reused), samples the RSS of the whole process tree (the flow, its
temporary Prefect server) every 0.2 s, and writes bench/results/main_job.json with the time,
the peak memory, per-stage times from the manifests and the run's headline numbers.
Targets (issue 3): under 10 minutes and under 6 GB on 2 cores.
Run: python bench/main_job.py [--no-prefect] [--out NAME] [-- extra genpi demo args, e.g. --model embedded-0.5b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil

from schemas.artifacts import SUMMARY_FILE
from schemas.summary import EvaluationSummary

ROOT = Path(__file__).resolve().parents[1]


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-prefect", action="store_true", help="run the stages without Prefect")
    parser.add_argument("--out", help="bench/results/<out>.json (default: main_job, or main_job_no_prefect)")
    parser.add_argument("extra", nargs="*", help="extra arguments for genpi demo")
    args = parser.parse_args()
    runs = Path(tempfile.mkdtemp(prefix="genpi-bench-"))
    genpi = Path(sys.executable).with_name("genpi")
    cmd = [
        str(genpi),
        "demo",
        "--runs-dir",
        str(runs),
        *(["--no-prefect"] if args.no_prefect else []),
        *args.extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log_path = runs / "main_job.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        watcher = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(watcher))
            time.sleep(0.2)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        print(log_path.read_text(errors="replace")[-4000:])
        sys.exit(f"main job failed with exit code {proc.returncode}; log: {log_path}")
    run_dir = next(runs.glob("*/*"))
    stages = {}
    for manifest in sorted(run_dir.glob("*/_manifest.json")):
        m = json.loads(manifest.read_text())
        stages[m["stage"]] = round(
            (datetime.fromisoformat(m["finished_at"]) - datetime.fromisoformat(m["started_at"])).total_seconds(), 1
        )
    summary = EvaluationSummary.load(run_dir / "evaluate" / SUMMARY_FILE)
    log_lines = log_path.read_text(errors="replace").splitlines()
    result = {
        "command": " ".join(["genpi", *cmd[1:]]),
        "cpu_count": os.cpu_count(),
        "wall_seconds": round(seconds, 1),
        "peak_rss_gb": round(peak / 1e9, 2),
        "targets": {"wall_seconds": 600, "peak_rss_gb": 6.0},
        "within_targets": seconds < 600 and peak / 1e9 < 6.0,
        "stage_seconds": stages,
        "headline": [line for line in log_lines if line.startswith(("strict success on", "WARNING:"))],
        "inputs": next((line for line in log_lines if line.startswith("genpi demo:")), None),
        "strict_success": {k: round(v.strict_success, 3) for k, v in summary.variants.items()},
        "task": {k: None if v.task is None else round(v.task, 3) for k, v in summary.variants.items()},
        "cut": {k: v.cut for k, v in summary.variants.items()},
        "compliance": {k: round(v.compliance, 3) for k, v in summary.variants.items()},
        "format": {k: round(v.format, 3) for k, v in summary.variants.items()},
        "facts": {k: None if v.facts is None else round(v.facts, 3) for k, v in summary.variants.items()},
        "recovery": summary.recovery,  # strict-success recovery
        "recovery_ci": summary.recovery_ci,
        "recovery_format": summary.recovery_format,
        "recovery_task": summary.recovery_task,
        "recovery_compliance": summary.recovery_compliance,
        "student_collapsed": bool(summary.collapse and summary.collapse.collapsed),
        "teacher_cut_share_ok": summary.teacher_cut_share_ok,
        "prefill_tokens_saved_per_request": summary.prefill_tokens_saved_per_request,
        "train": json.loads((run_dir / "train" / "metrics.json").read_text()),
    }
    print(json.dumps(result, indent=2))
    name = args.out or ("main_job_no_prefect" if args.no_prefect else "main_job")
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}; report kept at {run_dir / 'evaluate' / 'report.md'}")


if __name__ == "__main__":
    main()

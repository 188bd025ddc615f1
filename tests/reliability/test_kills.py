"""Kill -9 at random points of every stage: the re-run completes, reuses every finished stage, and its
tables hold exactly the rows of an uninterrupted run (none lost, none duplicated); no partial file is
ever taken as finished; a trainer never outlives the pipeline that started it.

Real processes throughout: the `genpi internalize` CLI on the embedded model, SIGKILL to the process
alone or to its whole process group (see kill_harness.py for how a kill is aimed at a stage).

The long chain is marked ``reliability`` (``scripts/test.sh -m reliability``); the default suite runs the
trainer-orphan check and the harness's own bookkeeping.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from tests.reliability import kill_harness as kh

RESUMABLE = ("conversations", "train")  # they checkpoint, so each kill there leaves less work: aim earlier


# ---- default suite ----------------------------------------------------------------------------------


def _train_data(folder: Path) -> tuple[Path, Path]:
    from genpi_core.prompt.pg_format import pg_question
    from genpi_core.store.tables import write_table
    from schemas.datasets import ExamplesSchema

    def rows(ids):
        out = []
        for i in ids:
            out.append(
                {
                    "example_id": f"c{i}:0",
                    "conversation_id": f"c{i}",
                    "objective": "sft",
                    "messages": json.dumps([{"role": "user", "content": f"Question {i}?"}]),
                    "target": f"Topic: t{i}\nAnswer: a{i}.",
                    "reason": "",
                    "weight": 1.0,
                }
            )
            out.append(
                {
                    "example_id": f"c{i}:pg",
                    "conversation_id": f"c{i}",
                    "objective": "pg",
                    "messages": json.dumps(pg_question(f"Question {i}?", "Hello!", f"Topic: t{i}")),
                    "target": "[user]\nReply as 'Topic: x' then 'Answer: y'.",
                    "reason": "",
                    "weight": 1.0,
                }
            )
        return pd.DataFrame(out)

    folder.mkdir(parents=True, exist_ok=True)
    write_table(rows(range(8)), ExamplesSchema, folder / "train.parquet")
    write_table(rows(range(8, 10)), ExamplesSchema, folder / "val.parquet")
    return folder / "train.parquet", folder / "val.parquet"


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*") if p.is_file()}


def test_trainer_dies_with_a_killed_pipeline(tmp_path, faults):
    """SIGKILL of the process that launched training (the pipeline alone, not its group): the trainer child
    must not live on and write into the stage folder that a re-run is about to train in again."""
    from genpi_core.train.job import TrainJob
    from schemas.config import LoraConfig, ModelConfig, TrainConfig

    train_path, val_path = _train_data(tmp_path / "data")
    out = tmp_path / "train"
    cfg = TrainConfig(epochs=50, batch_size=2, pg_per_step=1, checkpoint_every=1, lora=LoraConfig(rank=4, alpha=8))
    job = TrainJob(
        model=ModelConfig(device="cpu"), train=cfg, train_path=str(train_path), val_path=str(val_path), out_dir=str(out)
    )
    (tmp_path / "job.json").write_text(job.model_dump_json())
    parent_code = textwrap.dedent(f"""
        from pathlib import Path
        from genpi_core.train.job import TrainJob, launch
        job = TrainJob.model_validate_json(Path({str(tmp_path / "job.json")!r}).read_text())
        launch(job, Path(job.out_dir) / "_state")
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code],
        cwd=kh.ROOT,
        env=kh.env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        # kill once the trainer has written its first checkpoint: it is mid-training, not starting up
        while not list((out / "_state").glob("checkpoint-*")):
            assert parent.poll() is None, "the launcher exited before training started"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        trainers = [pid for pid, cmd in kh.group_members(parent.pid) if "genpi_core.train.job" in cmd]
        assert trainers, "no training child process found"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        time.sleep(2.0)
        before = _snapshot(out)
        time.sleep(3.0)
        alive = kh.group_members(parent.pid)
        assert alive == [], f"processes outlived the killed pipeline: {alive}"
        assert _snapshot(out) == before, "the stage folder changed after the pipeline was killed"
    finally:
        kh.kill_group(parent.pid)
        parent.wait()
    faults.add(
        "kill",
        "SIGKILL of the pipeline process alone (not its group) during training",
        "kill -9 of the process running train_job.launch after the trainer's first checkpoint",
        1,
        f"{len(trainers)} trainer process(es) died with it (PR_SET_PDEATHSIG); stage folder unchanged 2-5 s later",
    )


def test_table_comparison_counts_lost_and_duplicated_rows(tmp_path):
    """The chain's verdict rests on compare_tables: it must see a missing, a duplicated and an extra row."""
    from genpi_core.store.stage import Stage

    def run(folder: Path, ids: list[str]) -> Path:
        stage = Stage(folder, "inputs", {}, {})
        stage.begin()
        pd.DataFrame({"input_id": ids, "text": ids}).to_parquet(stage.dir / "inputs.parquet")
        stage.finish(["inputs.parquet"])
        return folder

    ref = run(tmp_path / "ref", ["a", "b", "c"])
    assert kh.compare_tables(ref, run(tmp_path / "same", ["a", "b", "c"])).rows_lost == 0
    diff = kh.compare_tables(ref, run(tmp_path / "bad", ["a", "a", "c", "d"]))
    assert diff.missing == {"inputs/inputs.parquet": 1}
    assert diff.duplicates == {"inputs/inputs.parquet": 1}
    assert diff.extra == {"inputs/inputs.parquet": 1}
    assert diff.rows_lost == 3
    assert kh.landed_in(tmp_path / "bad") == "before ingest"
    assert kh.verify_outputs(tmp_path / "bad") == []
    (tmp_path / "bad" / "inputs" / "inputs.parquet").write_bytes(b"PAR1 truncated")
    assert kh.verify_outputs(tmp_path / "bad") == ["inputs/inputs.parquet: differs from its manifest"]


# ---- the long chain ---------------------------------------------------------------------------------

PLAN = {"inputs": 3, "conversations": 4, "reasons": 3, "dataset": 3, "train": 4, "evaluate": 4}  # 21


def _delay(rng: random.Random, stage: str, seconds: float, n: int) -> float:
    share = rng.uniform(0.05, 0.75)
    return share * seconds / (n if stage in RESUMABLE else 1)


@pytest.mark.reliability
def test_kill_chain_every_stage(tmp_path, faults):
    seed = int(os.environ.get("GENPI_KILL_SEED", "8"))
    rng = random.Random(seed)
    config = tmp_path / "kills.yaml"
    config.write_text(kh.CONFIG_YAML)
    log = tmp_path / "pipeline.log"
    report: dict = {"seed": seed}

    # 1. the uninterrupted reference
    ref_runs = tmp_path / "ref"
    started = time.monotonic()
    rc = kh.finish(config, ref_runs, tmp_path / "reference.log")
    assert rc == 0, kh.tail(tmp_path / "reference.log")
    report["reference_s"] = round(time.monotonic() - started, 1)
    ref_dir = kh.run_dir_of(ref_runs)
    seconds = kh.stage_seconds(ref_dir)
    report["stage_seconds"] = seconds

    # 2. the kill chain
    runs = tmp_path / "killed"
    run_dir = kh.run_dir_of(runs)
    kills: list[kh.Kill] = []
    finished_after: dict[str, str] = {}
    index = 0
    started = time.monotonic()
    short = 0  # kills a stage could not take (a delay outlasted it and it finished): the next stage takes them
    for stage, planned in PLAN.items():
        want, attempts = planned + short, 0
        while sum(k.landed == stage for k in kills) < want and attempts < want + 3:
            if stage in kh.finished_at(run_dir):  # this stage is done and would only be reused now
                break
            mode = "pipeline" if index % 2 == 0 else "group"
            index, attempts = index + 1, attempts + 1
            kill = kh.kill_once(
                config, runs, run_dir, log, kh.Kill(stage, mode, _delay(rng, stage, seconds[stage], want))
            )
            kills.append(kill)
            # every stage finished before this attempt was reused, not redone
            for done, at in finished_after.items():
                assert kill.finished_before.get(done) == at, f"kill {len(kills)}: finished stage {done} was redone"
            finished_after = kh.finished_at(run_dir)
            for done, at in kill.finished_before.items():
                assert finished_after.get(done) == at, f"kill {len(kills)}: finished stage {done} changed"
            assert kill.orphans == [], (
                f"kill {len(kills)} in {kill.landed}: processes outlived the pipeline: {kill.orphans}"
            )
            assert kh.verify_outputs(run_dir) == [], f"kill {len(kills)}: {kh.verify_outputs(run_dir)}"
        short = max(0, want - sum(k.landed == stage for k in kills))
    report["chain_s"] = round(time.monotonic() - started, 1)

    # 3. the final re-run, unhindered
    rc = kh.finish(config, runs, log)
    assert rc == 0, kh.tail(log)
    final = kh.finished_at(run_dir)
    for done, at in finished_after.items():
        assert final.get(done) == at, f"final run: finished stage {done} was redone"
    assert set(final) == set(kh.finished_at(ref_dir)), (sorted(final), sorted(kh.finished_at(ref_dir)))
    assert kh.verify_outputs(run_dir) == []
    leftovers = kh.tmp_leftovers(run_dir)

    diff = kh.compare_tables(ref_dir, run_dir)
    landed = Counter(k.landed for k in kills)
    by_mode = Counter((k.landed, k.mode) for k in kills)
    report.update(
        kills=[vars(k) | {"finished_before": sorted(k.finished_before)} for k in kills],
        landed=dict(landed),
        rows_compared=diff.rows_compared,
        rows_lost=diff.rows_lost,
        missing=diff.missing,
        extra=diff.extra,
        duplicates=diff.duplicates,
        content_differs=diff.content_differs,
        tmp_leftovers=leftovers,
    )
    print(json.dumps(report, indent=2, default=str))
    (Path(os.environ.get("GENPI_KILL_REPORT", tmp_path / "kill_report.json"))).write_text(
        json.dumps(report, indent=2, default=str)
    )

    # recorded before the verdict, so a failed chain shows up in docs/reliability.md as a failed row
    differs = ", ".join(diff.content_differs) or "none"
    for stage in kh.KILL_STAGES:
        modes = {m: by_mode[(stage, m)] for m in ("pipeline", "group")}
        faults.add(
            "kill",
            f"SIGKILL during {stage}",
            f"kill -9 of `genpi internalize` (process alone {modes['pipeline']}x, whole group {modes['group']}x) "
            f"a seeded random delay after it entered {stage} (seed {seed})",
            landed[stage],
            f"re-run completed; finished stages reused (same finished_at); {diff.rows_compared} rows in "
            f"{len(kh.tables(run_dir))} tables vs the uninterrupted run: {diff.rows_lost} rows lost or duplicated; "
            f"no orphan process; tables whose text differs: {differs}",
        )
    elsewhere = {s: n for s, n in landed.items() if s not in kh.KILL_STAGES}
    if elsewhere:
        faults.add(
            "kill",
            "SIGKILL between stages or in ingest/promote",
            "a kill aimed at a stage whose delay outlasted it",
            sum(elsewhere.values()),
            f"landed: {elsewhere}; same checks as the rows above",
        )

    assert diff.absent_tables == []
    assert diff.rows_lost == 0, (diff.missing, diff.extra, diff.duplicates)
    assert len(kills) >= 20 and sum(n for s, n in landed.items() if s in kh.KILL_STAGES) >= 20, landed
    assert all(landed[s] >= 1 for s in kh.KILL_STAGES), f"stages never hit: {landed}"
    assert {m for _, m in by_mode} == {"pipeline", "group"}

"""Two runs of one prompt version that reach a stage at the same time (two triggers, two workers): the stage
lock makes them take turns, so the work runs once and the second run reuses it. Real processes."""

import multiprocessing
import time
from pathlib import Path


def _stage_in_process(run_dir: str, log: str, started) -> None:
    from genpi_core.pipeline import _run
    from genpi_core.store.stage import Stage

    stage = Stage(Path(run_dir), "train", {"x": 1}, {})

    def work(out_dir: Path) -> dict:
        with open(log, "a") as handle:
            handle.write("trained\n")
        time.sleep(1.0)  # long enough for the other process to arrive while this one works
        (out_dir / "adapter.bin").write_text("weights")
        return {"steps": 1}

    started.wait()
    out = _run(stage, {"adapter": "adapter.bin"}, work)
    with open(log, "a") as handle:
        handle.write(f"{'reused' if out.reused else 'done'}\n")


def test_concurrent_runs_of_one_stage_do_the_work_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    log = tmp_path / "log.txt"
    procs = [ctx.Process(target=_stage_in_process, args=(str(tmp_path / "run"), str(log), started)) for _ in range(2)]
    for p in procs:
        p.start()
    started.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(log.read_text().split()) == ["done", "reused", "trained"]

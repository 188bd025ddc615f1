"""What a benchmark commits so a fresh clone goes on (bench/carry.py), on small hand-made run folders (no model)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))  # the benchmarks import their sibling, as `genpi bench` runs them
carry = importlib.import_module("carry")


def _run(run: Path) -> Path:
    for folder in ("ingest", "inputs/_state", "replay", "train-joint-s0", "evaluate-joint-s0", "tasks-genpi_os"):
        (run / folder).mkdir(parents=True)
    (run / "ingest" / "prompt.json").write_text("prompt")
    (run / "inputs" / "_state" / "batch-0.json").write_text("checkpoint")
    (run / "replay" / "reply.json").write_text("{}")
    (run / "train-joint-s0" / "adapter.safetensors").write_text("weights")
    (run / "evaluate-joint-s0" / "results.parquet").write_text("scores")
    (run / "tasks-genpi_os" / "episodes.parquet").write_text("episodes")
    return run


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_fresh_clone_gets_back_finished_units_and_synthesized_data_but_no_weights(tmp_path):
    runs = tmp_path / "runs"
    _run(runs / "library_desk" / "abc123")
    state = carry.BenchState("quality", runs, root=tmp_path / "resume")
    state.save_all()
    state.keep("key-1", {"run_dir": str(runs / "library_desk" / "abc123"), "scores": {"strict": [1.0]}})

    fresh = carry.BenchState("quality", tmp_path / "fresh-runs", root=tmp_path / "resume")
    assert fresh.restore() == 3
    assert _files(tmp_path / "fresh-runs") == [
        "library_desk/abc123/ingest/prompt.json",
        "library_desk/abc123/inputs/_state/batch-0.json",
        "library_desk/abc123/replay/reply.json",
    ]
    assert fresh.finished("key-1")["scores"]["strict"] == [1.0]
    assert fresh.finished("key-2") is None
    reply = tmp_path / "fresh-runs" / "library_desk" / "abc123" / "replay" / "reply.json"
    reply.write_text('{"newer": 1}')
    assert fresh.restore() == 0  # what is already in runs/ wins
    assert reply.read_text() == '{"newer": 1}'


def test_a_benchmark_in_its_own_runs_root_is_mirrored_and_others_data_is_shared(tmp_path):
    runs = tmp_path / "runs"
    _run(runs / "real-env-shell" / "os-agent" / "v1")  # real_env keeps each kind in a runs root of its own
    carry.BenchState("real_env", runs, root=tmp_path / "resume").save_all("*/*/*/ingest")
    quality = carry.BenchState("quality", runs, root=tmp_path / "resume")
    _run(runs / "library_desk" / "abc123")
    quality.save_run(runs / "library_desk" / "abc123")
    (runs / "library_desk" / "abc123" / "replay" / "reply.json").write_text("quality's")

    # a third benchmark on the same prompts (on_policy) starts from both mirrors; its own folder would win
    fresh = carry.BenchState("on_policy", tmp_path / "fresh", root=tmp_path / "resume")
    assert fresh.restore() == 6
    assert "real-env-shell/os-agent/v1/replay/reply.json" in _files(tmp_path / "fresh")
    assert not any(f.startswith(("train", "evaluate", "tasks")) for f in _files(tmp_path / "resume"))


def test_the_clock_adds_sessions_of_the_same_benchmark_and_restarts_for_another(tmp_path):
    state = carry.BenchState("quality", tmp_path / "runs", root=tmp_path / "resume")
    first = state.clock({"model": "m"})
    first.total = 100.0
    first.save()
    again = state.clock({"model": "m"})
    assert again.sessions == 2 and again.seconds() >= 100.0
    assert state.clock_reading().seconds() >= 100.0
    other = state.clock({"model": "other"})
    assert other.sessions == 1 and other.seconds() < 100.0


def test_a_result_key_changes_with_what_was_measured_and_not_with_where_runs_live():
    from schemas.config import load_config

    config = str(ROOT / "configs" / "genpi.yaml")
    here = carry.measured_config(load_config(config, ["runs_dir=/here"]))
    there = carry.measured_config(load_config(config, ["runs_dir=/there"]))
    longer = carry.measured_config(load_config(config, ["train.epochs=9"]))
    assert carry.result_key(config=here) == carry.result_key(config=there)
    assert carry.result_key(config=here) != carry.result_key(config=longer)
    assert carry.result_key(config=here, spec="a") != carry.result_key(config=here, spec="b")


def test_pure_logic_a_deadline_skips_only_what_would_not_fit():
    from datetime import datetime

    now = datetime(2026, 12, 2, 23, 0)
    at_midnight = carry.Deadline.parse("00:00", now=now)
    assert at_midnight.at == datetime(2026, 12, 3, 0, 0)  # the next midnight, not this morning's
    assert at_midnight.allows(1800, now=now) and not at_midnight.allows(3500, now=now)  # 10% to spare
    assert at_midnight.allows(None, now=now)  # nothing like it finished yet: start it
    assert carry.Deadline.parse("+90m", now=now).at == datetime(2026, 12, 3, 0, 30)
    assert carry.Deadline.parse("2026-12-03T01:00", now=now).seconds_left(now) == 7200
    assert carry.Deadline.parse(None).allows(10**9)
    assert "needs about 58 min, 60 min left" in at_midnight.why_not("joint-s1", 3500, now=now)
    with pytest.raises(ValueError, match="--stop-by: 'soon'"):
        carry.Deadline.parse("soon")

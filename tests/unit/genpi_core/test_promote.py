"""The promotion gate: an adapter is marked promoted for its prompt only when it clears the bar; the pointer is
replaced atomically by a later passing version; a re-run decides nothing again; `genpi adapters` lists it all."""

import json
import subprocess
import sys
from pathlib import Path

from genpi_core.pipeline import promote_stage
from genpi_core.promote import decide, list_adapters, promoted
from genpi_core.store.stage import Stage
from schemas.config import PipelineConfig, PromoteConfig
from schemas.stages import IngestOutput, StageOutput
from schemas.summary import EvaluationSummary

GENPI = str(Path(sys.executable).with_name("genpi"))


def _variant(compliance: float) -> dict:
    """One variant's metrics; the gate reads strict success (via recovery) and compliance, both set to the
    value given; the rest just makes a valid summary."""
    return {
        "n": 10,
        "strict_success": compliance,
        "task": None,
        "task_n": 0,
        "cut": 0,
        "distinct_share": 1.0,
        "example_similarity": None,
        "compliance": compliance,
        "all_checks": compliance,
        "format": compliance,
        "facts": None,
        "per_check": {},
        "agreement": {"exact": 0.0, "normalized": 0.0, "rouge_l": 0.0},
        "mean_prompt_tokens": 30.0,
        "mean_latency_s": 0.1,
    }


def _summary(student, teacher=0.8, base=0.2) -> EvaluationSummary:
    rec = None if student is None or teacher == base else (student - base) / (teacher - base)
    return EvaluationSummary.model_validate(
        {
            "variants": {"base": _variant(base), "teacher": _variant(teacher), "student": _variant(student)},
            "bootstrap": {"resamples": 0, "seed": 0, "level": 0.95, "recovery_undefined": 0},
            "recovery": rec,
            "recovery_strict": rec,
            "uninformative_checks": [],
        }
    )


def test_decide_needs_every_bar():
    bar = PromoteConfig(min_recovery=0.9)
    assert decide(_summary(0.8), bar)[0] and not decide(_summary(0.5), bar)[0]
    passes, reasons = decide(_summary(0.5, teacher=0.5, base=0.5), bar)  # recovery undefined
    assert not passes and "undefined" in reasons[0]
    both = PromoteConfig(min_recovery=0.9, min_student_compliance=0.9)
    assert not decide(_summary(0.8), both)[0]
    assert decide(_summary(0.1), PromoteConfig(min_recovery=None))[0]  # no bar: always promoted


def test_the_gate_reads_strict_success_recovery_not_compliance():
    """A student with partial credit (high compliance recovery) but few fully correct replies is not promoted."""
    summary = _summary(0.79).model_copy(update={"recovery": 0.1, "recovery_strict": 0.1, "recovery_compliance": 0.98})
    passes, reasons = decide(summary, PromoteConfig(min_recovery=0.9))
    assert not passes and reasons == ["strict-success recovery 0.100 < 0.9"]
    assert decide(summary, PromoteConfig(min_recovery=None, min_student_compliance=0.7))[0]  # compliance: 0.79


def _fake_run(runs: Path, version: str, student: float):
    run_dir = runs / "desk" / version[:12]
    for stage in ("ingest", "evaluate", "train/adapter"):
        (run_dir / stage).mkdir(parents=True, exist_ok=True)
    (run_dir / "ingest" / "_manifest.json").write_text("{}")
    (run_dir / "ingest" / "prompt.json").write_text("{}")
    (run_dir / "evaluate" / "summary.json").write_text(_summary(student).model_dump_json())
    (run_dir / "evaluate" / "_manifest.json").write_text(json.dumps({"finished_at": f"2026-01-0{len(version) % 9}"}))
    train_stage = Stage(run_dir, "train", {}, {})  # a real finished stage: its manifest records the adapter
    train_stage.begin()
    (run_dir / "train" / "adapter").mkdir()
    (run_dir / "train" / "adapter" / "adapter_config.json").write_text("{}")
    (run_dir / "train" / "adapter" / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    train_stage.finish(["adapter"])
    ingested = IngestOutput(
        name="desk",
        version=version,
        prompt_tokens=1,
        run_dir=str(run_dir),
        prompt_path=str(run_dir / "ingest" / "prompt.json"),
    )
    evaluated = StageOutput(
        stage="evaluate", dir=str(run_dir / "evaluate"), files={"summary": str(run_dir / "evaluate" / "summary.json")}
    )
    train = StageOutput(
        stage="train", dir=str(run_dir / "train"), files={"adapter": str(run_dir / "train" / "adapter")}
    )
    return ingested, evaluated, train


def test_gate_marks_only_passing_versions_and_reruns_do_nothing(tmp_path):
    cfg = PipelineConfig(runs_dir=str(tmp_path))
    good = _fake_run(tmp_path, "a" * 64, student=0.79)  # recovery 0.98
    bad = _fake_run(tmp_path, "b" * 64, student=0.30)  # recovery 0.17
    out = promote_stage(*good, cfg.promote)
    assert out.rows["promoted"] == 1 and not out.reused
    assert promoted(tmp_path, "desk")["version12"] == "a" * 12
    out = promote_stage(*bad, cfg.promote)
    assert out.rows["promoted"] == 0
    assert promoted(tmp_path, "desk")["version12"] == "a" * 12  # a failing version never takes the pointer
    decision = json.loads((tmp_path / "desk" / ("b" * 12) / "promote" / "decision.json").read_text())
    assert not decision["promoted"] and "strict-success recovery 0.167 < 0.9" in decision["reasons"]
    pointer_before = (tmp_path / "desk" / "promoted.json").read_text()
    assert promote_stage(*good, cfg.promote).reused  # a re-run of a finished version decides nothing again
    assert (tmp_path / "desk" / "promoted.json").read_text() == pointer_before

    rows = {r.version12: r for r in list_adapters(tmp_path)}
    assert rows["a" * 12].promoted and rows["a" * 12].gate == "passed"
    assert not rows["b" * 12].promoted and rows["b" * 12].gate == "failed"
    out = subprocess.run([GENPI, "adapters", "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    starred = [line for line in out.stdout.splitlines() if line.startswith("*")]
    assert len(starred) == 1 and "a" * 12 in starred[0] and "passed" in starred[0]

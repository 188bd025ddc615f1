"""The README's main job (scripts/demo.sh, measured by bench/main_job.py): which model, and who writes the inputs.

Why one place: the demo's inputs depend on what is installed. The embedded 135M writes poor pseudo inputs, so
with it alone they come from the spec's hand-written pool; once the 0.5B is fetched it writes them (the paper
pairs a bigger generator with a smaller base), and the benchmark that measures the demo must choose the same.
"""

from __future__ import annotations

from pathlib import Path

from genpi_core.generation.models import EMBEDDED_05B, NAMED_MODELS

ROOT = Path(__file__).resolve().parents[1]
DEMO_SPEC = ROOT / "examples" / "prompts" / "library_desk.yaml"
DEMO_CONFIG = ROOT / "configs" / "default.yaml"
DEMO_MODELS = NAMED_MODELS  # embedded (the default) and embedded-0.5b
GENERATOR = EMBEDDED_05B
FETCH_GENERATOR = "GENPI_MODELS=embedded-0.5b bash scripts/setup.sh"


def demo_overrides(model: str, generator_installed: bool) -> tuple[list[str], str]:
    """The demo's config overrides for ``model``, and one line saying where its inputs come from."""
    if model not in DEMO_MODELS:
        raise ValueError(f"the demo runs on {' or '.join(DEMO_MODELS)}, not {model!r}")
    overrides = [f"model.name_or_path={model}"]
    if not generator_installed:
        return overrides, (
            "the inputs come from the spec's hand-written pool, because the embedded 135M writes poor pseudo "
            "inputs (about 1 usable in 16). For generated ones, fetch Qwen2.5-Coder-0.5B once "
            f"({FETCH_GENERATOR}: ~0.5 GB download, ~3.5 GB disk) and run the demo again."
        )
    overrides.append("synth.inputs.source=both")  # the spec's pool tops up what survives the filters
    if model != GENERATOR:
        overrides.append(f"synth.generator.model.name_or_path={GENERATOR}")
    return (
        overrides,
        f"{model} as base and teacher; pseudo inputs written by {GENERATOR}, topped up from the spec's pool",
    )

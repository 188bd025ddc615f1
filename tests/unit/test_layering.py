"""genpi_core and schemas must stay usable without Prefect (scripts, notebooks, accelerate launch)."""

import subprocess
import sys

import pytest

CORE_MODULES = [
    "schemas.spec", "schemas.config", "schemas.datasets",
    "genpi_core.generation.models", "genpi_core.prompt.views", "genpi_core.prompt.checks", "genpi_core.store.stage", "genpi_core.store.tables",
    "genpi_core.ingest", "genpi_core.synth.inputs", "genpi_core.dataset", "genpi_core.train.recipe", "genpi_core.evaluate.run",
    "genpi_core.evaluate.agreement", "genpi_core.evaluate.bootstrap", "genpi_core.evaluate.leakage", "genpi_core.evaluate.judge", "genpi_core.evaluate.multiturn",
    "genpi_core.evaluate.compare",
    "genpi_core.pipeline", "genpi_core.generation.base", "genpi_core.generation.transformers_backend",
    "genpi_core.generation.openai_backend", "genpi_core.watch", "genpi_core.promote",
]


@pytest.mark.parametrize("package", ["genpi_core", "schemas"])
def test_core_and_schemas_never_import_prefect(package):
    modules = [m for m in CORE_MODULES if m.startswith(package)]
    code = f"import sys, {', '.join(modules)}; bad = [m for m in sys.modules if m.split('.')[0] == 'prefect']; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_schemas_import_nothing_of_ours():
    code = ("import sys, schemas.spec, schemas.config, schemas.datasets; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('genpi_core', 'tasks', 'flows')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)

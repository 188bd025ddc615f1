"""genpi_core and schemas must stay usable without Prefect (scripts, notebooks, accelerate launch)."""

import subprocess
import sys

import pytest

CORE_MODULES = [
    "schemas.spec", "schemas.config", "schemas.datasets",
    "genpi_core.models", "genpi_core.chat", "genpi_core.checks", "genpi_core.store", "genpi_core.tables",
    "genpi_core.ingest", "genpi_core.synth", "genpi_core.dataset", "genpi_core.finetune", "genpi_core.evaluate",
    "genpi_core.agreement", "genpi_core.bootstrap", "genpi_core.leakage", "genpi_core.judge", "genpi_core.multiturn",
    "genpi_core.compare",
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

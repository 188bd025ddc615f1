"""One finished internalize run for the integration tests: the real Prefect flow against a real (temporary)
Prefect API server, on the real embedded model with configs/tiny.yaml (about 3-4 min on 2 cores). Package scope:
the flow tests and the Python API tests share it."""

from pathlib import Path

import pytest

from schemas.config import load_config
from tests.conftest import EXAMPLE_SPEC, TINY_CONFIG


@pytest.fixture(scope="package")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="package")
def finished_run(prefect_server, embedded_model_dir, tmp_path_factory):
    from flows.internalize import internalize_pipeline

    runs = tmp_path_factory.mktemp("runs")
    cfg = load_config(TINY_CONFIG, [f"runs_dir={runs}"])
    state = internalize_pipeline(str(EXAMPLE_SPEC), cfg, return_state=True)
    assert state.is_completed(), state
    return cfg, Path(state.result().dir).parent, state

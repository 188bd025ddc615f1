"""The Prefect service under faults, for real: a worker killed in the middle of a REST-triggered run, and the
Prefect server restarted in the middle of another. `genpi server up` on the damaged service starts only what
died; the run triggered again (or the one that lived through the restart) completes, and every stage that had
finished before the fault is reused, not recomputed.

Its own service (not the session one of tests/service/), since it kills parts of it.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from genpi.api_client import FINAL_STATES
from genpi.service import _wait_gone
from tests.conftest import EXAMPLE_SPEC
from tests.reliability import kill_harness as kh
from tests.reliability.test_process_hygiene import TRAINER, descendants, wait_gone
from tests.service.conftest import running_service
from tests.service.test_service import SMOKE_CONFIG

pytestmark = [pytest.mark.reliability, pytest.mark.server]  # not `service`: `-m service` is the service module


@pytest.fixture(scope="module")
def own_service(tmp_path_factory, embedded_model_dir):
    with running_service(tmp_path_factory) as svc:
        yield svc


def _state(service) -> dict:
    return json.loads((service.home / "genpi-service.json").read_text())


def _trigger(service, overrides: list[str]) -> str:
    from schemas.config import load_config

    cfg = load_config(SMOKE_CONFIG, [f"runs_dir={service.runs}", *overrides])
    with service.api() as api:
        deployment = api.deployment("genpi-internalize/internalize")
        run = api.create_flow_run(
            deployment["id"], {"spec_path": str(EXAMPLE_SPEC), "config": cfg.model_dump(mode="json")}
        )
    return run["id"]


def _wait_training(service, flow_run_id: str, timeout_s: float = 1200) -> dict:
    """Until a trainer runs under the worker (the run is in its train stage); returns the worker's tree."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tree = descendants(_state(service)["worker_pid"])
        if any(TRAINER in cmd for _, cmd in tree.values()):
            return tree
        with service.api() as api:
            run = api.flow_run(flow_run_id)
        assert run["state_type"] not in FINAL_STATES, run["state"]
        time.sleep(1)
    raise TimeoutError("the run never reached training")


def _up(service) -> str:
    out = service.genpi("server", "up", "--home", str(service.home), timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _finish(service, flow_run_id: str, timeout_s: float = 1800) -> dict:
    with service.api() as api:
        return api.wait(flow_run_id, timeout_s=timeout_s, poll_s=2)


def _run_dir(service):
    return kh.run_dir_of(service.runs)


def test_worker_killed_mid_run_then_server_restarted_mid_run(own_service, faults):
    service = own_service
    # 1. the worker (and the flow-run process it started, and that one's trainer) SIGKILLed during training
    first = _trigger(service, [])
    tree = _wait_training(service, first)
    time.sleep(3)
    finished_before = kh.finished_at(_run_dir(service))
    worker = _state(service)["worker_pid"]
    tree[worker] = ("", "prefect worker")
    os.killpg(worker, signal.SIGKILL)
    left = wait_gone(tree, 20)
    assert left == [], left
    assert "train" not in finished_before and "dataset" in finished_before
    repaired = _up(service)
    assert "the worker was gone" in repaired and "server was gone" not in repaired
    with service.api() as api:
        orphan = api.flow_run(first)
    again = _trigger(service, [])
    final = _finish(service, again)
    assert final["state_type"] == "COMPLETED", json.dumps(final["state"], indent=2)
    after = kh.finished_at(_run_dir(service))
    assert {s: after[s] for s in finished_before} == finished_before  # finished stages reused, not recomputed
    assert {"train", "evaluate", "promote"} <= set(after)
    faults.add(
        "kill",
        "worker killed mid-run (Prefect service)",
        "REST-triggered `genpi-internalize` run on `genpi server up`; kill -9 of the worker's process group "
        "(worker, flow-run process, trainer) during training; `genpi server up` again (starts only a worker); "
        "the run triggered again",
        1,
        f"0 processes left; re-triggered run Completed; {len(finished_before)} finished stages reused "
        f"(same finished_at); the killed run stays '{orphan['state_name']}' in Prefect",
    )

    # 2. the Prefect server stopped and started again on the same address while a run trains
    second = _trigger(service, ["train.seed=1"])  # a new training key: train and what follows run again
    _wait_training(service, second)
    upstream = kh.STAGES[: kh.STAGES.index("train")]
    finished_before = {s: t for s, t in kh.finished_at(_run_dir(service)).items() if s in upstream}
    server = _state(service)["server_pid"]
    os.killpg(server, signal.SIGTERM)
    assert _wait_gone(server, 30), "the server did not stop on SIGTERM"
    time.sleep(5)
    restarted = _up(service)
    assert "server was gone" in restarted and "worker was gone" not in restarted
    final = _finish(service, second)
    outcome = final["state_name"]
    if final["state_type"] != "COMPLETED":
        final = _finish(service, _trigger(service, ["train.seed=1"]))
    assert final["state_type"] == "COMPLETED", json.dumps(final["state"], indent=2)
    after = kh.finished_at(_run_dir(service))
    assert {s: after[s] for s in finished_before} == finished_before
    faults.add(
        "server",
        "Prefect server restarted mid-run",
        "SIGTERM of `prefect server start` (the service's) while a REST-triggered run trains; 5 s down; "
        "`genpi server up` again (starts only the server, same port and database)",
        1,
        f"the run in flight ended '{outcome}'"
        + ("" if outcome == "Completed" else "; triggered again, it Completed")
        + f"; {len(finished_before)} stages finished before the restart reused",
    )

"""Load on the real service: 20 REST triggers at once for 5 distinct prompt versions (4 each), on `genpi server up`
with configs/smoke.yaml, trainers at OMP_NUM_THREADS=1.

Checked: every run completes (none lost); each version trains exactly once (one "train done" per version, three
"train reused"); the training and generation limits hold (the stage intervals of one tag never overlap) and so
does the pool's run limit (RUNNING flow runs sampled throughout); and while the worker is busy, the p95 latency of
`GET /api/flow_runs/{id}` and of `POST /api/deployments/{id}/create_flow_run` over 200 requests (goal: < 1 s).
The probe's created runs are scheduled a year ahead, so they measure the endpoint without adding work, and are
deleted afterwards.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from tests.conftest import EXAMPLE_SPEC
from tests.reliability import kill_harness as kh
from tests.service.conftest import running_service
from tests.service.test_service import SMOKE_CONFIG, _stage_log_lines

pytestmark = [pytest.mark.reliability, pytest.mark.server]  # not `service`: `-m service` is the service module

VERSIONS = 5
TRIGGERS_PER_VERSION = 4
PROBES = 200
P95_GOAL_S = 1.0
RUN_LIMIT = 4  # genpi server up's default
GENERATION_STAGES = ("inputs", "conversations", "reasons", "evaluate")


@pytest.fixture(scope="module")
def loaded_service(tmp_path_factory, embedded_model_dir):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")  # the service's processes inherit it: the trainer and generation
        with running_service(tmp_path_factory) as svc:
            yield svc


def _running(api) -> int:
    """Flow runs RUNNING right now."""
    return api.request("POST", "/flow_runs/count", json={"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}})


def _versions(prompts: Path) -> list[Path]:
    """Five copies of the example spec, each with one line changed in its instruction turn: five versions."""
    spec = yaml.safe_load(EXAMPLE_SPEC.read_text())
    paths = []
    for k in range(VERSIONS):
        edited = json.loads(json.dumps(spec))
        edited["prompt"]["dialogue"][0]["user"] += f"\n- Notice board edition: {k + 1}."
        path = prompts / f"library_desk_v{k + 1}.yaml"
        path.write_text(yaml.safe_dump(edited, sort_keys=False))
        paths.append(path)
    return paths


def _intervals(run_dirs: list[Path], stages: tuple[str, ...]) -> list[tuple[datetime, datetime, str]]:
    found = []
    for run_dir in run_dirs:
        for stage, manifest in kh.manifests(run_dir).items():
            if stage in stages:
                found.append(
                    (
                        datetime.fromisoformat(manifest["started_at"]),
                        datetime.fromisoformat(manifest["finished_at"]),
                        f"{run_dir.name}/{stage}",
                    )
                )
    return sorted(found)


def _overlaps(intervals) -> list[str]:
    return [f"{a[2]} and {b[2]}" for a, b in zip(intervals, intervals[1:]) if b[0] < a[1]]


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def test_twenty_triggers_for_five_versions(loaded_service, faults):
    service = loaded_service
    from schemas.config import load_config

    cfg = load_config(SMOKE_CONFIG, [f"runs_dir={service.runs}"]).model_dump(mode="json")
    specs = _versions(service.prompts)
    params = [{"spec_path": str(p), "config": cfg} for p in specs for _ in range(TRIGGERS_PER_VERSION)]
    random.Random(0).shuffle(params)
    with service.api() as api:
        deployment = api.deployment("genpi-internalize/internalize")["id"]
    started = time.monotonic()

    def trigger(parameters: dict) -> tuple[dict, int]:
        with service.api() as api:  # genpi's client, as `genpi run` sends it: jittered retries on 503
            return api.create_flow_run(deployment, parameters), api.retried

    with ThreadPoolExecutor(max_workers=len(params)) as pool:  # all at once
        created = list(pool.map(trigger, params))
    burst_s = time.monotonic() - started
    ids = [r["id"] for r, _ in created]
    burst_retries = sum(n for _, n in created)
    assert len(set(ids)) == len(params)  # idempotency keys: a retried create never made a second run

    # probe the API while the worker is busy
    rng = random.Random(1)
    get_s, post_s, probe_ids, running_max = [], [], [], 0
    far = (datetime.now(timezone.utc) + timedelta(days=365)).isoformat()
    with service.api() as api:
        retried_before = api.retried
        for i in range(PROBES):
            t = time.perf_counter()
            if i % 2 == 0:
                api.flow_run(rng.choice(ids))
                get_s.append(time.perf_counter() - t)
            else:
                created = api.request(
                    "POST",
                    f"/deployments/{deployment}/create_flow_run",
                    json={
                        "parameters": params[0],
                        "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": far}},
                        "tags": ["genpi-load-probe"],
                    },
                )
                post_s.append(time.perf_counter() - t)
                probe_ids.append(created["id"])
            running_max = max(running_max, _running(api))
            time.sleep(0.5)
        probe_retries = api.retried - retried_before
        busy = running_max  # the most runs RUNNING seen while probing
        for probe in probe_ids:
            api.request("DELETE", f"/flow_runs/{probe}")

        finals = {}
        for run_id in ids:
            finals[run_id] = api.wait(run_id, timeout_s=3600, poll_s=3)
            running_max = max(running_max, _running(api))
        wall_s = time.monotonic() - started
        train_lines = {run_id: _stage_log_lines(api, run_id, "train") for run_id in ids}

    states = [f["state_type"] for f in finals.values()]
    assert states.count("COMPLETED") == len(ids), {i: f["state"] for i, f in finals.items()}
    assert busy > 0, "the probes ran while runs were in flight"
    by_version: dict[str, list[str]] = {}
    for run_id, final in finals.items():
        by_version.setdefault(final["name"], []).append(run_id)
    assert len(by_version) == VERSIONS, sorted(by_version)
    for name, run_ids in by_version.items():
        done = sum(any(m.startswith("train done") for m in train_lines[r]) for r in run_ids)
        reused = sum(any(m.startswith("train reused") for m in train_lines[r]) for r in run_ids)
        assert (done, reused) == (1, TRIGGERS_PER_VERSION - 1), (name, done, reused)
    run_dirs = [p for p in (service.runs / "library-desk").iterdir() if p.is_dir()]
    assert len(run_dirs) == VERSIONS
    assert _overlaps(_intervals(run_dirs, ("train",))) == []
    assert _overlaps(_intervals(run_dirs, GENERATION_STAGES)) == []
    assert running_max <= RUN_LIMIT, running_max
    p95_get, p95_post = _p95(get_s), _p95(post_s)
    summary = (
        f"the 20 creates took {burst_s:.1f} s and {burst_retries} retries of HTTP 503 (SQLite 'database is "
        f"locked'); 20 of 20 Completed in {wall_s:.0f} s; each version trained once (1 done + 3 reused); no two train or "
        f"generation stages overlapped; at most {running_max} runs RUNNING (limit {RUN_LIMIT}); p95 "
        f"GET flow_run {p95_get * 1000:.0f} ms, POST create_flow_run {p95_post * 1000:.0f} ms "
        f"(goal < {P95_GOAL_S * 1000:.0f} ms; max {max(get_s) * 1000:.0f} / {max(post_s) * 1000:.0f} ms; "
        f"{probe_retries} probe retries)"
    )
    print(summary)
    assert p95_get < P95_GOAL_S and p95_post < P95_GOAL_S, summary
    faults.add(
        "concurrency",
        "20 REST triggers at once for 5 prompt versions",
        f"real `genpi server up` (pool run limit {RUN_LIMIT}, tag limits 1/1), configs/smoke.yaml, "
        f"OMP_NUM_THREADS=1; {PROBES} API probes while busy",
        len(ids),
        summary,
    )

"""genpi as a service, for real on loopback: `genpi server up` (server, pool, limits, deployments, worker, basic
auth), two REST-triggered tiny internalize runs of one version at once (both Completed, one trains), a later
trigger of the same version that trains nothing, and a changed prompt file whose watcher event starts a run that completes.

Timings go to stdout (run with -s to see them) and to <runs>/service-timings.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import EXAMPLE_SPEC, ROOT, TINY_CONFIG
from tests.service.conftest import GENPI

pytestmark = [pytest.mark.server, pytest.mark.service]  # ~2.5 min idle (much longer under load): three real runs

STAGES = ["ingest", "inputs", "conversations", "dataset", "train", "evaluate", "promote"]  # no reasons in smoke.yaml
DEPLOYMENTS = {"internalize", "evaluate", "benchmark", "watch", "reinternalize-nightly"}
# configs/smoke.yaml: tiny.yaml cut further (6 inputs, 1 turn, no reasons, 2 held-out inputs), so the module's two
# real runs stay within minutes on 2 shared cores; the watcher's run gets the same settings as --set overrides
SMOKE_CONFIG = ROOT / "configs" / "smoke.yaml"
FAST = [
    "synth.inputs.max_inputs=6",
    "synth.conversations.max_turns=1",
    "synth.reasons.enabled=false",
    "train.pg_reasons=false",
    "evaluate.max_examples=2",
    "evaluate.bootstrap_resamples=0",
    "evaluate.leakage.enabled=false",
    "evaluate.multi_turn.enabled=false",
]
TIMINGS: dict[str, float] = {}


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _record(runs: Path, **values: float) -> None:
    TIMINGS.update(values)
    print(" ".join(f"{k}={v:.1f}s" for k, v in values.items()))
    (runs / "service-timings.json").write_text(json.dumps(TIMINGS, indent=2))


def _manifests(run_dir: Path) -> dict[str, str]:
    return {s: (run_dir / s / "_manifest.json").read_text() for s in STAGES}


def test_requests_without_the_auth_string_are_refused(service):
    url = service.api_url
    assert httpx.get(f"{url}/health").status_code == 200  # probes stay open
    assert httpx.post(f"{url}/deployments/filter", json={}).status_code == 401
    assert httpx.post(f"{url}/deployments/filter", json={}, auth=("genpi", "wrong")).status_code == 401
    user, password = service.auth.split(":", 1)
    assert httpx.post(f"{url}/deployments/filter", json={}, auth=(user, password)).status_code == 200


def test_server_up_creates_pool_limits_deployments_and_trigger(service):
    print(f"genpi server up: {service.up_s:.1f} s")
    _record(service.runs, server_up_s=service.up_s)
    status = service.genpi("server", "status", "--home", str(service.home), "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    info = json.loads(status.stdout)
    assert info["running"] and info["worker_alive"] and info["workers_online"] >= 1 and info["auth"]
    assert DEPLOYMENTS <= set(info["deployments"])
    with service.api() as api:
        limits = api.request("POST", "/v2/concurrency_limits/filter", json={})
        assert {(c["name"], c["limit"]) for c in limits} >= {("tag:genpi-training", 1), ("tag:genpi-generation", 1)}
        deployment = api.deployment("genpi-internalize/internalize")
        # typed parameters: the UI's run form is built from this schema, one field group per config section
        schema = deployment["parameter_openapi_schema"]
        assert set(schema["properties"]) == {"spec_path", "config"}
        definitions = schema.get("definitions") or schema.get("$defs")
        assert {"PipelineConfig", "TrainConfig", "PromoteConfig"} <= set(definitions)
        automations = api.request("POST", "/automations/filter", json={})
        triggers = [a for a in automations if "genpi.prompt.changed" in json.dumps(a["trigger"])]
        assert triggers and triggers[0]["actions"][0]["deployment_id"] == deployment["id"]


@pytest.fixture(scope="module")
def rest_run(service):
    """The curl of docs/service.md, in Python: create_flow_run on the internalize deployment, poll until it ends.

    Two runs of the same version are triggered back to back, as two systems reacting to one change would: both
    must complete, and only one may train (tag concurrency limits plus the stage lock)."""
    from schemas.config import load_config

    cfg = load_config(SMOKE_CONFIG, [f"runs_dir={service.runs}"])
    parameters = {"spec_path": str(EXAMPLE_SPEC), "config": cfg.model_dump(mode="json")}
    with service.api() as api:
        deployment = api.deployment("genpi-internalize/internalize")
        started = time.time()
        run = api.create_flow_run(deployment["id"], parameters)
        twin = api.create_flow_run(deployment["id"], parameters)
        final = api.wait(run["id"], timeout_s=1800, poll_s=1)
        ended = time.time()
        twin_final = api.wait(twin["id"], timeout_s=1800, poll_s=1)
        twin_ended = time.time()
    assert final["state_type"] == "COMPLETED", json.dumps(final["state"], indent=2)
    assert twin_final["state_type"] == "COMPLETED", json.dumps(twin_final["state"], indent=2)
    _record(
        service.runs,
        rest_run_end_to_end_s=ended - started,
        rest_run_flow_s=final["total_run_time"],
        simultaneous_pair_end_to_end_s=max(ended, twin_ended) - started,
    )
    return cfg, final, twin_final


def _stage_log_lines(api, flow_run_id: str, stage: str) -> list[str]:
    """The run's "<stage> done|reused" lines; a run's last logs reach the API just after its final state."""
    deadline = time.time() + 30
    while True:
        messages, page = [], api.logs(flow_run_id)
        while page:
            messages += [log["message"] for log in page]
            page = api.logs(flow_run_id, offset=len(messages)) if len(page) == 200 else []
        lines = [m for m in messages if m.startswith(f"{stage} ")]
        if lines or time.time() > deadline:
            return lines
        time.sleep(1)


def test_rest_triggered_internalize_completes_with_artifacts(service, rest_run):
    cfg, final, twin = rest_run
    run_dirs = list((service.runs / "library-desk").iterdir())
    run_dir = next(p for p in run_dirs if p.is_dir())
    assert final["name"] == f"library-desk-{run_dir.name}"  # flow run names say prompt and version
    for stage in STAGES:
        assert (run_dir / stage / "_manifest.json").is_file(), stage
    decision = json.loads((run_dir / "promote" / "decision.json").read_text())
    assert decision["bar"]["min_recovery"] == 0.9 and decision["reasons"]
    with service.api() as api:
        table = api.request("GET", "/artifacts/genpi-library-desk-evaluation/latest")
        assert table["type"] == "table" and table["flow_run_id"] in (final["id"], twin["id"])
        assert {row["variant"] for row in json.loads(table["data"])} >= {"base", "teacher", "student"}
        report = api.request("GET", "/artifacts/genpi-library-desk-report/latest")
        assert "Promotion" in report["data"]
        link = api.request("GET", "/artifacts/genpi-library-desk-run-folder/latest")
        assert str(run_dir) in link["data"]
    adapters = service.genpi("adapters", "--runs-dir", str(service.runs))
    assert adapters.returncode == 0 and run_dir.name in adapters.stdout


def test_two_simultaneous_triggers_of_one_version_train_once(service, rest_run):
    _, first, twin = rest_run
    with service.api() as api:
        lines = {run["id"]: _stage_log_lines(api, run["id"], "train") for run in (first, twin)}
    done = [i for i, msgs in lines.items() if any(m.startswith("train done") for m in msgs)]
    reused = [i for i, msgs in lines.items() if any(m.startswith("train reused") for m in msgs)]
    assert len(done) == 1 and len(reused) == 1 and done != reused, lines


def test_second_trigger_of_the_same_version_does_no_training(service, rest_run):
    run_dir = next(p for p in (service.runs / "library-desk").iterdir() if p.is_dir())
    before = _manifests(run_dir)
    started = time.time()
    out = service.genpi(
        "run",
        str(EXAMPLE_SPEC),
        "--config",
        str(SMOKE_CONFIG),
        "--runs-dir",
        str(service.runs),
        "--api-url",
        service.ui_url,
        "--wait",
        "--timeout",
        "900",
        timeout=1000,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    _record(service.runs, rerun_same_version_s=time.time() - started)
    assert "Completed" in out.stdout and str(run_dir) in out.stdout
    assert _manifests(run_dir) == before  # nothing re-ran: every stage, training included, was reused
    second_id = out.stdout.split("(", 1)[1].split(")", 1)[0]
    with service.api() as api:
        messages = _stage_log_lines(api, second_id, "train")
    assert any(m.startswith("train reused") for m in messages), messages
    assert not any(m.startswith("train done") for m in messages)


def test_run_without_auth_is_refused_by_the_cli(service):
    env = {k: v for k, v in service.env.items() if k not in ("GENPI_SERVER_AUTH", "PREFECT_API_AUTH_STRING")}
    out = subprocess.run(
        [GENPI, "run", str(EXAMPLE_SPEC), "--api-url", service.ui_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "HTTP 401" in out.stderr


def test_changed_prompt_file_starts_an_event_triggered_run(service, rest_run):
    prompts = service.prompts  # inside the service's prompts roots: the triggered run may read it
    spec = prompts / "library_desk.yaml"
    shutil.copy(EXAMPLE_SPEC, spec)
    args = [
        "watch",
        str(prompts),
        "--once",
        "--config",
        str(TINY_CONFIG),
        "--runs-dir",
        str(service.runs),
        "--api-url",
        service.ui_url,
        *[a for s in FAST for a in ("--set", s)],
    ]
    # the watcher's config differs from the REST run's, but the version is the same: already internalized
    out = service.genpi(*args)
    assert out.returncode == 0 and "already internalized" in out.stdout and "changed ->" not in out.stdout, (
        out.stdout + out.stderr
    )

    text = spec.read_text()
    spec.write_text(text.replace("Front desk phone: (555) 014-2290.", "Front desk phone: (555) 014-2291."))
    with service.api() as api:
        deployment = api.deployment("genpi-internalize/internalize")
        before = {
            r["id"]
            for r in api.request(
                "POST", "/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment["id"]]}}}
            )
        }
        out = service.genpi(*args)
        assert out.returncode == 0 and "changed -> event genpi.prompt.changed" in out.stdout, out.stdout + out.stderr
        emitted = time.time()
        deadline = time.time() + 60
        while True:
            runs = [
                r
                for r in api.request(
                    "POST", "/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment["id"]]}}}
                )
                if r["id"] not in before
            ]
            if runs or time.time() > deadline:
                break
            time.sleep(0.2)
        assert len(runs) == 1, "the event started no run (or more than one)"
        run = runs[0]
        assert run["parameters"]["spec_path"] == str(spec.resolve())
        assert run["parameters"]["config"]["synth"]["inputs"]["max_inputs"] == 6  # the watcher's config came along
        final = api.wait(run["id"], timeout_s=1800, poll_s=1)
        events = api.request(
            "POST", "/events/filter", json={"filter": {"event": {"name": ["genpi.prompt.changed"]}}, "limit": 5}
        )
    assert final["state_type"] == "COMPLETED", json.dumps(final["state"], indent=2)
    occurred = max(_ts(e["occurred"]) for e in events["events"])
    _record(
        service.runs,
        event_to_run_created_s=_ts(run["created"]) - occurred,
        event_to_running_s=_ts(final["start_time"]) - occurred,
        event_to_completed_s=_ts(final["end_time"]) - occurred,
        watcher_exit_to_completed_s=_ts(final["end_time"]) - emitted,
    )
    payload = next(e for e in events["events"] if _ts(e["occurred"]) == occurred)
    assert payload["resource"]["prefect.resource.name"] == "library-desk"
    # an edit of the version the service built before: the event names that parent, and the run builds from it
    parent = payload["payload"]["parent_version12"]
    assert parent and final["name"] == f"library-desk-{payload['payload']['version12']} (incremental from {parent})"
    # announced once: a second scan emits nothing (the run finished, so it is also internalized now)
    again = service.genpi(*args)
    assert again.returncode == 0 and "changed ->" not in again.stdout


def test_rest_runs_cannot_redirect_secrets_read_files_or_move_the_runs_root(service, tmp_path):
    """Hostile parameters over REST fail before anything runs, each naming its field (genpi_core/trust.py)."""
    from schemas.config import load_config

    outside = tmp_path / "spec.yaml"
    shutil.copy(EXAMPLE_SPEC, outside)
    good = load_config(SMOKE_CONFIG, [f"runs_dir={service.runs}"]).model_dump(mode="json")
    steal = load_config(
        SMOKE_CONFIG,
        [
            f"runs_dir={service.runs}",
            "backend.kind=openai",
            "backend.base_url=http://127.0.0.1:9/v1",
            "backend.api_key_env=GENPI_SERVER_AUTH",
        ],
    ).model_dump(mode="json")
    cases = [
        ({"spec_path": "/etc/passwd", "config": good}, "spec_path"),
        ({"spec_path": str(outside), "config": good}, "spec_path"),
        ({"spec_path": str(EXAMPLE_SPEC), "config": steal}, "backend.base_url"),
        ({"spec_path": str(EXAMPLE_SPEC), "config": {**good, "runs_dir": str(tmp_path / "elsewhere")}}, "runs_dir"),
        (
            {"spec_path": str(EXAMPLE_SPEC), "config": {**good, "model": {**good["model"], "name_or_path": "/root"}}},
            "model.name_or_path",
        ),
    ]
    with service.api() as api:
        deployment = api.deployment("genpi-internalize/internalize")
        runs = [(api.create_flow_run(deployment["id"], params), field) for params, field in cases]
        for run, field in runs:
            final = api.wait(run["id"], timeout_s=600, poll_s=1)
            assert final["state_type"] == "FAILED", (field, final["state"])
            assert field in json.dumps(final["state"]) or any(field in log["message"] for log in api.logs(run["id"])), (
                field,
                final["state"],
            )
    assert not (tmp_path / "elsewhere").exists()
    assert service.auth not in json.dumps([api_state for api_state, _ in runs])

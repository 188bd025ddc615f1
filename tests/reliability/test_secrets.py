"""Security: the API key never leaves the environment variable it came from; the service binds loopback;
specs and configs are safe YAML. (Unauthenticated REST calls to a server with auth on are refused:
tests/service/test_service.py::test_requests_without_the_auth_string_are_refused runs that against a real
`genpi server up`; it is not repeated here.)
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genpi_core.ingest import SpecError, load_spec
from schemas.config import load_config
from tests.conftest import EXAMPLE_SPEC, ROOT, transformers_serve

GENPI = str(Path(sys.executable).with_name("genpi"))
SMOKE_CONFIG = ROOT / "configs" / "smoke.yaml"
SENTINEL = "sk-genpi-SENTINEL-7f3a9c1e5b2d4f60"


def test_service_binds_loopback_by_default(faults):
    from genpi import service
    from genpi.cli import build_parser

    assert inspect.signature(service.up).parameters["host"].default == "127.0.0.1"
    args = build_parser().parse_args(["server", "up"])
    assert args.host == "127.0.0.1"
    faults.add(
        "security",
        "Prefect server bind address",
        "default of `genpi server up` and genpi.service.up",
        1,
        "127.0.0.1 (loopback only)",
    )


def test_python_tags_are_refused_by_name_in_specs_and_configs(tmp_path, faults):
    marker = tmp_path / "pwned"
    payload = f"!!python/object/apply:os.system ['touch {marker}']"
    spec, config = tmp_path / "spec.yaml", tmp_path / "config.yaml"
    spec.write_text(f"name: demo\nprompt:\n  system: {payload}\n")
    config.write_text(f"runs_dir: {payload}\n")
    with pytest.raises(
        SpecError, match=r"field `prompt.system` \(line 3\): the Python tag !!python/object/apply:os.system"
    ):
        load_spec(spec)
    with pytest.raises(ValueError, match=r"field `runs_dir` \(line 1\): the Python tag"):
        load_config(config)
    with pytest.raises(ValueError, match="the Python tag"):
        load_config(None, [f"runs_dir={payload}"])
    assert not marker.exists()
    faults.add(
        "security",
        "Python object tags in spec, config and --set",
        "!!python/object/apply:os.system",
        3,
        "refused naming the file, field and tag; nothing executed",
    )


@pytest.fixture(scope="module")
def openai_server(embedded_model_dir, tmp_path_factory):
    """A real `transformers serve` on 127.0.0.1 (OpenAI-compatible) serving the embedded model, and its log."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with transformers_serve(embedded_model_dir, log) as url:
        yield url, log


def _grep(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle in path.read_bytes():
            hits.append(str(path))
    return hits


@pytest.mark.reliability
def test_api_key_never_appears_in_outputs_logs_or_prefect(tmp_path, openai_server, embedded_model_dir, faults):
    """A whole `genpi internalize` Prefect flow run (temporary local Prefect server, PREFECT_HOME under tmp_path)
    whose environment model and reasons generator sit behind a real OpenAI-compatible server that receives a
    sentinel key; the agent, training and evaluation run in-process, so the run also writes the report and
    publishes the evaluation artifacts. Then grep every byte it left: run folder, Prefect's database, results
    and logs, stdout, stderr and the server's log."""
    url, serve_log = openai_server
    runs, home = tmp_path / "runs", tmp_path / "prefect-home"
    env = {
        **os.environ,
        "GENPI_API_KEY": SENTINEL,
        "PREFECT_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "PREFECT_LOGGING_LEVEL": "DEBUG",
    }
    for var in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        env.pop(var, None)
    server = f"{{kind: openai, base_url: '{url}', served_model: '{embedded_model_dir}', max_concurrency: 2}}"
    sets = [
        f"synth.conversations.environment_engine.backend={server}",
        f"synth.generator.backend={server}",
        "synth.reasons.enabled=true",
        "synth.reasons.sampling.max_new_tokens=24",
        "synth.conversations.max_turns=2",
        "synth.conversations.environment.max_new_tokens=16",
        "dataset.require_teacher_checks=false",
        "evaluate.sampling.max_new_tokens=16",
    ]
    args = [GENPI, "internalize", str(EXAMPLE_SPEC), "--config", str(SMOKE_CONFIG), "--runs-dir", str(runs)]
    for item in sets:
        args += ["--set", item]
    out = subprocess.run(args, capture_output=True, text=True, timeout=1800, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run_dir = next(runs.glob("library-desk/*"))
    assert (run_dir / "evaluate" / "report.md").is_file() and (run_dir / "promote" / "_manifest.json").is_file()
    assert home.is_dir() and any(home.rglob("*.db")), "the flow ran on a local Prefect server under PREFECT_HOME"
    served = sum(1 for line in serve_log.read_text(errors="replace").splitlines() if "/chat/completions" in line)
    assert served > 0, "the server received no request: the key was never used"
    needle = SENTINEL.encode()
    scanned = [p for root in (runs, home) for p in root.rglob("*") if p.is_file()]
    hits = _grep(runs, needle) + _grep(home, needle)
    assert needle not in out.stdout.encode() and needle not in out.stderr.encode()
    assert needle not in serve_log.read_bytes()
    assert hits == [], hits
    faults.add(
        "security",
        "API key in outputs, logs, manifests, report, Prefect artifacts and database",
        f"sentinel GENPI_API_KEY on a whole Prefect `genpi internalize` run whose environment model and "
        f"reasons generator are a real `transformers serve` ({served} requests); grep of {len(scanned)} files "
        "(run folder with manifests and report.md, PREFECT_HOME: SQLite DB with logs and artifacts, "
        "results), stdout, stderr, server log",
        1,
        "0 hits",
    )

"""`genpi serve` for real, on the transformers engine (the fallback where vLLM is missing): two promoted
prompts served by name through `genpi serve up`, each name's greedy reply equal to transformers+peft with its
adapter; the key required; an unknown name answered with the served names; a newly promoted version swapped
in under load with no failed request; a damaged adapter and one trained on another base refused while the old
version keeps serving; the key in no log or run file; `genpi serve down` leaving no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
import torch

from genpi.serve.tenants import Tenant
from genpi_core.generation.factory import make_backend
from genpi_core.generation.models import load_model
from genpi_core.store.stage import Stage, atomic_write_json
from genpi_core.train.recipe import attach_lora
from schemas.artifacts import ADAPTER_DIR, PROMOTED_FILE
from schemas.config import BackendConfig, LoraConfig, ModelConfig, SamplingConfig
from tests.conftest import free_port

pytestmark = pytest.mark.server
ROOT = Path(__file__).resolve().parents[2]
KEY = "test-serve-key-" + "x" * 20
QUESTION = [{"role": "user", "content": "What are your opening hours?"}]
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)


def _adapter(runs: Path, name: str, version: str, seed: int, base: str | None = None) -> Path:
    """A real adapter (random non-zero LoRA B, so each one answers differently) recorded by a real train stage."""
    torch.manual_seed(seed)
    model = attach_lora(load_model("embedded"), LoraConfig(rank=4, alpha=16))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.08)
    stage = Stage(runs / name / version[:12], "train", {"seed": seed}, {})
    stage.begin()
    model.save_pretrained(stage.dir / ADAPTER_DIR)
    if base is not None:  # trained elsewhere: its config names another base
        config = stage.dir / ADAPTER_DIR / "adapter_config.json"
        config.write_text(json.dumps(json.loads(config.read_text()) | {"base_model_name_or_path": base}))
    stage.finish([ADAPTER_DIR])
    return stage.dir / ADAPTER_DIR


def _promote(runs: Path, name: str, version: str, adapter: Path) -> None:
    from genpi_core.store.stage import tree_sha256

    atomic_write_json(
        runs / name / PROMOTED_FILE,
        {
            "name": name,
            "version": version,
            "version12": version[:12],
            "adapter": str(adapter),
            "adapter_sha256": tree_sha256(adapter),
            "promoted_at": time.strftime("%H:%M:%S"),
        },
    )


def _peft_reply(adapter: Path) -> str:
    with make_backend(ModelConfig(), BackendConfig(), adapter=adapter) as engine:
        return engine.generate([QUESTION], GREEDY)[0].text.strip()


def _ask(url: str, name: str, key: str = KEY) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": name, "messages": QUESTION, "max_tokens": GREEDY.max_new_tokens, "temperature": 0},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def _text(reply: httpx.Response) -> str:
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"].strip()


def _tree(pid: int) -> set[int]:
    try:
        parent = psutil.Process(pid)
        return {pid} | {c.pid for c in parent.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


@pytest.mark.slow  # over 50 s in the default run (docs/testing.md, session 6 timings)
def test_serve_routes_by_prompt_name_and_swaps_versions_under_load(tmp_path, monkeypatch, embedded_model_dir):
    monkeypatch.setenv("GENPI_SERVE_API_KEY", KEY)  # what the serve-swap deployment's worker holds
    serve_scenario(tmp_path, "transformers", poll=False)


def serve_scenario(tmp_path: Path, engine: str, settings: tuple[str, ...] = (), poll: bool = True) -> None:
    """The whole scenario on one engine kind (tests/vllm runs it on vLLM). With ``poll`` the router finds new
    versions itself; without, each promotion is followed by what the serve-swap deployment runs."""
    from tasks.serve import request_swap

    def promote(name: str, version: str, adapter: Path) -> list[str] | None:
        _promote(runs, name, version, adapter)
        return None if poll else request_swap.fn(home=str(home))

    runs, home = tmp_path / "runs", tmp_path / "home"
    desk = _adapter(runs, "desk", "a" * 64, 1)
    hotel = _adapter(runs, "hotel", "b" * 64, 2)
    _promote(runs, "desk", "a" * 64, desk)
    _promote(runs, "hotel", "b" * 64, hotel)
    expected = {"desk": _peft_reply(desk), "hotel": _peft_reply(hotel)}
    assert expected["desk"] != expected["hotel"]

    url, pid = serve_up(runs, home, (f"serve.engine={engine}", f"serve.poll_s={0.5 if poll else 3600}", *settings))
    processes = _tree(pid)
    try:
        assert _ask(url, "desk", key="wrong").status_code == 401
        assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 401
        names = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
        assert [m["id"] for m in names["data"]] == ["desk", "hotel"]
        for name in ("desk", "hotel"):  # each name's greedy reply is transformers+peft's with its adapter
            assert _text(_ask(url, name)) == expected[name]
        unknown = _ask(url, "nobody")
        assert unknown.status_code == 404 and unknown.json()["error"]["served"] == ["desk", "hotel"]
        if engine == "vllm":  # only the router may load or unload adapters: the engine wants the router's key
            engine_port = next(home.glob("engine-vllm-*.log")).stem.rsplit("-", 1)[1]
            direct = httpx.post(
                f"http://127.0.0.1:{engine_port}/v1/load_lora_adapter",
                json={"lora_name": "x", "lora_path": str(desk)},
                timeout=30,
            )
            assert direct.status_code == 401

        # a damaged new version and one trained on another base are refused; the old version keeps serving
        damaged = _adapter(runs, "desk", "c" * 64, 3)
        (damaged / "adapter_model.safetensors").write_bytes(b"broken")
        assert promote("desk", "c" * 64, damaged) == (None if poll else [])
        other_base = _adapter(runs, "hotel", "d" * 64, 4, base="/models/some-other-base")
        assert promote("hotel", "d" * 64, other_base) == (None if poll else [])
        status = _status(url, lambda s: "desk@cccccccccccc" in s["refused"] and "hotel@dddddddddddd" in s["refused"])
        assert "does not match the hash" in status["refused"]["desk@cccccccccccc"]
        assert "/models/some-other-base" in status["refused"]["hotel@dddddddddddd"]
        assert status["routes"]["desk"]["version"] == "a" * 12 and status["routes"]["hotel"]["version"] == "b" * 12
        assert _text(_ask(url, "desk")) == expected["desk"]

        # a good new version, promoted while requests keep coming: none fails, and the new one answers after
        new = _adapter(runs, "desk", "e" * 64, 5)
        expected_new = _peft_reply(new)
        assert expected_new != expected["desk"]
        codes, stop = [], threading.Event()

        def load() -> None:
            while not stop.is_set():
                codes.append(_ask(url, "desk").status_code)

        workers = [threading.Thread(target=load) for _ in range(3)]
        for w in workers:
            w.start()
        time.sleep(2)
        assert promote("desk", "e" * 64, new) == (None if poll else ["desk@eeeeeeeeeeee"])
        status = _status(url, lambda s: s["routes"]["desk"]["version"] == "e" * 12)
        time.sleep(3)
        stop.set()
        for w in workers:
            w.join(120)
        assert codes and set(codes) == {200}, codes
        assert status["swaps"] == 1 and _text(_ask(url, "desk")) == expected_new
        if engine == "transformers":  # an engine that dies is started again with its tenants
            processes |= _tree(pid)
            child = next(
                p
                for p in psutil.Process(pid).children()
                if "serve" in p.cmdline() and any(a.endswith("transformers") for a in p.cmdline())
            )
            os.killpg(child.pid, signal.SIGKILL)
            _status(url, lambda s: s["restarts"] == 1 and s["engine_alive"])
            assert _text(_ask(url, "desk")) == expected_new and _text(_ask(url, "hotel")) == expected["hotel"]
        processes |= _tree(pid)
    finally:
        serve_down(home, processes)
    leaked = [p for p in [*home.rglob("*"), *runs.rglob("*")] if p.is_file() and KEY.encode() in p.read_bytes()]
    assert not leaked  # the key is in no log, state file, merged folder or run file


SERVE_CLI = [sys.executable, "-m", "genpi.cli", "serve"]


def _serve_env() -> dict[str, str]:
    return dict(os.environ, GENPI_SERVE_API_KEY=KEY, HF_HUB_OFFLINE="1")


def serve_up(runs: Path, home: Path, settings: tuple[str, ...]) -> tuple[str, int]:
    """`genpi serve up` on a free port with ``settings`` (``serve.*=...``); returns (router URL, server pid)."""
    port = free_port()
    sets = [x for item in (f"serve.port={port}", *settings) for x in ("--set", item)]
    args = ["up", "--runs-dir", str(runs), "--home", str(home), *sets]
    up = subprocess.run([*SERVE_CLI, *args], env=_serve_env(), capture_output=True, text=True, timeout=900)
    assert up.returncode == 0, up.stderr + up.stdout
    return f"http://127.0.0.1:{port}", json.loads((home / "serve.json").read_text())["pid"]


def serve_down(home: Path, processes: set[int]) -> None:
    """`genpi serve down`, then no process of the serving tree may be left (zombies aside)."""
    down = subprocess.run(
        [*SERVE_CLI, "down", "--home", str(home)], env=_serve_env(), capture_output=True, text=True, timeout=180
    )
    assert down.returncode == 0, down.stderr
    time.sleep(2)
    assert not [p for p in processes if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def _status(url: str, ready, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = httpx.get(f"{url}/genpi/status", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
        if ready(status) or time.monotonic() > deadline:
            assert ready(status), status
            return status
        time.sleep(0.5)


def test_the_router_refuses_to_run_without_a_key(tmp_path):
    from genpi.serve.engines import TransformersEngine
    from genpi.serve.router import Router
    from schemas.config import ServeConfig

    cfg = ServeConfig()
    with pytest.raises(ValueError, match="set GENPI_SERVE_API_KEY"):
        Router(cfg, tmp_path, TransformersEngine(cfg, "embedded", tmp_path), "embedded", "")
    assert Tenant("desk", "a" * 12, tmp_path, "", "").engine_name == "desk@aaaaaaaaaaaa"

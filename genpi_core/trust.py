"""What a run started through the API may and may not choose: the service's own settings, never the caller's.

Why: a deployment's parameters (the spec path, the whole PipelineConfig) come from whoever can reach the REST
API. Left free, a caller could point `backend.base_url` at their own server with `backend.api_key_env` naming a
secret of the worker (GENPI_SERVER_AUTH included) and receive it as a bearer token, read any local folder as a
model, write run folders anywhere, or have any readable file inlined into a prompt and trained on. So for runs
started by a deployment, the roots, model names, base URLs and API-key variable names come from the worker's
environment (``ServicePolicy.from_env``); a parameter that steps outside them is refused before anything runs,
naming the field. Local CLI and Python use keep their freedom (no policy is applied there).

Environment (path lists use the OS path separator, ``:`` on Linux):
    GENPI_PROMPTS_DIR        prompt roots a spec path must sit in (default: examples/prompts:prompts)
    GENPI_RUNS_DIR           the runs root (default: runs)
    GENPI_ALLOWED_MODELS     model names allowed (default: embedded,embedded-0.5b)
    GENPI_MODEL_ROOTS        folders local models may sit in (default: none)
    GENPI_ALLOWED_BASE_URLS  server URLs a backend may use, comma-separated (default: none)
    GENPI_API_KEY_ENVS       env var names a backend may read its key from (default: GENPI_API_KEY)
    GENPI_MAX_INPUT_BYTES    largest spec or prompt file read (default: 1 MiB)
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import BaseModel

from schemas.config import BackendConfig, ModelConfig, PipelineConfig

SECRET_ENVS = frozenset({"GENPI_SERVER_AUTH", "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"})


class TrustError(ValueError):
    """A run parameter steps outside what the service allows; the message names the field and the allowed values."""


class ServicePolicy(BaseModel):
    prompts_roots: list[Path]
    runs_root: Path
    model_names: list[str]
    model_roots: list[Path]
    base_urls: list[str]
    api_key_envs: list[str]
    max_input_bytes: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> ServicePolicy:
        env = os.environ if env is None else env
        here = (cwd or Path.cwd()).resolve()

        def paths(name: str, default: str) -> list[Path]:
            return [(here / p).resolve() for p in env.get(name, default).split(os.pathsep) if p.strip()]

        def names(name: str, default: str) -> list[str]:
            return [v.strip() for v in env.get(name, default).split(",") if v.strip()]

        key_envs = [n for n in names("GENPI_API_KEY_ENVS", "GENPI_API_KEY") if n not in SECRET_ENVS]
        return cls(
            prompts_roots=paths("GENPI_PROMPTS_DIR", os.pathsep.join(["examples/prompts", "prompts"])),
            runs_root=(here / env.get("GENPI_RUNS_DIR", "runs")).resolve(),
            model_names=names("GENPI_ALLOWED_MODELS", "embedded,embedded-0.5b"),
            model_roots=paths("GENPI_MODEL_ROOTS", ""),
            base_urls=[u.rstrip("/") for u in names("GENPI_ALLOWED_BASE_URLS", "")],
            api_key_envs=key_envs,
            max_input_bytes=int(env.get("GENPI_MAX_INPUT_BYTES", str(1 << 20))),
        )


def beside(folder: Path, value: str, where: str, folder_name: str, error: type[Exception] = ValueError) -> Path:
    """A path written in a file (a spec's prompt file, a task's script) resolved against that file's folder, which
    it may not leave: absolute paths, `..` escapes and symlinks pointing out are refused, naming ``where``."""
    if Path(value).is_absolute():
        raise error(f"{where}: absolute path {value!r} is refused; give a path relative to {folder_name}")
    folder = folder.resolve()
    target = (folder / value).resolve()  # symlinks and `..` resolved: the file itself must sit inside the folder
    if not target.is_relative_to(folder):
        raise error(f"{where}: {value!r} leads outside {folder_name} {folder}; files it names must stay inside it")
    return target


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def confine_file(value: str, roots: list[Path], field: str, max_bytes: int, cwd: Path | None = None) -> Path:
    """``value`` as a regular file inside one of ``roots`` (symlinks followed), at most ``max_bytes``."""
    allowed = ", ".join(str(r) for r in roots) or "none"
    raw = Path(value)
    if ".." in raw.parts:
        raise TrustError(f"{field}: {value!r} uses `..`; give a path inside the allowed roots ({allowed})")
    target = (raw if raw.is_absolute() else (cwd or Path.cwd()) / raw).resolve()
    if not _inside(target, roots):
        raise TrustError(f"{field}: {value!r} is outside the allowed roots ({allowed})")
    try:
        info = target.stat()
    except OSError as exc:
        raise TrustError(f"{field}: {value!r} cannot be read ({exc.strerror})") from exc
    if not stat.S_ISREG(info.st_mode):
        raise TrustError(f"{field}: {value!r} is not a regular file (devices, FIFOs and folders are refused)")
    if info.st_size > max_bytes:
        raise TrustError(f"{field}: {value!r} is {info.st_size} bytes, over the service's {max_bytes}-byte limit")
    return target


def confine_dir(value: str, roots: list[Path], field: str, cwd: Path | None = None) -> Path:
    allowed = ", ".join(str(r) for r in roots) or "none"
    raw = Path(value)
    target = (raw if raw.is_absolute() else (cwd or Path.cwd()) / raw).resolve()
    if ".." in raw.parts or not _inside(target, roots):
        raise TrustError(f"{field}: {value!r} is outside the allowed roots ({allowed})")
    return target


def _engines(cfg: PipelineConfig) -> Iterator[tuple[str, ModelConfig | None, BackendConfig | None]]:
    yield "", cfg.model, cfg.backend
    yield "synth.generator.", cfg.synth.generator.model, cfg.synth.generator.backend
    engine = cfg.synth.conversations.environment_engine
    yield "synth.conversations.environment_engine.", engine.model, engine.backend
    yield "evaluate.judge.", cfg.evaluate.judge.model, cfg.evaluate.judge.backend


def check_config(cfg: PipelineConfig, policy: ServicePolicy, cwd: Path | None = None) -> None:
    """Refuse a config whose runs root, models, servers or key variables the service does not allow."""
    here = (cwd or Path.cwd()).resolve()
    runs = (here / cfg.runs_dir).resolve()
    if runs != policy.runs_root:
        raise TrustError(
            f"runs_dir: {cfg.runs_dir!r} is not the service's runs root {policy.runs_root} (set GENPI_RUNS_DIR on the worker)"
        )
    for prefix, model, backend in _engines(cfg):
        if model is not None and model.name_or_path not in policy.model_names:
            path = (here / model.name_or_path).resolve()
            if not _inside(path, policy.model_roots):
                raise TrustError(
                    f"{prefix}model.name_or_path: {model.name_or_path!r} is neither an allowed model name "
                    f"({', '.join(policy.model_names)}) nor inside an allowed model root (GENPI_MODEL_ROOTS)"
                )
        if backend is None:
            continue
        urls = [backend.base_url] if isinstance(backend.base_url, str) else list(backend.base_url or [])
        for url in urls:
            if url.rstrip("/") not in policy.base_urls:
                raise TrustError(
                    f"{prefix}backend.base_url: {url!r} is not on the service's allow-list (GENPI_ALLOWED_BASE_URLS)"
                )
        if backend.api_key_env not in policy.api_key_envs:
            raise TrustError(
                f"{prefix}backend.api_key_env: {backend.api_key_env!r} is not a key variable the service allows "
                f"({', '.join(policy.api_key_envs) or 'none'}; GENPI_API_KEY_ENVS)"
            )


_FREE_ARG = re.compile(r"[A-Za-z0-9_.,:+=-]+")
_OWNED_FLAGS = ("--set", "--config", "--out", "--model", "--tokenizer", "--random-init", "--runs-dir", "--specs")


def check_benchmark_args(args: list[str]) -> None:
    """A benchmark started through the API takes only plain values: no paths (nothing to read or write outside
    bench/results), no config overrides (they could name servers and key variables), no model or output choice."""
    for i, arg in enumerate(args):
        flag = arg.split("=", 1)[0]
        if flag in _OWNED_FLAGS:
            raise TrustError(f"request.args[{i}]: {flag} is not allowed in a benchmark started through the API")
        if not _FREE_ARG.fullmatch(arg) or ".." in arg:
            raise TrustError(
                f"request.args[{i}]: {arg!r} is not a plain value (letters, digits and . , : + = - _ only; no paths)"
            )

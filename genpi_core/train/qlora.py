"""QLoRA: the frozen base held in 4-bit NF4 (or 8-bit) by bitsandbytes while the LoRA adapter trains.

A module of its own because it is the one training path that needs a CUDA GPU and an optional
package: it checks both before anything is loaded and says what to install, and it merges into a
full-precision copy of the base (folding an adapter into quantized weights would lose precision).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

QLORA_EXTRA = "pip install 'genpi[qlora]'"


def qlora_unavailable_reason(kind: str, cuda_available: bool, has_bitsandbytes: bool) -> str | None:
    """Why `train.lora.quantize_base` cannot run here, or None when it can."""
    missing = []
    if not cuda_available:
        missing.append("a CUDA GPU (bitsandbytes quantizes on the GPU; this machine has none)")
    if not has_bitsandbytes:
        missing.append(f"bitsandbytes ({QLORA_EXTRA})")
    if not missing:
        return None
    return (
        f"train.lora.quantize_base={kind!r} (QLoRA) needs "
        + " and ".join(missing)
        + "; set train.lora.quantize_base to null to train in full precision"
    )


def check_qlora_available(kind: str | None) -> None:
    if kind is None:
        return
    import torch

    reason = qlora_unavailable_reason(
        kind, torch.cuda.is_available(), importlib.util.find_spec("bitsandbytes") is not None
    )
    if reason:
        raise RuntimeError(reason)


def bitsandbytes_arguments(kind: str, compute_dtype: str) -> dict:
    """Arguments of transformers' BitsAndBytesConfig: the QLoRA paper's NF4 with double quantization."""
    import torch

    if kind == "int8":
        return {"load_in_8bit": True}
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": getattr(torch, compute_dtype),
    }


def load_quantized_base(path: str, kind: str, compute_dtype: str, device_index: int):
    """The base model quantized on GPU ``device_index``, prepared for adapter training."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(
        path,
        quantization_config=BitsAndBytesConfig(**bitsandbytes_arguments(kind, compute_dtype)),
        dtype=getattr(torch, compute_dtype),
        device_map={"": device_index},
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def merge_full_precision(path: str, dtype: str, adapter_dir: Path, out_dir: Path) -> None:
    """Fold a QLoRA adapter into an unquantized copy of the base and save it to ``out_dir``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().save_pretrained(out_dir)

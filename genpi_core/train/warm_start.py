"""Warm start: a new version of a prompt begins training from its parent's adapter, on a shorter schedule.

An edit usually touches a few lines of a long prompt, so most of what the parent's adapter learned still holds.
The parent's weights are loaded only where they mean the same thing: the same base model (hence the same
tokenizer) and the same LoRA shape (rank, alpha, target modules). Anything else trains from zero with the full
schedule, and the reason is recorded, never silently mixed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from genpi_core.generation.models import resolve_model
from schemas.artifacts import METRICS_FILE
from schemas.config import LoraConfig, ModelConfig, TrainConfig


def incompatibility(adapter: Path, model: ModelConfig, lora: LoraConfig) -> str | None:
    """Why the parent's adapter cannot seed this run, or None when it can."""
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        return f"{adapter}: no adapter_config.json (not a finished adapter)"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    base, ours = str(config.get("base_model_name_or_path")), resolve_model(model.name_or_path)
    if Path(base).resolve() != Path(ours).resolve():
        return f"the parent was trained on {base}, this run trains {ours}: another base model (and tokenizer)"
    shape = {
        "rank": config.get("r"),
        "alpha": config.get("lora_alpha"),
        "targets": sorted(config.get("target_modules") or []),
    }
    wanted = {"rank": lora.rank, "alpha": lora.alpha, "targets": sorted(lora.target_modules)}
    if shape != wanted:
        return f"the parent's LoRA shape {shape} differs from this run's {wanted}"
    return None


def parent_steps(adapter: Path) -> int | None:
    """Optimizer steps the parent's training took (its train stage's metrics.json)."""
    metrics = adapter.parent / METRICS_FILE
    return int(json.loads(metrics.read_text())["steps"]) if metrics.is_file() else None


def plan_warm_start(cfg: TrainConfig, model: ModelConfig) -> tuple[TrainConfig, dict]:
    """The config to train with (a step budget when warm-starting) and the record for metrics.json."""
    source = cfg.warm_start.from_adapter
    if source is None:
        return cfg, {"used": False, "reason": "off"}
    adapter = Path(source)
    why = incompatibility(adapter, model, cfg.lora)
    steps = parent_steps(adapter)
    if why is None and steps is None:
        why = f"{adapter.parent / METRICS_FILE} is missing: the parent's schedule is unknown"
    if why is not None or steps is None:
        return cfg, {"used": False, "from": source, "reason": why}
    budget = max(1, math.ceil(cfg.warm_start.share * steps))
    planned = cfg if cfg.max_steps is not None else cfg.model_copy(update={"max_steps": budget})
    return planned, {"used": True, "from": source, "parent_steps": steps, "steps": planned.max_steps}


def load_parent(model, adapter: Path) -> None:
    """Copy the parent's adapter weights into the freshly attached adapter (same shape, checked before)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(adapter / "adapter_model.safetensors")))
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"{adapter}: weights that fit no module of this model: {unexpected[:5]}")

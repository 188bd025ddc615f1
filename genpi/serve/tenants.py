"""Who is served: every prompt with a promoted adapter, checked before an engine ever loads it.

A tenant is a prompt name and its promoted version. Its engine-side name is ``<name>@<version12>``, so a new
version is a new name the engine can hold beside the old one while requests in flight finish.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from genpi_core.generation.models import resolve_model
from genpi_core.promote import promoted, verify_adapter
from schemas.artifacts import PROMOTED_FILE


@dataclass(frozen=True)
class Tenant:
    name: str
    version12: str
    adapter: Path
    adapter_sha256: str
    promoted_at: str

    @property
    def engine_name(self) -> str:
        return f"{self.name}@{self.version12}"


def promoted_names(runs_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in Path(runs_dir).glob(f"*/{PROMOTED_FILE}"))


def load_tenant(runs_dir: Path, name: str) -> Tenant | None:
    """The promoted version of ``name``, or None when nothing is promoted for it."""
    record = promoted(runs_dir, name)
    if record is None:
        return None
    return Tenant(
        record["name"],
        record["version12"],
        Path(record["adapter"]),
        record.get("adapter_sha256", ""),
        record.get("promoted_at", ""),
    )


def adapter_base(adapter: Path) -> str:
    """The base model an adapter was trained on, as its adapter_config.json names it."""
    path = adapter / "adapter_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: unreadable adapter config ({exc}); the adapter cannot be served") from exc


def check_tenant(tenant: Tenant, base_model: str) -> None:
    """Refuse an adapter whose bytes changed since training, or that was trained on another base model.

    Both messages name what differs, so the old version keeps serving and the log says why."""
    verify_adapter(tenant.adapter)
    trained_on, engine = adapter_base(tenant.adapter), resolve_model(base_model)
    if Path(trained_on).resolve() != Path(engine).resolve():
        raise ValueError(
            f"{tenant.engine_name}: adapter {tenant.adapter} was trained on {trained_on}, but the engine serves "
            f"{engine} ({base_model}); refusing to load it"
        )

"""The run store: one folder per stage, atomic writes, and a manifest that says "this stage is done".

Layout: ``<runs_dir>/<spec name>/<version12>/<stage>/`` with a ``_manifest.json`` written last.
A stage is complete iff its manifest exists, its recorded key equals the key computed now from
(stage, config, input file hashes), and every output it lists still has the recorded sha256.
Every file goes to a temporary name in the same folder and is ``os.replace``d into place, so a
kill never leaves a half-written file under a finished-looking name.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.artifacts import CHECKPOINT_DIR, MANIFEST

_TMP_PREFIX = ".tmp-"
# What a stage's code makes of the same config and inputs, as a number per stage kind (the name before any
# "-variant"). Bump an entry when the code changes that (a new loss term, another filter rule, a fixed bug in
# what the stage writes): finished stages and checkpoints of that kind written before are then recomputed,
# never reused under the old behaviour. A kind without an entry keys exactly as before these numbers existed,
# so adding this cost no finished run anything. Package versions are recorded in the manifest, not keyed.
STAGE_CODE_VERSIONS: dict[str, int] = {}
_VERSIONED_PACKAGES = ("torch", "transformers", "peft", "pandera", "pyarrow", "genpi")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_sha256(path: Path) -> str:
    """Hash of a file, or of every file under a folder (names and contents)."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode())
        digest.update(file_sha256(child).encode())
    return digest.hexdigest()


def json_sha256(obj: Any) -> str:
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _write_error(path: Path, exc: OSError) -> OSError:
    return OSError(
        exc.errno,
        f"cannot write {path}: {exc.strerror or exc} (disk full, file size limit or "
        "run folder not writable); nothing was written under that name",
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name, dir=path.parent)
    except OSError as exc:  # a read-only folder fails here: name the file meant, not the temporary one
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # ENOSPC, EFBIG, EROFS...: say which file, and that nothing was written
        Path(tmp).unlink(missing_ok=True)
        raise _write_error(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through memory: on a full disk torch's own writer fails with an unrelated-looking
    RuntimeError ("unexpected pos ..."); this way the write fails like any other, naming the file."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


_NEARLY_FULL_BYTES = 1 << 20


def _disk_error(path: Path, exc: BaseException) -> OSError | None:
    """What a library's failed write into ``path`` most likely met, when its exception does not say (safetensors
    and torch raise their own types): a read-only or full file system, seen from the file system itself."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        code = errno.EROFS
    elif st.f_bavail * st.f_frsize < _NEARLY_FULL_BYTES:
        code = errno.ENOSPC
    else:
        return None
    return OSError(
        code, f"cannot write {path}: {os.strerror(code)} ({type(exc).__name__}: {exc}); nothing was kept of it"
    )


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + path.name, dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except OSError:
        raise
    except Exception as exc:
        disk = _disk_error(tmp, exc)
        if disk is None:
            raise
        raise disk from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing): two runs of one prompt version that
    reach the same stage at once take turns, so the second finds the stage complete and reuses it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class StageManifest(BaseModel):
    stage: str
    key: str
    config: dict[str, Any]
    inputs: dict[str, str]
    outputs: dict[str, str]
    rows: dict[str, int | float | None]
    versions: dict[str, str]
    started_at: str
    finished_at: str
    # sha256 of every other field: a manifest edited by hand (rows, key, outputs) no longer matches it.
    # None only in manifests written before the checksum existed; such a stage is recomputed, not trusted.
    checksum: str | None = None

    def content_sha256(self) -> str:
        return json_sha256(self.model_dump(mode="json", exclude={"checksum"}))


def _versions() -> dict[str, str]:
    found = {}
    for name in _VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


class Stage:
    """One stage folder. Use: ``if not stage.is_complete(): stage.begin(); ...write...; stage.finish(...)``."""

    def __init__(self, run_dir: Path, name: str, config: Any, inputs: dict[str, Path]) -> None:
        self.name = name
        self.dir = Path(run_dir) / name
        self.config = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
        self.inputs = {label: tree_sha256(Path(p)) for label, p in sorted(inputs.items())}
        keyed: dict[str, Any] = {"stage": name, "config": self.config, "inputs": self.inputs}
        code = STAGE_CODE_VERSIONS.get(name.split("-", 1)[0])
        if code is not None:
            keyed["code"] = code
        self.key = json_sha256(keyed)
        self._started: str | None = None

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    def manifest(self) -> StageManifest:
        """The stage's manifest; a broken or hand-edited one is an error naming the file, never trusted."""
        try:
            manifest = StageManifest.model_validate_json(self.manifest_path.read_text(encoding="utf-8"))
        except Exception as exc:
            raise ValueError(
                f"{self.manifest_path}: unreadable stage manifest ({exc}); delete {self.dir} to recompute the stage"
            ) from exc
        if manifest.checksum is not None and manifest.checksum != manifest.content_sha256():
            raise ValueError(
                f"{self.manifest_path}: stage manifest was edited or damaged (its checksum does not "
                f"match its content); delete {self.dir} to recompute the stage"
            )
        return manifest

    def changed_outputs(self) -> list[str]:
        """Outputs listed in the manifest that are missing or differ from the hash recorded when it finished."""
        return [
            rel
            for rel, sha in self.manifest().outputs.items()
            if not (self.dir / rel).exists() or tree_sha256(self.dir / rel) != sha
        ]

    def is_complete(self) -> bool:
        if not self.manifest_path.is_file():
            return False
        manifest = self.manifest()
        if manifest.key != self.key or manifest.checksum is None:
            return False
        for rel, sha in manifest.outputs.items():
            out = self.dir / rel
            if not out.exists() or tree_sha256(out) != sha:
                return False
        return True

    def begin(self, keep_checkpoint: bool = False) -> None:
        """Start (or restart) the stage from a clean folder: nothing stale can pass for output.

        With ``keep_checkpoint``, a ``_state/`` folder written under the *same key* survives, so a
        stage that checkpoints its progress (synthesis, per turn) resumes where it was killed.
        """
        stamp = self.dir / CHECKPOINT_DIR / "_stage_key"
        resuming = keep_checkpoint and stamp.is_file() and stamp.read_text() == self.key
        if self.dir.exists():
            for child in self.dir.iterdir():
                if not (resuming and child.name == CHECKPOINT_DIR):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        if keep_checkpoint and not resuming:
            atomic_write_text(stamp, self.key)
        self._started = datetime.now(timezone.utc).isoformat()

    def finish(self, outputs: list[str], rows: dict | None = None) -> StageManifest:
        manifest = StageManifest(
            stage=self.name,
            key=self.key,
            config=self.config,
            inputs=self.inputs,
            outputs={rel: tree_sha256(self.dir / rel) for rel in outputs},
            rows=rows or {},
            versions=_versions(),
            started_at=self._started or datetime.now(timezone.utc).isoformat(),
            finished_at=datetime.now(timezone.utc).isoformat(),
        )
        manifest = manifest.model_copy(update={"checksum": manifest.content_sha256()})
        atomic_write_json(self.manifest_path, manifest)  # written last: the stage's "done" flag
        return manifest

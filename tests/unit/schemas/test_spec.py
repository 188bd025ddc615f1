"""Spec ingestion: every bad input gives an error naming the file and the field."""

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from genpi_core.ingest import SpecError, check_fits_context, load_spec, spec_version
from schemas.spec import PromptSpec

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


def test_a_prompt_file_must_sit_inside_the_specs_folder(tmp_path):
    (tmp_path / "secret.txt").write_text("the worker's notes")
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "link.txt").symlink_to(tmp_path / "secret.txt")
    for value, why in [
        (str(tmp_path / "secret.txt"), "absolute path"),
        ("../secret.txt", "leads outside the spec's folder"),
        ("link.txt", "leads outside the spec's folder"),  # a symlink pointing out is followed, then refused
    ]:
        with pytest.raises(SpecError, match=rf"field `prompt.path`: .*{why}"):
            load_spec(write(folder, with_changes(prompt={"path": value})))


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


# --------------------------------------------------------------------------------------------
# Prompt files in the kaistAI/GenPI research format (<USER>: / <AGENT>:), and where prompt files may live
# --------------------------------------------------------------------------------------------

RESEARCH_PROMPT = """<USER>:
You act in a Linux shell. Reply with Think: and Act:.

Now, my problem is: how many files are in /etc?

<AGENT>:
Think: count them.

Act: bash

```bash
ls -1 /etc | wc -l
```

<USER>:
The output of the OS:
220

<AGENT>:
Think: it is 220.

Act: answer(220)

<USER>:
Now, I will start a new problem in a new OS. My problem is:
"""
PREFIX = "Now, I will start a new problem in a new OS. My problem is:"


def research_spec(tmp_path: Path, content: str = RESEARCH_PROMPT, file="os_prompt.txt", name="spec.yaml", **prompt):
    (tmp_path / file).write_text(content, encoding="utf-8")
    return write(tmp_path, with_changes(prompt={"path": file, "format": "genpi-research", **prompt}), name)


def test_research_prompt_file_becomes_turns_and_an_input_prefix(tmp_path):
    from genpi_core.prompt.views import input_message, input_turn

    spec = load_spec(research_spec(tmp_path))
    assert [t.role for t in spec.prompt.dialogue] == ["user", "assistant", "user", "assistant"]
    texts = [t.text for t in spec.prompt.dialogue]
    assert texts[0].startswith("You act in a Linux shell.") and texts[0].endswith("how many files are in /etc?")
    assert texts[1] == "Think: count them.\n\nAct: bash\n\n```bash\nls -1 /etc | wc -l\n```"
    assert texts[2] == "The output of the OS:\n220" and texts[3] == "Think: it is 220.\n\nAct: answer(220)"
    assert spec.prompt.input_prefix == PREFIX and spec.prompt.system is None and spec.prompt.path is None
    assert input_message(spec.prompt, "count the users") == f"{PREFIX}\n\ncount the users"
    assert input_turn(spec.prompt, "x") == [{"role": "user", "content": f"{PREFIX}\n\nx"}]


def test_research_prompt_without_a_trailing_user_turn_has_no_prefix(tmp_path):
    from genpi_core.prompt.views import input_message

    content = RESEARCH_PROMPT[: RESEARCH_PROMPT.rindex("<USER>:")]
    spec = load_spec(research_spec(tmp_path, content))
    assert len(spec.prompt.dialogue) == 4 and spec.prompt.input_prefix is None
    assert input_message(spec.prompt, "count the users") == "count the users"
    # an empty trailing <USER>: marks where the input goes: still no prefix
    assert load_spec(research_spec(tmp_path, content + "<USER>:\n", name="b.yaml")).prompt.input_prefix is None


MALFORMED_RESEARCH = [
    ("no markers", "You act in a shell.\nAnswer with Act:.\n", "no `<USER>:` or `<AGENT>:` marker"),
    ("two agents in a row", "<USER>:\nhi\n<AGENT>:\na\n<AGENT>:\nb\n", "line 5: two `<AGENT>:` turns in a row"),
    ("two users in a row", "<USER>:\nhi\n<USER>:\nagain\n<AGENT>:\nb\n", "line 3: two `<USER>:` turns in a row"),
    ("starts with agent", "<AGENT>:\nhello\n<USER>:\nhi\n", "the first turn is `<AGENT>:`"),
    ("only a prefix", "<USER>:\nMy problem is:\n", "no dialogue turns"),
    ("text before the first marker", "Intro\n<USER>:\nhi\n<AGENT>:\nok\n", "text before the first `<USER>:`"),
    ("empty turn", "<USER>:\nhi\n<AGENT>:\n\n<USER>:\nmore\n<AGENT>:\nok\n", "line 3: the `<AGENT>:` turn is empty"),
]


@pytest.mark.parametrize("label,content,message", MALFORMED_RESEARCH, ids=[m[0] for m in MALFORMED_RESEARCH])
def test_malformed_research_prompt_file_names_the_file(tmp_path, label, content, message):
    path = research_spec(tmp_path, content)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(err.value).startswith(str(tmp_path / "os_prompt.txt"))
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    "reference",
    ["../outside.txt", "inner/../../outside.txt", "ABSOLUTE", "link.txt"],
    ids=["dotdot", "nested dotdot", "absolute", "symlink out"],
)
def test_prompt_path_must_stay_inside_the_spec_folder(tmp_path, reference):
    folder = tmp_path / "specs"
    (folder / "inner").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret system text", encoding="utf-8")
    (folder / "link.txt").symlink_to(outside)
    reference = str(outside) if reference == "ABSOLUTE" else reference
    path = write(folder, with_changes(prompt={"path": reference}))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert message.startswith(f"{path}: field `prompt.path`: ")
    assert ("absolute path" if reference == str(outside) else "outside the spec's folder") in message


def test_prompt_path_inside_a_subfolder_is_fine(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "p.txt").write_text("Always answer in Spanish.", encoding="utf-8")
    spec = load_spec(write(tmp_path, with_changes(prompt={"path": "prompts/./p.txt", "input_prefix": "Q:"})))
    assert spec.prompt.system == "Always answer in Spanish." and spec.prompt.input_prefix == "Q:"


def test_prompt_file_options_are_checked(tmp_path):
    (tmp_path / "p.txt").write_text(RESEARCH_PROMPT, encoding="utf-8")
    with pytest.raises(SpecError, match=r"field `prompt.format`: .* set `format: genpi-research`"):
        load_spec(write(tmp_path, with_changes(prompt={"path": "p.txt"})))  # looks like turns: never silently text
    assert (
        "<AGENT>:" in load_spec(write(tmp_path, with_changes(prompt={"path": "p.txt", "format": "text"}))).prompt.system
    )
    with pytest.raises(SpecError, match=r"field `prompt.format`: unknown format 'markdown'"):
        load_spec(write(tmp_path, with_changes(prompt={"path": "p.txt", "format": "markdown"})))
    with pytest.raises(SpecError, match=r"field `prompt.input_prefix`: a genpi-research file's trailing"):
        load_spec(research_spec(tmp_path, input_prefix="My problem:"))
    with pytest.raises(SpecError, match=r"field `prompt.tone`: unknown key beside `path`"):
        load_spec(write(tmp_path, with_changes(prompt={"path": "p.txt", "tone": "dry"})))
    with pytest.raises(SpecError, match=r"`format` says how to read a `path`"):
        load_spec(write(tmp_path, with_changes(prompt={"system": "x", "format": "text"})))


def test_version_hashes_the_prompt_files_content_not_its_path(tmp_path):
    v1 = spec_version(load_spec(research_spec(tmp_path)))
    # the same content under another name: same version
    assert spec_version(load_spec(research_spec(tmp_path, file="renamed.txt", name="b.yaml"))) == v1
    # a change in a turn, or in the trailing prefix alone: a new version
    changed = RESEARCH_PROMPT.replace("220", "221")
    assert spec_version(load_spec(research_spec(tmp_path, changed, name="c.yaml"))) != v1
    reprefixed = RESEARCH_PROMPT.replace("My problem is:", "My task is:")
    assert spec_version(load_spec(research_spec(tmp_path, reprefixed, name="d.yaml"))) != v1


def test_a_spec_without_an_input_prefix_keeps_its_version():
    """input_prefix/format are hashed only when set: specs written before them keep their versions and run folders."""
    spec = PromptSpec.model_validate(GOOD)
    data = spec.model_dump(mode="json")
    for field in ("input_prefix", "format"):
        data["prompt"].pop(field)
    data["environment"] = data["environment"]["description"]  # specs had a bare string before environment kinds
    before = hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert spec_version(spec) == before
    with_prefix = PromptSpec.model_validate(with_changes(prompt={**GOOD["prompt"], "input_prefix": "Q:"}))
    assert spec_version(with_prefix) != before
    blank = PromptSpec.model_validate(with_changes(prompt={**GOOD["prompt"], "input_prefix": "  "}))
    assert blank.prompt.input_prefix is None and spec_version(blank) == before


def test_environment_is_a_description_or_a_kind():
    """A bare string is a simulated environment (existing specs keep working and keep their versions)."""
    bare = PromptSpec.model_validate(with_changes(environment="library patrons"))
    assert bare.environment.kind == "simulated" and str(bare.environment) == "library patrons"
    same = PromptSpec.model_validate(with_changes(environment={"kind": "simulated", "description": "library patrons"}))
    assert spec_version(same) == spec_version(bare)
    shell = PromptSpec.model_validate(
        with_changes(environment={"kind": "shell", "description": "an Ubuntu shell", "init": "mkdir -p /srv"})
    )
    assert shell.environment.kind == "shell" and spec_version(shell) != spec_version(bare)
    with pytest.raises(ValueError, match="needs `kind: shell`"):
        PromptSpec.model_validate(with_changes(environment={"description": "x", "init": "true"}))
    with pytest.raises(ValueError, match="kind"):
        PromptSpec.model_validate(with_changes(environment={"kind": "docker", "description": "x"}))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"inputs": {"eval": [{"text": "q", "facts": [""]}]}}, "empty string, which every reply contains"),
        ({"inputs": {"eval": [{"text": "q", "facts": [[]]}]}}, "empty list of alternatives"),
        ({"inputs": {"eval": [{"text": "q", "facts": [["1 pm", " "]]}]}}, "empty string"),
        ({"checks": [{"type": "must_contain", "values": ["Topic", ""]}]}, "could never fail"),
        ({"checks": [{"type": "must_start_with", "value": "  "}]}, "no reply can start with it"),
        ({"checks": [{"type": "regex", "pattern": ".*"}]}, "passes every reply"),
        ({"checks": [{"type": "regex", "pattern": "(Topic)?"}]}, "passes every reply"),
    ],
)
def test_degenerate_facts_and_checks_are_refused(change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PromptSpec.model_validate(with_changes(**change))


def test_anchored_or_lookaround_patterns_that_match_empty_text_are_kept():
    for pattern in (r"^(?![\s\S]*The output of the OS)", r"^Topic: \w*", r"\b"):
        PromptSpec.model_validate(with_changes(checks=[{"type": "regex", "pattern": pattern}]))

"""The kaistAI/GenPI prompt-file format: <USER>:/<AGENT>: turns and the trailing input prefix (parser alone;
loading through a spec is tested in tests/unit/schemas/test_spec.py)."""

import pytest

from genpi_core.prompt.research_format import ResearchPromptError, parse_research_prompt


def test_turns_alternate_and_the_trailing_user_text_is_the_prefix():
    parsed = parse_research_prompt(
        "\ufeff<USER>:\r\nDo X.\r\nMy problem: list /tmp\r\n<AGENT>:\r\nAct: bash\r\n<USER>:\r\nThe output of the OS:\r\n"
        "a b\r\n<AGENT>:  Act: finish\r\n\r\n<USER>:\r\nNew problem:\r\n"
    )
    assert parsed.dialogue == [
        {"user": "Do X.\nMy problem: list /tmp"},
        {"agent": "Act: bash"},
        {"user": "The output of the OS:\na b"},
        {"agent": "Act: finish"},
    ]
    assert parsed.input_prefix == "New problem:"


def test_a_marker_inside_a_line_is_text():
    parsed = parse_research_prompt("<USER>:\nWrite <AGENT>: before replies.\n<AGENT>:\nok")
    assert parsed.dialogue == [{"user": "Write <AGENT>: before replies."}, {"agent": "ok"}]
    assert parsed.input_prefix is None


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "no `<USER>:` or `<AGENT>:` marker"),
        ("<USER>:\nhi\n<AGENT>:\na\n<AGENT>:\nb", "line 5: two `<AGENT>:` turns in a row (lines 3 and 5)"),
        ("<AGENT>:\nhi\n<USER>:\nq", "line 1: the first turn is `<AGENT>:`"),
        ("<USER>:\nonly a prefix", "no dialogue turns"),
        ("<USER>:\n\n<AGENT>:\nok", "line 1: the `<USER>:` turn is empty"),
    ],
)
def test_malformed_files_say_where_and_what(text, message):
    with pytest.raises(ResearchPromptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_research_prompt(text)

"""The with/without-prompt views and the input prefix: one definition, used by every stage."""

from genpi_core.prompt.views import input_message, input_turn, user_turn, with_prompt, without_prompt
from schemas.spec import PromptBody

PLAIN = PromptBody(system="Be brief.")
PREFIXED = PromptBody(system="Be brief.", input_prefix="Now, my problem is:")


def test_the_input_prefix_goes_before_the_input_for_teacher_base_and_student():
    assert input_message(PLAIN, "list /tmp") == "list /tmp"
    assert input_turn(PLAIN, "list /tmp") == user_turn("list /tmp")
    first = input_turn(PREFIXED, "list /tmp")
    assert first == [{"role": "user", "content": "Now, my problem is:\n\nlist /tmp"}]
    assert with_prompt(PREFIXED, first)[-1] == first[0] and without_prompt(first) == first
    assert with_prompt(PREFIXED, first)[0] == {"role": "system", "content": "Be brief."}  # the prefix is no turn

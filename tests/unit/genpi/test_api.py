"""The Python API's Student, with a fake engine: a string request gets the spec's input prefix, as in training."""

from genpi.api import Student
from genpi_core.generation.base import Completion
from schemas.spec import PromptBody


class _Engine:
    model, tokenizer = "model", "tokenizer"

    def __init__(self):
        self.seen = []

    def generate(self, conversations, sampling, desc=""):
        self.seen += conversations
        return [Completion("ok", "stop", 1, 1, 0.0) for _ in conversations]


def test_a_string_request_gets_the_input_prefix_and_a_conversation_is_sent_as_given():
    engine = _Engine()
    student = Student(engine, PromptBody(system="x", input_prefix="My problem is:"))
    assert student.generate("count files") == "ok"
    student.generate([{"role": "user", "content": "as is"}])
    Student(engine).generate("no prefix")
    assert engine.seen == [
        [{"role": "user", "content": "My problem is:\n\ncount files"}],
        [{"role": "user", "content": "as is"}],
        [{"role": "user", "content": "no prefix"}],
    ]

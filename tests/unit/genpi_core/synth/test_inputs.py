"""Input synthesis on the real embedded model: pool, generated, both; every row accounted for. Generator-output
cleaning (list numbers, invented environment replies) with a fixed fake reply."""

import json

import pytest

from genpi_core.generation.base import Completion
from genpi_core.store.tables import read_table
from genpi_core.synth.inputs import (
    INVENTED_ENVIRONMENT_REPLY,
    PromptEchoes,
    _trigrams,
    dedup_key,
    environment_reply_patterns,
    invented_environment_reply,
    near_duplicate_of,
    quality_problem,
    run_inputs,
    split_messages,
    strip_list_marker,
)
from schemas.config import InputsConfig, SamplingConfig
from schemas.datasets import InputsSchema, QuarantineSchema


def test_pool_inputs_are_deduplicated_and_recorded_as_pool(tmp_path, example_spec):
    spec = example_spec.model_copy(
        update={
            "inputs": example_spec.inputs.model_copy(
                update={"pool": ["Hello there", "hello   THERE", "When do you open?"]}
            )
        }
    )
    rows = run_inputs(spec, "v" * 64, InputsConfig(source="pool", max_inputs=10), None, tmp_path)
    inputs = read_table(tmp_path / "inputs.parquet", InputsSchema)
    quarantine = read_table(tmp_path / "quarantine.parquet", QuarantineSchema)
    assert rows["inputs"] == 2 and set(inputs["source"]) == {"pool"} and set(inputs["generator"]) == {"spec"}
    assert list(quarantine["error"]) == ["exact duplicate of an earlier input"]
    assert dedup_key(" Hello\tthere ") == "hello there"


def test_generated_inputs_come_from_the_model_and_bad_ones_are_quarantined(
    tmp_path, example_spec, transformers_backend
):
    cfg = InputsConfig(
        source="both",
        max_inputs=8,
        num_generated=6,
        per_request=3,
        sampling=SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=60, seed=3),
    )
    rows = run_inputs(example_spec, "v" * 64, cfg, transformers_backend, tmp_path)
    inputs = read_table(tmp_path / "inputs.parquet", InputsSchema)
    quarantine = read_table(tmp_path / "quarantine.parquet", QuarantineSchema)
    generated = inputs[inputs["source"] == "generated"]
    assert set(generated["generator"]) <= {transformers_backend.name}
    # generated inputs come first and the pool tops up to the cap; every generated text is used or quarantined
    assert rows["inputs"] == 8 and (inputs["source"] == "pool").sum() == 8 - len(generated)
    quarantined_generated = [r for r in quarantine["raw"] if json.loads(r).get("source") == "generated"]
    assert rows["generated_written"] > 0
    assert len(generated) + len(quarantined_generated) == rows["generated_written"]
    assert all(quarantine["error"].str.len() > 0)


def test_generator_reply_parsing_and_quality_filters():
    assert split_messages('Here you go:\n1. "When do you open?"\n2) Can I renew online\n\n- bye') == [
        "Here you go:",
        "When do you open?",
        "Can I renew online",
        "bye",
    ]
    cfg = InputsConfig(min_words=2, max_words=12, language="en")
    assert quality_problem("When do you open on Sunday?", cfg) == ""
    assert quality_problem("hours", cfg).startswith("too short")
    assert quality_problem("word " * 13, cfg).startswith("too long")
    assert quality_problem("Myrtle: how is your family?", cfg).startswith("starts with a speaker label")
    assert quality_problem("The assistant will answer in Spanish", cfg).startswith("meta text")
    assert quality_problem("¿Cuándo abre la biblioteca para los niños?", cfg).startswith("language looks like es")
    assert quality_problem("hi <|im_start|> there", cfg).startswith("contains chat-template control")


# Written by the 0.5B generator for library_desk (synth.inputs in configs/genpi.yaml): each one answers itself,
# pastes the prompt, or pads an example, and would teach the student the prompt's worked replies, not its facts.
ECHOES = [
    ("Is there a book club I could join? Yes, Dockside Readers meets on the first Tuesday.", "answers its own"),
    ("Can I borrow a library book from another library? No, children's books have no late fees.", "answers its own"),
    (
        "You can keep a library book for 21 days. You can renew it 2 times unless another patron has placed a hold.",
        "copies the prompt",
    ),
    ("I need a quiet place to study with two friends tomorrow. Can we get a room?", "copies the prompt"),
    ("What time do you close on Thursdays? [You have access to the front desk website.]", "an example input"),
    ("Topic:图书馆 events", "not written in en"),
    ("[Answer: No, we don't have a library branch in Port Ellery. ]", "starts with a speaker label"),
    ("Does the agent talk to library patrons who chat with the help desk on the library's website?", "copies the"),
]


@pytest.mark.parametrize(("text", "why"), ECHOES)
def test_generated_inputs_that_echo_the_prompt_or_answer_themselves_are_quarantined(example_spec, text, why):
    cfg = InputsConfig(language="en")
    assert quality_problem(text, cfg, echoes=PromptEchoes.of(example_spec)).startswith(why)


@pytest.mark.parametrize(
    "text",
    [
        "What time do you close on Fridays?",
        "Can you tell me the rates for borrowing from the library?",
        "How much does it cost to renew a DVD online?",
        "What time do you close on Thursdays?",  # a seed input itself is a fine message
        "No idea where the library is. Is it near the harbor?",
    ],
)
def test_new_requests_are_not_mistaken_for_echoes(example_spec, text):
    assert quality_problem(text, InputsConfig(language="en"), echoes=PromptEchoes.of(example_spec)) == ""


def test_near_duplicates_are_found_by_trigram_overlap():
    kept = [(t, _trigrams(t)) for t in ["What time do you open on Saturday morning?"]]
    assert near_duplicate_of("what time do you open on saturday morning", kept, 0.7) is not None
    assert near_duplicate_of("Can I book a study room for three people?", kept, 0.7) is None


@pytest.mark.parametrize(
    "line",
    [
        "[1] How many files are in /etc?",
        "[12]How many files are in /etc?",
        "1. How many files are in /etc?",
        "1) How many files are in /etc?",
        "(1) How many files are in /etc?",
        "#1 How many files are in /etc?",
        "# 1. How many files are in /etc?",
        "**1.** How many files are in /etc?",
        "- How many files are in /etc?",
        '3. "How many files are in /etc?"',
        "1. [1] How many files are in /etc?",
        "[1.] How many files are in /etc?",  # the 0.5B's own form in the quality suite's library_desk inputs
        "[1. How many files are in /etc?]",  # ...and this one, its closing bracket included
        "[5. How many files are in /etc?",
        "(2.) How many files are in /etc?",
        '  - "(2) How many files are in /etc?"',
    ],
)
def test_a_leading_list_number_is_stripped_in_every_form(line):
    assert split_messages(line) == ["How many files are in /etc?"]
    assert strip_list_marker(line.strip()) == "How many files are in /etc?"


@pytest.mark.parametrize(
    "text",
    [
        "1.5 GB of disk is left, what uses it?",
        "2024 logs: how many are there?",
        "-5 degrees in the server room, is that a problem?",
        "(a) or (b): which one is faster?",
        "'til when does the job run?",
        "#include <stdio.h> fails to compile, why?",
    ],
)
def test_numbers_and_marks_that_belong_to_the_message_stay(text):
    assert split_messages(text) == [text]


INVENTED = [
    ("Count the files in /etc. (The output of the OS: [120])", "os-output"),
    ("How many users are there?\nThe output of the OS:\n3", "os-output"),
    ("the output of the OS is: 42. Tell me the port count", "os-output"),
    ("Find the largest file in /var/log. Observation: /var/log/syslog", "observation-label"),
    ("Observation:\nthe shell prints 3 lines. What next?", "observation-label"),
    ("List the running services.\nOutput:\nnginx sshd", "output-label"),
    ("Print the disk usage (Output: 75%)", "output-label"),
]
NOT_INVENTED = [
    "What is the output of ls?",
    "What is the output of the OS when I run uname -a?",
    "Format the output: one file per line, sorted by size",
    "Expected output: the total size in MB",
    "Why does my script's output look garbled?",
    "Explain what an observation is in a ReAct agent.",
    "How do I save the output of a cron job to a file?",
]


@pytest.mark.parametrize("text,name", INVENTED)
def test_an_invented_environment_reply_is_quarantined_with_its_name(text, name):
    cfg = InputsConfig(min_words=2, max_words=40)
    problem = quality_problem(text, cfg)
    assert problem.startswith(f"contains an invented environment reply ({name}: "), problem
    assert invented_environment_reply(text) == problem


@pytest.mark.parametrize("text", NOT_INVENTED)
def test_a_request_that_only_asks_about_output_is_kept(text):
    assert invented_environment_reply(text) == ""
    assert quality_problem(text, InputsConfig(min_words=2, max_words=40)) == ""


def test_the_patterns_are_named_and_a_prompt_whose_own_inputs_are_observations_keeps_them():
    names = [name for name, _ in INVENTED_ENVIRONMENT_REPLY]
    assert names == ["os-output", "observation-label", "output-label"]
    # a WebShop input *is* an observation: the spec's own examples switch that one pattern off, not the others
    webshop = ["Observation:\nWebShop [SEP] Instruction: [SEP] a 12 ounce jar of jam [SEP] Search"]
    active = environment_reply_patterns(webshop)
    assert [name for name, _ in active] == ["os-output", "output-label"]
    text = "Observation:\nWebShop [SEP] Instruction: [SEP] blue running shoes [SEP] Search"
    assert invented_environment_reply(text, active) == ""
    assert invented_environment_reply(text + " (The output of the OS: 3)", active).startswith(
        "contains an invented environment reply (os-output"
    )


class _OneReply:
    """A generator that writes the same numbered reply for every request (filter logic only)."""

    name = "one-reply"

    def __init__(self, text):
        self.text = text

    def generate(self, requests, sampling, desc=""):
        return [Completion(self.text, "stop", 10, 10, 0.0) for _ in requests]


def test_generated_inputs_lose_their_numbers_and_invented_replies_are_quarantined(tmp_path, example_spec):
    reply = (
        "[1] Can I renew a book twice in a row?\n"
        "[2] How many books are on my card? (The output of the OS: [3])\n"
        "3) What is the output of the printer in room B?\n"
    )
    cfg = InputsConfig(source="generate", max_inputs=10, num_generated=3, per_request=3, oversample=1.0)
    rows = run_inputs(example_spec, "v" * 64, cfg, _OneReply(reply), tmp_path)
    inputs = read_table(tmp_path / "inputs.parquet", InputsSchema)
    quarantine = read_table(tmp_path / "quarantine.parquet", QuarantineSchema)
    assert list(inputs["text"]) == [
        "Can I renew a book twice in a row?",
        "What is the output of the printer in room B?",
    ]
    assert rows["generated_written"] == 3 and rows["generated_used"] == 2
    (bad,) = [r for r in quarantine.itertuples() if json.loads(r.raw).get("source") == "generated"]
    assert json.loads(bad.raw)["text"] == "How many books are on my card? (The output of the OS: [3])"
    assert bad.error == "contains an invented environment reply (os-output: 'The output of the OS:')"

"""Input synthesis on the real embedded model: pool, generated, both; every row accounted for."""

import json

from genpi_core.store.tables import read_table
from genpi_core.synth.inputs import (
    _trigrams,
    dedup_key,
    near_duplicate_of,
    quality_problem,
    run_inputs,
    split_messages,
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


def test_near_duplicates_are_found_by_trigram_overlap():
    kept = [(t, _trigrams(t)) for t in ["What time do you open on Saturday morning?"]]
    assert near_duplicate_of("what time do you open on saturday morning", kept, 0.7) is not None
    assert near_duplicate_of("Can I book a study room for three people?", kept, 0.7) is None

"""The TRL SDFT export round-trips: TRL's own code reads it (format check, its teacher-prompt builder, one real
SDFTTrainer step on the tiny model), and the import gives back the examples it came from."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genpi.cli import main
from genpi_core.ingest import load_spec, run_ingest
from genpi_core.interop.trl_sdft import SdftFormatError, export_sdft, import_sdft
from genpi_core.prompt.pg_format import pg_target
from genpi_core.store.tables import write_table
from schemas.config import IngestConfig, ModelConfig
from schemas.datasets import ExamplesSchema
from tests.conftest import EXAMPLE_SPEC

trl = pytest.importorskip("trl", reason="TRL is the optional `trl` extra (in dev): pip install 'genpi[trl]'")
TINY = Path(__file__).resolve().parents[3] / "assets" / "tiny-causal-lm"


def _examples() -> pd.DataFrame:
    single = [{"role": "user", "content": "When do you open?"}]
    multi = single + [
        {"role": "assistant", "content": "Topic: hours\nAnswer: At 9 am."},
        {"role": "user", "content": "And on Sunday?"},
    ]
    rows = [
        ("c0:0", "c0", "sft", single, "Topic: hours\nAnswer: At 9 am."),
        ("c0:1", "c0", "sft", multi, "Topic: hours\nAnswer: Closed on Sundays."),
        ("c0:pg", "c0", "pg", [{"role": "user", "content": "Write the prompt."}], "[user]\nThe prompt."),
    ] + [
        (f"c{i}:0", f"c{i}", "sft", [{"role": "user", "content": f"Question {i}?"}], f"Answer {i}.")
        for i in range(1, 7)
    ]
    return pd.DataFrame(
        [
            {
                "example_id": e,
                "conversation_id": c,
                "objective": o,
                "messages": json.dumps(m),
                "target": t,
                "reason": "",
                "weight": 1.0,
            }
            for e, c, o, m, t in rows
        ]
    )


def test_the_export_is_read_by_trl_and_trains_one_sdft_step_then_imports_back(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")  # trl.experimental warns on import otherwise
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.data_utils import is_conversational
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer
    from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder

    spec = load_spec(EXAMPLE_SPEC)
    examples = _examples()
    write_table(examples, ExamplesSchema, tmp_path / "train.parquet")
    assert export_sdft(tmp_path / "train.parquet", spec.prompt, tmp_path / "sdft.parquet") == 8  # SFT rows only

    dataset = Dataset.from_parquet(str(tmp_path / "sdft.parquet"))
    assert all(is_conversational(row) for row in dataset)  # TRL's own format check
    args = SDFTConfig(
        output_dir=str(tmp_path / "trl"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=8,
        max_steps=1,
        max_prompt_length=256,
        max_completion_length=8,
        report_to=[],
        save_strategy="no",
    )
    teacher = DemonstrationTeacherContextBuilder(SimpleNamespace(args=args))._compose_teacher_prompt(
        dataset[1]["prompt"], dataset[1]["privileged_context"]
    )
    assert teacher[:2] == dataset[1]["prompt"][:2]  # earlier turns kept; the prompt joins the last user turn
    assert teacher[-1]["content"].startswith("And on Sunday?") and pg_target(spec.prompt) in teacher[-1]["content"]

    trainer = SDFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(TINY)),
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(str(TINY)),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss == result.training_loss  # one real step, not NaN

    back, context = import_sdft(tmp_path / "sdft.parquet")
    sft = examples[examples["objective"] == "sft"].reset_index(drop=True)
    pd.testing.assert_frame_equal(back, sft, check_dtype=False)
    assert context == pg_target(spec.prompt)


def test_bad_sdft_files_name_the_file_the_row_and_the_field(tmp_path):
    def write(rows, name):
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / name)
        return tmp_path / name

    good = {
        "prompt": [{"role": "user", "content": "Hi?"}],
        "privileged_context": "The prompt.",
        "completion": [{"role": "assistant", "content": "Hello."}],
        "example_id": "c0:0",
        "conversation_id": "c0",
    }
    no_completion = write([{k: v for k, v in good.items() if k != "completion"}], "a.parquet")
    with pytest.raises(SdftFormatError, match=r"a\.parquet: missing column\(s\) \['completion'\]"):
        import_sdft(no_completion)
    ends_with_agent = write([good | {"prompt": [{"role": "assistant", "content": "x"}]}], "b.parquet")
    with pytest.raises(SdftFormatError, match=r"b\.parquet: row 0 \('c0:0'\): field `prompt`"):
        import_sdft(ends_with_agent)
    two_prompts = write([good, good | {"example_id": "c1:0", "privileged_context": "Another."}], "c.parquet")
    with pytest.raises(SdftFormatError, match=r"c\.parquet: field `privileged_context` holds 2 different prompts"):
        import_sdft(two_prompts)
    (tmp_path / "d.parquet").write_text("not parquet")
    with pytest.raises(SdftFormatError, match=r"d\.parquet: not a readable Parquet file"):
        import_sdft(tmp_path / "d.parquet")


def test_the_cli_exports_a_run_and_imports_it_back(tmp_path, capsys, embedded_model_dir):
    ingested = run_ingest(EXAMPLE_SPEC, ModelConfig(), IngestConfig(), tmp_path / "runs")
    (ingested.run_dir / "dataset").mkdir(parents=True)
    write_table(_examples(), ExamplesSchema, ingested.run_dir / "dataset" / "train.parquet")
    assert main(["trl", "export", str(ingested.run_dir)]) == 0
    exported = ingested.run_dir / "trl" / "sdft_train.parquet"
    assert f"8 contexts -> {exported}" in capsys.readouterr().out
    assert main(["trl", "import", str(exported), "--out", str(tmp_path / "examples.parquet")]) == 0
    assert len(pd.read_parquet(tmp_path / "examples.parquet")) == 8
    assert main(["trl", "export", str(tmp_path)]) == 2
    assert "no dataset/train.parquet" in capsys.readouterr().err

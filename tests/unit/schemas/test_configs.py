"""Every shipped config loads; typos fail up front with the file name."""

from pathlib import Path

import pytest

from schemas.config import PipelineConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    assert isinstance(load_config(path), PipelineConfig)


def test_default_yaml_differs_from_built_in_defaults_only_where_it_says():
    path = next(p for p in CONFIGS if p.name == "default.yaml")
    main_job = load_config(path)
    assert main_job.synth.conversations.max_turns == 1 and not main_job.synth.reasons.enabled
    assert main_job.train.pg_per_step == 1 and main_job.train.pg_every == 9
    synth = main_job.synth.model_copy(
        update={"conversations": PipelineConfig().synth.conversations, "reasons": PipelineConfig().synth.reasons}
    )
    train = main_job.train.model_copy(update={"pg_per_step": None, "pg_every": 1})
    assert main_job.model_copy(update={"synth": synth, "train": train}) == PipelineConfig()


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(
        ValueError, match=r"c.yaml: invalid config\n  field `train.epoch`: Extra inputs are not permitted"
    ):
        load_config(path)


def test_dotted_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=3", "train.lora.rank=8", "backend.share_prefix=false"])
    assert (cfg.train.epochs, cfg.train.lora.rank, cfg.backend.share_prefix) == (3, 8, False)
    with pytest.raises(ValueError, match="train.epochs"):
        load_config(None, ["train.epochs=many"])


def test_openai_backend_needs_a_url():
    with pytest.raises(ValueError, match="needs `base_url`"):
        load_config(None, ["backend.kind=openai"])

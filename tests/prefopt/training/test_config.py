"""The typed schema of prefopt-train's config: registered once, typo-proof, and the
error type for settings that cannot work together."""

import pytest
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError

from prefopt.training.config import ConfigError, TrainConfig, register_schema


def test_the_schema_is_in_the_config_store():
    register_schema()
    register_schema()  # twice is harmless
    assert "train_schema.yaml" in ConfigStore.instance().list("")


def test_the_schema_refuses_unknown_keys_and_wrong_types():
    cfg = OmegaConf.structured(TrainConfig)
    with pytest.raises(ConfigAttributeError):
        cfg.optimizer.lrr = 0.1
    with pytest.raises(ValidationError):
        cfg.optimizer.lr = "fast"
    with pytest.raises(ValidationError):
        cfg.reference = "sometimes"


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)


def test_a_key_only_one_preset_uses_chooses_that_preset():
    from prefopt.training.config import imply_groups

    overrides, notes = imply_groups(["objective=ipo", "data.path=pairs.jsonl",
                                     "model.name_or_path=/models/m", "trainer.max_steps=5"])
    assert overrides == ["objective=ipo", "data=files", "data.path=pairs.jsonl", "model=hf",
                         "model.name_or_path=/models/m", "trainer.max_steps=5"]
    assert notes == [
        "data.path given: using data=files (choose another with data=<name>)",
        "model.name_or_path given: using model=hf (choose another with model=<name>)"]


@pytest.mark.parametrize("overrides", [
    ["data=files", "data.path=a.jsonl"], ["+data=files", "data.path=a.jsonl"],
    ["data.path=a.jsonl", "data@custom=files"], ["~data", "data.path=a.jsonl"],
    ["data.path=null"], ["data.max_length=128", "data.synthetic.n_train=8"],
    ["model=tiny", "model.name_or_path=x"], ["--cfg", "job"],
])
def test_a_chosen_group_or_a_shared_key_implies_nothing(overrides):
    from prefopt.training.config import imply_groups

    assert imply_groups(overrides) == (overrides, [])


def test_sweeps_mixtures_and_columns_imply_the_files_preset():
    from prefopt.training.config import imply_groups

    sweep, _ = imply_groups(["-m", "data.path=a.jsonl,b.jsonl", "seed=1,2"])
    assert sweep == ["-m", "data=files", "data.path=a.jsonl,b.jsonl", "seed=1,2"]
    mix, notes = imply_groups(["data.mix=[{path: a.jsonl, weight: 0.5}]"])
    assert mix[0] == "data=files" and notes[0].startswith("data.mix given")
    columns, _ = imply_groups(["data.columns.chosen=response_a", "data.path=a.jsonl"])
    assert columns == ["data=files", "data.columns.chosen=response_a", "data.path=a.jsonl"]
    # Before a flag that follows the overrides, which would split Hydra's run of them.
    flagged, _ = imply_groups(["data.path=a.jsonl", "--cfg", "job"])
    assert flagged == ["data=files", "data.path=a.jsonl", "--cfg", "job"]


def test_the_files_preset_takes_a_mixture_without_a_path(compose):
    cfg = compose("data=files", "data.mix=[{path: a.jsonl, weight: 0.5}, {path: b.jsonl}]",
                  "data.columns.chosen=response_a")
    data = OmegaConf.to_object(cfg.data)
    assert data.path is None and [s.path for s in data.mix] == ["a.jsonl", "b.jsonl"]
    assert data.mix[0].weight == 0.5 and data.columns.chosen == "response_a"
    assert data.synthetic is None  # data=files never falls back to the synthetic task

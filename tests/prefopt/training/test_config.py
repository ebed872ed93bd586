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


# -- keys a `+` adds where no schema declares them ----------------------------------------

@pytest.mark.parametrize("override,message", [
    ("+data.max_lenght=64",
     "data.max_lenght is not a setting of data (did you mean data.max_length?); remove it"),
    ("+optimizer.learning_rate=0.5",
     "optimizer.learning_rate is not a setting of optimizer (its settings: lr, weight_decay, "
     "beta1, beta2, eps, fused); remove it"),
    ("+model.lora.rank=8",
     "model.lora.rank is not a setting of model.lora (its settings: r, alpha, dropout, "
     "target_modules); remove it"),
    ("+model.tiny.hidden_sise=8", "model.tiny.hidden_sise is not a setting of model.tiny "
                                  "(did you mean model.tiny.hidden_size?); remove it"),
    ("+data.synthetic.n_trian=8", "data.synthetic.n_trian is not a setting of "
                                  "data.synthetic (did you mean data.synthetic.n_train?); "
                                  "remove it"),
    ("+data.columns.chosn=response_a", "data.columns.chosn is not a setting of data.columns "
                                       "(did you mean data.columns.chosen?); remove it"),
    ("+rollout.num_sample=2", "rollout.num_sample is not a setting of rollout (did you mean "
                              "rollout.num_samples?); remove it"),
    ("+samples.cont=2", "samples.cont is not a setting of samples (did you mean "
                        "samples.count?); remove it"),
    ("+seeed=1", "seeed is not a setting of the config (did you mean seed?); remove it"),
    ("+trainer.max_step=3", "trainer.max_step is not an argument of pytorch_lightning.Trainer "
                            "(did you mean trainer.max_steps?); remove it"),
])
def test_a_key_added_with_a_plus_that_nothing_declares_is_refused(compose, override, message):
    from prefopt.training.config import check_keys

    cfg = compose(override)  # Hydra lets `+` add it
    with pytest.raises(ConfigError) as raised:
        check_keys(cfg)
    assert str(raised.value) == message


def test_a_key_in_a_list_of_sources_is_checked_with_its_index(compose):
    from prefopt.training.config import check_keys

    cfg = compose("data=files", "data.mix=[{path: a.jsonl}, {path: b.jsonl}]",
                  "+data.mix.1.wieght=2")
    with pytest.raises(ConfigError, match=r"^data\.mix\[1\]\.wieght is not a setting of "
                                          r"data\.mix\[1\] \(did you mean "
                                          r"data\.mix\[1\]\.weight\?\); remove it$"):
        check_keys(cfg)


def test_open_mappings_take_new_keys(compose):
    from prefopt.training.config import check_keys

    # Lightning arguments, loggers by name, factory keyword arguments: not prefopt's keys.
    check_keys(compose("+trainer.detect_anomaly=true", "+scheduler.kwargs.power=2",
                       "+reward.kwargs.target=8",
                       "+logger.extra={_target_: pytorch_lightning.loggers.CSVLogger}"))


def _group_options() -> list[tuple[str, str]]:
    """(group, option) for every option of every config group, as Hydra lists them
    (objectives and reward functions of the installed plugins included)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from prefopt import registry

    register_schema()
    registry.register_configs()
    with initialize_config_module(config_module="prefopt.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return [(group, option) for group in loader.list_groups("") if group != "hydra"
                for option in loader.get_group_options(group)]


_OPTIONS = _group_options()


def test_every_config_group_has_options():
    assert sorted({group for group, _ in _OPTIONS}) == [
        "data", "logger", "model", "objective", "optimizer", "reward", "scheduler", "trainer"]
    assert ("data", "arithmetic") in _OPTIONS and ("objective", "rpo") in _OPTIONS


@pytest.mark.parametrize("group,option", _OPTIONS)
def test_every_shipped_option_composes_and_passes_the_key_check(compose, group, option):
    from prefopt.training.config import check_keys

    check_keys(compose(f"{group}={option}"))


def test_the_api_refuses_a_forced_typo_before_writing_the_run(tmp_path):
    import prefopt

    with pytest.raises(ConfigError, match=r"^data\.max_lenght is not a setting of data "
                                          r"\(did you mean data\.max_length\?\); remove it$"):
        prefopt.train(data={"+max_lenght": 64}, output_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"^trainer\.max_step is not an argument of "
                                          r"pytorch_lightning\.Trainer"):
        prefopt.train(output_dir=tmp_path / "run", overrides=["+trainer.max_step=3"])
    assert not (tmp_path / "run").exists()

"""Samples: greedy completions of held-out prompts at every validation, in samples.jsonl
(once per step, a resumed run replacing what came after its checkpoint) and in TensorBoard."""

import json
import types

import pytest
from omegaconf import OmegaConf

from prefopt.data.tokenize import TokenizeConfig
from prefopt.generate import GenerationConfig, generate
from prefopt.training.config import ConfigError
from prefopt.training.samples import SampleWriter
from prefopt.training.train import samples_config

PROMPTS = ["sort 5213", "reverse 907"]


def _trainer(step, loggers=()):
    return types.SimpleNamespace(global_step=step, sanity_checking=False, is_global_zero=True,
                                 loggers=list(loggers), strategy=object())


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_row_per_prompt_and_validation_greedy_as_generate_answers(tiny_model, tokenizer,
                                                                      tmp_path):
    path = tmp_path / "samples.jsonl"
    module = types.SimpleNamespace(policy=tiny_model)
    writer = SampleWriter(path, PROMPTS, tokenizer, 5, TokenizeConfig())
    writer.on_validation_end(_trainer(0), module)
    writer.on_validation_end(_trainer(10), module)
    writer.on_validation_end(_trainer(10), module)  # the final validation, same step: once
    greedy = generate(tiny_model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=5))
    assert _rows(path) == [{"step": s, "prompt": p, "completion": c}
                           for s in (0, 10) for p, c in zip(PROMPTS, greedy)]
    assert all(len(tokenizer(c, add_special_tokens=False)["input_ids"]) <= 5 for c in greedy)


def test_a_resumed_run_replaces_the_rows_after_its_checkpoint(tiny_model, tokenizer, tmp_path):
    path = tmp_path / "samples.jsonl"
    module = types.SimpleNamespace(policy=tiny_model)
    first = SampleWriter(path, PROMPTS, tokenizer, 3, TokenizeConfig())
    for step in (0, 10, 20):  # killed after step 20's validation, checkpoint at step 10
        first.on_validation_end(_trainer(step), module)
    resumed = SampleWriter(path, PROMPTS, tokenizer, 3, TokenizeConfig())
    for step in (20, 30):
        resumed.on_validation_end(_trainer(step), module)
    assert [row["step"] for row in _rows(path)] == [0, 0, 10, 10, 20, 20, 30, 30]


def test_sanity_checks_and_other_ranks_write_nothing(tiny_model, tokenizer, tmp_path):
    path = tmp_path / "samples.jsonl"
    module = types.SimpleNamespace(policy=tiny_model)
    writer = SampleWriter(path, PROMPTS, tokenizer, 3, TokenizeConfig())
    writer.on_validation_end(types.SimpleNamespace(**{**vars(_trainer(0)),
                                                      "sanity_checking": True}), module)
    writer.on_validation_end(types.SimpleNamespace(**{**vars(_trainer(0)),
                                                      "is_global_zero": False}), module)
    assert not path.exists()


def test_tensorboard_gets_a_table(tiny_model, tokenizer, tmp_path):
    pytest.importorskip("tensorboard")
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    writer = SampleWriter(tmp_path / "samples.jsonl", PROMPTS, tokenizer, 3, TokenizeConfig())
    writer.on_validation_end(_trainer(7, [logger]), types.SimpleNamespace(policy=tiny_model))
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    (event,) = events.Tensors("samples/text_summary")
    table = event.tensor_proto.string_val[0].decode()
    completions = [row["completion"] for row in _rows(tmp_path / "samples.jsonl")]
    assert event.step == 7
    assert table.splitlines()[0] == "| step | prompt | completion |"
    assert table.splitlines()[2].startswith(f"| 7 | {PROMPTS[0]} | ")
    assert len(table.splitlines()) == 2 + len(PROMPTS) and completions


def test_samples_settings_are_checked_and_zero_turns_them_off():
    def cfg(**samples):
        return OmegaConf.create({"samples": samples})

    assert samples_config(cfg(count=0)).count == 0
    assert samples_config(OmegaConf.create({})).count == 4  # the default
    with pytest.raises(ConfigError, match=r"^samples.count=-1: must be a whole number >= 0; "
                                          r"set samples.count=<n> \(0: no samples\)"):
        samples_config(cfg(count=-1))
    with pytest.raises(ConfigError, match=r"^samples.max_new_tokens=0: must be a whole number "
                                          r">= 1"):
        samples_config(cfg(max_new_tokens=0))
    with pytest.raises(ConfigError, match=r"^samples.cuont: no such setting; samples has "
                                          r"count, max_new_tokens"):
        samples_config(cfg(cuont=2))


def test_samples_are_settings_of_prefopt_train(compose):
    # The schema declares them: count=0 composes, a typo is refused naming it.
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigKeyError

    from prefopt.training.samples import SamplesConfig

    assert samples_config(compose("samples.count=0")) == SamplesConfig(count=0)
    assert samples_config(compose()) == SamplesConfig(count=4, max_new_tokens=16)
    with pytest.raises((ConfigCompositionException, ConfigKeyError), match="cout"):
        compose("samples.cout=1")

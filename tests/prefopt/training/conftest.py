"""Fixtures of the training tests: a batch of two pairs and a DPO module on the tiny model."""

import pytest

from prefopt.data.collate import collate_groups
from prefopt.data.records import pairwise_record
from prefopt.data.tokenize import Encoder, TokenizeConfig
from prefopt.models import make_reference
from prefopt.plugins.dpo import DPO
from prefopt.training.module import PreferenceModule
from prefopt.training.optim import OptimizerConfig, SchedulerConfig


@pytest.fixture
def pair_batch(tokenizer):
    records = [pairwise_record("sort 21", "12", "21", "r0"),
               pairwise_record("sort 9", "9", "8", "r1")]
    pairs, _ = Encoder(tokenizer, TokenizeConfig()).encode_all(records)
    return collate_groups(pairs, tokenizer.pad_token_id)


@pytest.fixture
def dpo_module():
    """dpo_module(model, **dpo_config) -> a PreferenceModule hosting DPO on `model`."""
    def make(model, **dpo):
        objective = DPO(DPO.Config(name="dpo", **dpo))
        reference = make_reference(model) if objective.needs().reference else None
        return PreferenceModule(model, reference, objective, OptimizerConfig(),
                                SchedulerConfig(), logprob_impl="torch")
    return make

"""Model cards of exported policies (prefopt.training.export)."""

import types

import pytest
import yaml

from prefopt.training.export import model_card
from prefopt.training.train import _run_facts


@pytest.mark.parametrize("objective,setting,value", [
    ("sft", "average", "token"),   # an enum setting: written by its name
    ("aot", "form", "paired"),
    ("dpo", "beta", 0.1),
])
def test_the_card_writes_every_objective_setting(compose, objective, setting, value):
    cfg = compose(f"objective={objective}")
    facts = _run_facts(cfg, None, types.SimpleNamespace(reports={}),
                       {"val/loss": 0.25}, steps=7)
    card = model_card(facts, adapter=False)
    block = card.split("## Objective")[1].split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(block)[setting] == value
    assert "| `val/loss` | 0.2500 |" in card and "- optimizer steps: 7" in card


def test_a_mixture_is_named_as_the_cards_data_source(compose, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    cfg = compose(f"data.mix=[{{path: {a}, weight: 0.5}}, {{path: {b}, weight: 2.0}}]")
    facts = _run_facts(cfg, None, types.SimpleNamespace(reports={}), {}, steps=1)
    assert facts.data["source"] == f"a mixture: `{a}` (weight 0.5), `{b}` (weight 2.0)"

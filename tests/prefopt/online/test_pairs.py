"""Online pairs: judging (chosen = higher reward, ties dropped), the judged batch, the
objectives online=true accepts and refuses, and seeded sampling."""

import pytest
import torch

from prefopt.data.prompts import collate_prompts
from prefopt.online.pairs import judge, pair_groups
from prefopt.online.rollout import Rollout


def test_chosen_is_the_higher_reward_and_ties_are_dropped():
    # k = 2: prompt 0 prefers sample 0, prompt 1 ties, prompt 2 prefers sample 1.
    pairs = judge(torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.9]), k=2)
    assert pairs.prompts == [0, 2]
    assert pairs.chosen == [0, 5] and pairs.rejected == [1, 4]
    assert pairs.ties == 1 and len(pairs) == 2


def test_with_more_samples_the_best_is_paired_with_the_worst_first_on_equals():
    # k = 3: best 0.7 (rows 1 and 2: the first, 1), worst 0.1 (row 0); then all equal.
    pairs = judge(torch.tensor([0.1, 0.7, 0.7, 3.0, 3.0, 3.0]), k=3)
    assert (pairs.chosen, pairs.rejected, pairs.ties) == ([1], [0], 1)
    pairs = judge(torch.tensor([0.4, 0.4, -1.0, 2.0]), k=4)
    assert (pairs.chosen, pairs.rejected) == ([3], [2])


def test_only_ties_give_no_pairs():
    pairs = judge(torch.zeros(6), k=2)
    assert len(pairs) == 0 and pairs.ties == 3


def test_scores_that_are_not_prompts_times_samples_are_refused():
    with pytest.raises(ValueError, match="not prompts × 2 samples"):
        judge(torch.zeros(3), k=2)


def test_pairs_carry_the_sampled_token_ids():
    # Two prompts (ids [5] and [6, 7]), two samples each, laid out as a rollout is.
    rows = [([5], [10, 11]), ([5], [12]), ([6, 7], [13]), ([6, 7], [14, 15, 16])]
    from prefopt.data.collate import right_padded

    batch = right_padded(rows, pad_id=0)
    rollout = Rollout(batch=batch, prompts=["a", "a", "b", "b"], completions=[""] * 4,
                      ended=torch.ones(4, dtype=torch.bool), lengths=torch.tensor([2, 1, 1, 3]))
    pairs = judge(torch.tensor([0.0, 1.0, 2.0, 1.0]), k=2)
    groups = pair_groups(rollout, [[5], [6, 7]], pairs)
    assert [(g.prompt, g.chosen, g.rejected) for g in groups] == [
        ([5], [12], [10, 11]), ([6, 7], [13], [14, 15, 16])]
    assert all(g.ranks == (0, 1) for g in groups)


@pytest.mark.parametrize("objective, fmt", [("kto", "unpaired"), ("reinforce", "prompts"),
                                            ("kwise", "ranked")])
def test_a_non_pairwise_objective_is_refused_naming_its_format(compose, objective, fmt):
    from prefopt.training.config import ConfigError
    from prefopt.training.train import build

    with pytest.raises(ConfigError) as err:
        build(compose(f"objective={objective}", "online=true"))
    message = str(err.value)
    assert "\n" not in message
    assert f"objective '{objective}' consumes {fmt} records" in message


def test_a_reward_model_objective_is_refused(compose):
    from prefopt.training.config import ConfigError
    from prefopt.training.train import build

    with pytest.raises(ConfigError, match="objective 'reward_bt' trains a reward model"):
        build(compose("objective=reward_bt", "online=true"))


def test_a_cached_reference_is_refused(compose):
    from prefopt.training.config import ConfigError
    from prefopt.training.train import build

    with pytest.raises(ConfigError, match="reference=cached cannot serve objective 'dpo' "
                                          "with online=true"):
        build(compose("objective=dpo", "online=true", "reference=cached"))


def test_one_sample_per_prompt_is_refused(compose):
    from prefopt.training.config import ConfigError
    from prefopt.training.train import build

    with pytest.raises(ConfigError, match="rollout.num_samples=1"):
        build(compose("objective=dpo", "online=true", "rollout.num_samples=1"))


def test_sampling_depends_on_the_seed_and_the_batch_index_only(compose):
    from prefopt.online.pairs import OnlinePairsModule
    from prefopt.training.train import build

    module, datamodule, _ = build(compose(
        "objective=ipo", "online=true", "data.synthetic.n_train=8", "data.synthetic.n_val=4",
        "rollout.max_new_tokens=6"))
    assert isinstance(module, OnlinePairsModule)
    datamodule.setup("fit")
    batch = collate_prompts(datamodule.groups["train"][:3])
    torch.manual_seed(1)
    first = module.sample_batch(batch, batch_idx=5).completions
    torch.manual_seed(2)  # the global random state does not enter
    again = module.sample_batch(batch, batch_idx=5).completions
    other = module.sample_batch(batch, batch_idx=6).completions
    assert first == again and len(first) == 3 * 4
    assert first != other

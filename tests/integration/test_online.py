"""OnlineModule end to end on the tiny model: rollouts, the PPO ratio, rewards that fail."""

import csv
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from prefopt.online.rewards import RewardError
from prefopt.plugins.ppo import PPO
from prefopt.training.train import build, train

BIN = os.path.dirname(sys.executable)
ONLINE = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
          "trainer.enable_progress_bar=false", "data.synthetic.n_train=32",
          "data.synthetic.n_val=8", "data.batch_size=4", "rollout.num_samples=2",
          "rollout.max_new_tokens=6", "export_policy=false"]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def digits_reward(monkeypatch, tmp_path):
    """A reward that varies on a random policy's samples (the task's is 0 almost always,
    which would leave nothing to learn): the share of digits in the completion."""
    monkeypatch.syspath_prepend(str(_reward_module(tmp_path, "digit_rewards", """
        def digits(prompt, completion):
            return sum(c.isdigit() for c in completion) / 6
    """)))
    return "reward.function=digit_rewards:digits"


def test_ppo_ratio_is_exactly_one_on_the_first_minibatch_of_each_rollout(
        compose, monkeypatch, digits_reward):
    calls = []
    original = PPO.loss

    def spy(self, inputs):
        calls.append((inputs.logps.detach().clone(), inputs.old_logps.clone(), inputs.mask))
        return original(self, inputs)

    monkeypatch.setattr(PPO, "loss", spy)
    # 2 epochs of 2 minibatches: 4 optimizer steps per rollout, 3 rollouts; no warmup,
    # whose first step has lr 0.
    train(compose("objective=ppo", *ONLINE, "trainer.max_steps=12", "objective.epochs=2",
                  "objective.minibatches=2", "scheduler.warmup_ratio=0", digits_reward))
    assert len(calls) == 12
    for step, (logps, old, mask) in enumerate(calls):
        ratio = torch.exp(logps - old)[mask]
        if step % 4 == 0:  # the first minibatch of a rollout: bitwise the sampling policy
            assert torch.equal(ratio, torch.ones_like(ratio)), step
        else:  # after an optimizer step the policy has moved
            assert not torch.equal(ratio, torch.ones_like(ratio)), step


@pytest.mark.parametrize("objective", ["reinforce", "ppo"])
def test_online_run_logs_the_metrics_and_is_reproducible(compose, objective, tmp_path):
    first = train(compose(f"objective={objective}", *ONLINE, f"output_dir={tmp_path / 'a'}"))
    rows = _rows(tmp_path / "a" / "metrics.csv")
    logged = {k for r in rows for k, v in r.items() if v}
    expected = {"train/loss", "train/reward/mean", "train/reward/std", "train/kl",
                "train/entropy", "train/response/length", "train/response/ended",
                "val/reward/mean", "val/response/length"}
    if objective == "ppo":
        expected |= {"train/ppo/clip_fraction", "train/ppo/approx_kl", "train/ppo/value_loss",
                     "train/ppo/explained_variance", "train/ppo/kl_coef"}
    assert expected <= logged
    # prefopt-eval rebuilds the run and reproduces its final validation.
    from prefopt.evaluate import evaluate

    assert evaluate(tmp_path / "a")["metrics"] == pytest.approx(first["end"], rel=1e-6)
    # Sampling depends on the seed and the step only: a second run is the same run.
    second = train(compose(f"objective={objective}", *ONLINE, f"output_dir={tmp_path / 'b'}"))
    assert first == second
    assert [r["train/reward/mean"] for r in rows] == \
        [r["train/reward/mean"] for r in _rows(tmp_path / "b" / "metrics.csv")]


def test_separate_value_model_trains_and_the_policy_exports_without_it(compose, tmp_path,
                                                                       digits_reward):
    # With an entropy bonus too: the entropy then carries a gradient (Needs.entropy).
    cfg = compose("objective=ppo", "objective.value_model=separate", *ONLINE,
                  "objective.entropy_coef=0.01", "export_policy=true", digits_reward)
    module, _, _ = build(cfg)
    head = module.value_model.head.linear.weight
    assert head.abs().sum() == 0  # zero-initialised
    train(cfg)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False,
                       map_location="cpu")["state_dict"]
    assert state["value_model.head.linear.weight"].abs().sum() > 0  # it has learnt
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "policy")  # a plain causal LM


def _reward_module(tmp_path, name, body):
    """A module `name` in tmp_path (a name per test: imports are cached per process)."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return tmp_path


def test_a_raising_reward_function_stops_prefopt_train_naming_it_and_the_sample(tmp_path):
    site = _reward_module(tmp_path, "my_rewards", """
        def flaky(prompt, completion):
            if prompt.startswith("reverse"):
                raise ZeroDivisionError("cannot score this")
            return 1.0
    """)
    result = subprocess.run(
        [os.path.join(BIN, "prefopt-train"), "objective=reinforce",
         "reward.function=my_rewards:flaky", *ONLINE, f"output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = result.stderr
    assert "reward function my_rewards:flaky raised ZeroDivisionError: cannot score this" \
        in message
    assert "on sample" in message and "(prompt 'reverse" in message


def test_a_non_finite_reward_stops_the_run(compose, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(_reward_module(tmp_path, "nan_rewards", """
        def nan_for_sort(prompt, completion):
            return float("nan") if prompt.startswith("sort") else 0.5
    """)))
    with pytest.raises(RewardError, match=r"nan_rewards:nan_for_sort returned nan on sample \d+ "
                                          r"\(prompt 'sort"):
        train(compose("objective=reinforce", "reward.function=nan_rewards:nan_for_sort", *ONLINE))


def test_reward_model_as_the_reward_source(compose, fast_overrides, tmp_path):
    train(compose("objective=reward_bt", *fast_overrides, f"output_dir={tmp_path / 'rm'}"))
    result = train(compose("objective=reinforce", "reward=model",
                           f"reward.model={tmp_path / 'rm' / 'policy'}", *ONLINE))
    assert torch.isfinite(torch.tensor(result["end"]["val/reward/mean"]))


def test_online_objectives_refuse_a_cached_reference(compose):
    from prefopt.training.config import ConfigError

    with pytest.raises(ConfigError, match="reference=cached cannot serve objective 'ppo'"):
        build(compose("objective=ppo", "reference=cached"))


def test_gradient_clipping_moves_from_the_trainer_to_the_module(compose, monkeypatch):
    seen = {}
    import pytorch_lightning as pl

    class Trainer(pl.Trainer):
        def __init__(self, **kwargs):
            seen.update(kwargs)
            super().__init__(**kwargs)

    from prefopt.training import train as train_module

    monkeypatch.setattr(train_module.pl, "Trainer", Trainer)
    cfg = compose("objective=reinforce", *ONLINE, "trainer.gradient_clip_val=0.5")
    module, datamodule, tokenizer = build(cfg)
    datamodule.setup("fit")
    from pathlib import Path

    train_module._fit(cfg, Path(cfg.output_dir), module, datamodule, tokenizer)
    assert "gradient_clip_val" not in seen and module.gradient_clip_val == 0.5


def test_lora_policy_with_the_base_as_reference(compose, digits_reward):
    cfg = compose("objective=reinforce", "model.lora.r=4", *ONLINE, digits_reward)
    module, _, _ = build(cfg)
    assert module.reference is None and module.reference_is_base
    result = train(cfg)
    assert result["end"]["val/reward/mean"] == result["end"]["val/reward/mean"]


class _Crash(RuntimeError):
    pass


def test_a_crashed_online_run_resumes_exactly(compose, monkeypatch, tmp_path, digits_reward):
    """PPO with adaptive KL (state in the objective): a run that dies after the checkpoint
    at rollout 4 and is resumed with ckpt_path=last ends exactly as an uninterrupted one."""
    from prefopt.online.module import OnlineModule

    run = ["objective=ppo", *ONLINE, "objective.epochs=2", "objective.target_kl=0.5",
           "trainer.max_steps=16", "trainer.val_check_interval=4", digits_reward]
    whole = train(compose(*run, f"output_dir={tmp_path / 'whole'}"))

    step = OnlineModule.training_step

    def crash_after_six_rollouts(self, batch, batch_idx):
        if self.global_step >= 12:
            raise _Crash("killed")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(OnlineModule, "training_step", crash_after_six_rollouts)
    with pytest.raises(_Crash):
        train(compose(*run, f"output_dir={tmp_path / 'crashed'}"))
    rollouts = []

    def counted(self, batch, batch_idx):
        rollouts.append(self.global_step)
        return step(self, batch, batch_idx)

    monkeypatch.setattr(OnlineModule, "training_step", counted)
    resumed = train(compose(*run, f"output_dir={tmp_path / 'crashed'}", "ckpt_path=last"))
    assert rollouts == [8, 10, 12, 14]  # from the checkpoint at rollout 4, not from the start
    assert resumed["end"] == pytest.approx(whole["end"], rel=1e-6)
    last = [r for r in _rows(tmp_path / "whole" / "metrics.csv") if r["train/ppo/kl_coef"]][-1]
    again = [r for r in _rows(tmp_path / "crashed" / "metrics.csv")
             if r["train/ppo/kl_coef"]][-1]
    assert again["train/ppo/kl_coef"] == last["train/ppo/kl_coef"] != "0.05"
    assert again["train/reward/mean"] == last["train/reward/mean"]


# -- dynamic sampling (DAPO) -------------------------------------------------------------

def _scores_by_prompt(prompts, completions):
    """'sort' prompts: 1 for every sample (a uniform group); 'reverse' prompts: a score
    that differs between different completions."""
    return torch.tensor([1.0 if p.startswith("sort") else
                         (sum(map(ord, c)) % 997) / 997 + 0.001 * len(c)
                         for p, c in zip(prompts, completions)])


def _sampling_module(tokenizer, model, reward, seed=0, **rollout):
    from prefopt.data.prompts import EncodedPrompt, collate_prompts
    from prefopt.online.module import OnlineModule
    from prefopt.online.rollout import RolloutConfig
    from prefopt.plugins.grpo import GRPO
    from prefopt.training.optim import OptimizerConfig, SchedulerConfig

    module = OnlineModule(model, None, GRPO(GRPO.Config(name="grpo", beta=0.0)),
                          OptimizerConfig(), SchedulerConfig(), tokenizer, reward=reward,
                          rollout=RolloutConfig(num_samples=2, max_new_tokens=4,
                                                dynamic_sampling=True, **rollout),
                          logprob_impl="torch", seed=seed)
    texts = [f"{task} {n:04d}" for n in range(20) for task in ("sort", "reverse")]
    module.prompt_pool = [EncodedPrompt(t, tokenizer(t)["input_ids"], f"pool:{i}")
                          for i, t in enumerate(texts)]
    return module, collate_prompts(module.prompt_pool[:4])  # 2 sort, 2 reverse


def _uniform_groups_by_hand(prompts, scores, k):
    return sum(len(set(scores[g * k:(g + 1) * k].tolist())) == 1
               for g in range(len(prompts) // k))


def test_dynamic_sampling_drops_uniform_groups_and_refills_the_batch(tokenizer, tiny_model,
                                                                     monkeypatch):
    from prefopt.online.module import OnlineModule

    module, batch = _sampling_module(tokenizer, tiny_model, _scores_by_prompt)
    draws = []
    scored = OnlineModule._scored

    def spy(self, prompts, draw=0):
        out = scored(self, prompts, draw)
        draws.append(out)
        return out

    monkeypatch.setattr(OnlineModule, "_scored", spy)
    (rollout, raw, scores), metrics = module._dynamically_sampled(batch, module._scored(batch))
    assert len(draws) >= 2  # the 2 sort prompts of the first draw had to be replaced
    dropped = sum(_uniform_groups_by_hand(r.prompts, s, 2) for r, _, s in draws)
    assert metrics["dynamic_sampling/dropped_groups"].item() == dropped >= 2
    assert metrics["dynamic_sampling/draws"].item() == len(draws) - 1
    assert metrics["dynamic_sampling/capped"].item() == 0.0
    # a full batch of 4 prompts x 2 samples, none of them uniform, none of them 'sort'
    assert len(rollout.completions) == 8 and rollout.batch["group"].tolist() == \
        [0, 0, 1, 1, 2, 2, 3, 3]
    assert _uniform_groups_by_hand(rollout.prompts, scores, 2) == 0
    assert not any(p.startswith("sort") for p in rollout.prompts)
    # the rows are the samples that were drawn: the kept rows of each draw, in order
    kept = [(p, c) for r, _, s in draws for i, (p, c) in enumerate(zip(r.prompts, r.completions))
            if len(set(s[i // 2 * 2:i // 2 * 2 + 2].tolist())) > 1]
    assert list(zip(rollout.prompts, rollout.completions)) == kept[:8]
    torch.testing.assert_close(raw, _scores_by_prompt(rollout.prompts, rollout.completions))
    for row in range(8):  # the token rows still hold each completion, right-padded
        ids = rollout.batch["input_ids"][row][rollout.batch["completion_mask"][row]]
        assert tokenizer.decode(ids, skip_special_tokens=True) == rollout.completions[row]


def test_dynamic_sampling_honours_its_cap_and_trains_on_the_first_draw(tokenizer, tiny_model):
    def constant(prompts, completions):
        return torch.ones(len(completions))

    module, batch = _sampling_module(tokenizer, tiny_model, constant, max_resample_rounds=2)
    first = module._scored(batch)
    (rollout, _, _), metrics = module._dynamically_sampled(batch, first)
    assert metrics["dynamic_sampling/draws"].item() == 2
    assert metrics["dynamic_sampling/dropped_groups"].item() == 3 * 4  # 3 draws of 4
    assert metrics["dynamic_sampling/capped"].item() == 1.0
    assert metrics["dynamic_sampling/groups"].item() == 0
    assert rollout is first[0]


def test_dynamic_sampling_draws_depend_on_the_seed_and_step_only(tokenizer, tiny_model,
                                                                 monkeypatch):
    """What a resumed run relies on: a fresh module at the same step draws the same extra
    prompts and samples; another step draws others."""
    import types

    def at_step(step, seed=0):
        module, batch = _sampling_module(tokenizer, tiny_model, _scores_by_prompt, seed=seed)
        module._trainer = types.SimpleNamespace(global_step=step)
        monkeypatch.setattr(type(module), "global_step", property(
            lambda self: self._trainer.global_step))
        (rollout, _, _), _ = module._dynamically_sampled(batch, module._scored(batch))
        return rollout.prompts, rollout.completions

    drawn = at_step(5)
    assert at_step(5) == drawn
    assert at_step(6) != drawn
    assert at_step(5, seed=1) != drawn


@pytest.mark.slow
def test_online_grpo_run_with_dynamic_sampling_logs_and_resumes_exactly(compose, monkeypatch,
                                                                        tmp_path,
                                                                        digits_reward):
    from prefopt.online.module import OnlineModule

    run = ["objective=dapo", *ONLINE, "trainer.max_steps=4", "rollout.dynamic_sampling=true",
           "rollout.max_resample_rounds=1", digits_reward]
    whole = train(compose(*run, f"output_dir={tmp_path / 'whole'}"))
    logged = {k for r in _rows(tmp_path / "whole" / "metrics.csv") for k, v in r.items() if v}
    assert {"train/dynamic_sampling/dropped_groups", "train/dynamic_sampling/draws",
            "train/dynamic_sampling/capped", "train/dynamic_sampling/groups",
            "train/grpo/clip_fraction_low", "train/grpo/clip_fraction_high",
            "train/grpo/overlong_penalty", "train/reward/zero_std_fraction",
            "train/response/length_max", "train/response/truncated"} <= logged
    step = OnlineModule.training_step

    def crash(self, batch, batch_idx):  # after the checkpoint at step 2
        if self.global_step >= 3:
            raise _Crash("killed")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(OnlineModule, "training_step", crash)
    with pytest.raises(_Crash):
        train(compose(*run, f"output_dir={tmp_path / 'crashed'}"))
    monkeypatch.setattr(OnlineModule, "training_step", step)
    resumed = train(compose(*run, f"output_dir={tmp_path / 'crashed'}", "ckpt_path=last"))
    assert resumed["end"] == pytest.approx(whole["end"], rel=1e-6)
    key = "train/dynamic_sampling/dropped_groups"
    last = [r for r in _rows(tmp_path / "whole" / "metrics.csv") if r[key]][-1]
    again = [r for r in _rows(tmp_path / "crashed" / "metrics.csv") if r[key]][-1]
    assert (again[key], again["train/reward/mean"]) == (last[key], last["train/reward/mean"])

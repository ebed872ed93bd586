"""Online pairwise training (online=true) end to end on the tiny model: the run, its
metrics and its reproducibility, a resume that samples what the uninterrupted run did, and
online DPO (and IPO) raising held-out preference accuracy from the SFT warm start."""

import csv

import pytest
import torch

from prefopt.online.pairs import OnlinePairsModule
from prefopt.training.train import train

QUIET = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
SMALL = ["online=true", "data.synthetic.n_train=32", "data.synthetic.n_val=8",
         "data.batch_size=4", "rollout.num_samples=2", "rollout.max_new_tokens=6",
         "trainer.max_steps=4", "trainer.val_check_interval=2", "export_policy=false", *QUIET]


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def digits_reward(monkeypatch, tmp_path):
    """A reward that varies on a random policy's samples (the task's is 0 almost always,
    every pair a tie): the number of digits in the completion."""
    (tmp_path / "pair_rewards.py").write_text(
        "def digits(prompt, completion):\n"
        "    return float(sum(c.isdigit() for c in completion))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "reward.function=pair_rewards:digits"


def test_an_online_dpo_run_logs_its_metrics_and_evaluates_again(compose, tmp_path,
                                                                digits_reward):
    first = train(compose("objective=dpo", *SMALL, digits_reward,
                          f"output_dir={tmp_path / 'a'}"))
    logged = {k for r in _rows(tmp_path / "a" / "metrics.csv") for k, v in r.items() if v}
    assert {"train/loss", "train/reward/mean", "train/reward/chosen", "train/reward/rejected",
            "train/pairs/ties", "train/pairs/count", "train/rewards/accuracies",
            "train/logps/chosen", "train/kl", "val/rewards/accuracies", "val/loss"} <= logged
    for row in _rows(tmp_path / "a" / "metrics.csv"):
        if row.get("train/reward/chosen"):  # the judge's choice, as logged
            assert float(row["train/reward/chosen"]) > float(row["train/reward/rejected"])
    # prefopt-eval rebuilds the run (online=true included) and reproduces its validation.
    from prefopt.evaluate import evaluate

    assert evaluate(tmp_path / "a")["metrics"] == pytest.approx(first["end"], rel=1e-6)


def test_a_batch_of_only_ties_skips_the_step(compose, tmp_path, monkeypatch):
    """A constant reward ties every pair: no loss, no gradient, the weights do not move (the
    batch still counts towards trainer.max_steps), and the tie fraction says why."""
    (tmp_path / "flat_rewards.py").write_text("def flat(prompt, completion):\n"
                                              "    return 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    outputs, modules, first_weights = [], [], {}
    original = OnlinePairsModule.training_step

    def spy(self, batch, batch_idx):
        if not first_weights:
            first_weights.update({k: v.clone() for k, v in self.policy.state_dict().items()})
        modules.append(self)
        outputs.append(original(self, batch, batch_idx))
        return outputs[-1]

    monkeypatch.setattr(OnlinePairsModule, "training_step", spy)
    result = train(compose("objective=dpo", *SMALL, "reward.function=flat_rewards:flat",
                           f"output_dir={tmp_path / 'run'}"))
    assert len(outputs) == 4 and all(out is None for out in outputs)
    after = modules[-1].policy.state_dict()
    assert all(torch.equal(first_weights[k], after[k]) for k in first_weights)
    ties = [float(r["train/pairs/ties"]) for r in _rows(tmp_path / "run" / "metrics.csv")
            if r.get("train/pairs/ties")]
    assert ties and all(t == 1.0 for t in ties)
    assert result["end"]["val/loss"] == result["start"]["val/loss"]


class _Crash(RuntimeError):
    pass


def test_a_resumed_run_samples_what_the_uninterrupted_one_did(compose, monkeypatch, tmp_path,
                                                               digits_reward):
    run = ["objective=ipo", *SMALL, "trainer.max_steps=5", "trainer.val_check_interval=2",
           digits_reward]
    sampled = {}
    original = OnlinePairsModule.sample_batch

    def recording(self, batch, batch_idx):
        rollout = original(self, batch, batch_idx)
        sampled.setdefault(self.current_epoch * 1000 + batch_idx, []).append(
            rollout.completions)
        return rollout

    monkeypatch.setattr(OnlinePairsModule, "sample_batch", recording)
    whole = train(compose(*run, f"output_dir={tmp_path / 'whole'}"))
    uninterrupted, sampled = sampled, {}

    step = OnlinePairsModule.training_step

    def crash(self, batch, batch_idx):
        if batch_idx >= 3:
            raise _Crash("killed")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(OnlinePairsModule, "training_step", crash)
    with pytest.raises(_Crash):
        train(compose(*run, f"output_dir={tmp_path / 'crashed'}"))
    monkeypatch.setattr(OnlinePairsModule, "training_step", step)
    sampled = {}
    resumed = train(compose(*run, f"output_dir={tmp_path / 'crashed'}", "ckpt_path=last"))
    assert sorted(sampled) == [2, 3, 4]  # from the checkpoint after 2 batches, to the end
    for key, completions in sampled.items():
        assert completions == uninterrupted[key], key
    assert resumed["end"] == pytest.approx(whole["end"], rel=1e-6)


# -- online DPO from an SFT warm start -------------------------------------------------

def heldout_logps(policy_dir) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ log π of the chosen and of the rejected completion of each of the synthetic
    task's held-out pairs, under the exported policy in `policy_dir`."""
    from prefopt.data.datamodule import DataConfig, PreferenceDataModule
    from prefopt.data.synthetic import SyntheticConfig
    from prefopt.generate import load_policy
    from prefopt.logprobs import completion_logps

    policy, tokenizer, _ = load_policy(str(policy_dir))
    data = PreferenceDataModule(DataConfig(max_length=64, synthetic=SyntheticConfig(n_train=8)),
                                tokenizer)
    data.setup()
    chosen, rejected = [], []
    with torch.no_grad():
        for batch in data.val_dataloader():
            logps = completion_logps(policy, batch, impl="torch").logps
            chosen.append(logps[batch["slot"] == 0])
            rejected.append(logps[batch["slot"] == 1])
    return torch.cat(chosen), torch.cat(rejected)


def implicit_reward_accuracy(policy_dir, reference_dir) -> float:
    """DPO's held-out preference accuracy, computed apart from the training loop from the
    two exported models: the share of held-out pairs whose implicit reward
    log π/π_ref is strictly higher for the chosen answer than for the rejected one."""
    chosen, rejected = heldout_logps(policy_dir)
    ref_chosen, ref_rejected = heldout_logps(reference_dir)
    return float(((chosen - ref_chosen) > (rejected - ref_rejected)).float().mean())


def mean_sampled_reward(policy_dir, samples: int = 4) -> float:
    """The task's graded reward of 4 samples (T = 1) of each held-out prompt, scored by the
    task's own program on the exported policy, apart from the training loop."""
    from prefopt.data.synthetic import SyntheticConfig, score, splits
    from prefopt.generate import GenerationConfig, generate, load_policy

    prompts = [r["prompt"] for r in splits(SyntheticConfig(), "prompts")["val"]]
    policy, tokenizer, _ = load_policy(str(policy_dir))
    torch.manual_seed(0)
    answers = generate(policy, tokenizer, prompts, GenerationConfig(
        max_new_tokens=8, do_sample=True, num_samples=samples))
    return sum(score(prompts[i // samples], a) for i, a in enumerate(answers)) / len(answers)


@pytest.fixture(scope="module")
def sft_policy(registered, tmp_path_factory):
    """The tiny policy after 400 SFT steps: it samples right answers often (graded reward
    ~0.6), so that the judged pairs of its samples are about the task. From the online
    RL tests' 150-step warm start (reward ~0.15) best and worst samples are both
    mostly noise, and online DPO's held-out accuracy falls (0.50 -> 0.39, measured)."""
    from hydra import compose, initialize_config_module

    out = tmp_path_factory.mktemp("sft400")
    with initialize_config_module(config_module="prefopt.conf", version_base="1.3"):
        train(compose("train", overrides=["objective=sft", "trainer.max_steps=400",
                                          f"output_dir={out}", "trainer.enable_progress_bar=false",
                                          "trainer.log_every_n_steps=50"]))
    return out / "policy"


@pytest.mark.slow
def test_online_dpo_from_an_sft_policy_raises_held_out_preference_accuracy(
        compose, sft_policy, tmp_path):
    """DPO on pairs the policy samples (the best of 4 over the worst, judged by the task's
    graded reward), at a fine-tuning learning rate, raises DPO's held-out preference
    accuracy from 0.5 (π = π_ref: every margin 0) and keeps the sampled reward."""
    run = tmp_path / "run"
    result = train(compose(
        "objective=dpo", "online=true", "model=hf", f"model.name_or_path={sft_policy}",
        "rollout.num_samples=4", "rollout.max_new_tokens=8", "data.batch_size=16",
        "optimizer.lr=1e-4", "trainer.max_steps=150", "trainer.val_check_interval=1000",
        f"output_dir={run}", *QUIET))
    accuracy = implicit_reward_accuracy(run / "policy", sft_policy)
    before, after = mean_sampled_reward(sft_policy), mean_sampled_reward(run / "policy")
    print(f"online dpo: held-out preference accuracy {accuracy:.3f} (the loop's "
          f"val/rewards/accuracies {result['start']['val/rewards/accuracies']:.3f} -> "
          f"{result['end']['val/rewards/accuracies']:.3f}); sampled reward {before:.3f} -> "
          f"{after:.3f}")
    assert accuracy >= 0.6, accuracy
    assert result["end"]["val/rewards/accuracies"] == pytest.approx(accuracy, abs=0.03)
    assert after >= before - 0.02, (before, after)


# -- the arithmetic task ---------------------------------------------------------------

def heldout_exact_match(policy, tokenizer) -> float:
    """The share of the arithmetic task's held-out prompts whose greedy answer is the
    number Python computes from the prompt's text."""
    import re

    from prefopt.data.arithmetic import ArithmeticConfig, splits
    from prefopt.generate import GenerationConfig, generate

    prompts = [r["prompt"] for r in splits(ArithmeticConfig(), "prompts")["val"]]
    answers = generate(policy, tokenizer, prompts, GenerationConfig(max_new_tokens=4))
    right = 0
    for prompt, answer in zip(prompts, answers):
        a, op, b = re.fullmatch(r"(\d+)([+-])(\d+)=", prompt).groups()
        right += answer.strip() == str(int(a) + int(b) if op == "+" else int(a) - int(b))
    return right / len(prompts)


@pytest.mark.slow
def test_sft_on_the_arithmetic_task_teaches_held_out_sums(compose, tmp_path):
    from prefopt.generate import load_policy
    from prefopt.training.train import build

    cfg = compose("objective=sft", "data=arithmetic", "data.max_length=16",
                  "trainer.max_steps=200", "trainer.val_check_interval=1000",
                  f"output_dir={tmp_path / 'run'}", *QUIET)
    import pytorch_lightning as pl

    pl.seed_everything(cfg.seed, verbose=False)  # as train() seeds before building
    module, _, tokenizer = build(cfg)  # the run's initial policy
    before = heldout_exact_match(module.policy, tokenizer)
    train(cfg)
    policy, tokenizer, _ = load_policy(str(tmp_path / "run" / "policy"))
    after = heldout_exact_match(policy, tokenizer)
    print(f"arithmetic: held-out greedy exact match {before:.3f} -> {after:.3f}")
    assert after >= before + 0.05, (before, after)

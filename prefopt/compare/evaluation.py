"""What a trained policy earns on the built-in task, and how far it moved: the two axes of
the reward–KL frontier of Rafailov et al., "Direct Preference Optimization: Your Language
Model is Secretly a Reward Model", NeurIPS 2023, arXiv:2305.18290, Figure 2 (left).

For a run, `P` held-out prompts of the synthetic task (the first of its validation split,
which training never saw) are each answered with `k` completions sampled from the final
policy π at temperature 1 (no top-k, top-p 1: π's own distribution, the one whose
log-probs are taken), at most `max_new_tokens` tokens, ending at the first EOS
(`prefopt.online.rollout.sample`). Then, over the N = P·k samples y_i:

    true reward  R̂  = (1/N) Σ_i score(x_i, y_i)                     score ∈ [0, 1]
    KL estimate  K̂  = (1/N) Σ_i Σ_t [log π(y_i,t | x_i, y_i,<t) − log π_ref(y_i,t | …)]

`score` is the task's programmatic reward (`prefopt.data.synthetic.score`: the share of
positions holding the right character). K̂ is the Monte Carlo estimate of the sequence-
level KL(π ‖ π_ref) = E_{y~π}[log π(y|x) − log π_ref(y|x)], unbiased for the distribution
of completions cut at `max_new_tokens` (the EOS, when sampled, counts as a token); a
single estimate can be slightly negative when π ≈ π_ref. π_ref is the run's reference:
its initial policy, rebuilt from config.yaml with the run's seed exactly as training
built it (`prefopt.training.train.build`), or the model it started from.

Sampling is seeded (`seed`), so evaluating a run twice gives the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from prefopt.data import synthetic
from prefopt.logprobs import completion_logps


class NotComparableError(ValueError):
    """A run whose policy cannot be scored by the built-in task's reward; the message names
    the run and why."""


@dataclass
class EvalConfig:
    prompts: int = 64
    """Held-out prompts (the first of the task's validation split)."""
    samples: int = 4
    """Completions sampled per prompt."""
    max_new_tokens: int = 16
    seed: int = 0
    """Seed of the sampling."""


@dataclass
class Evaluation:
    true_reward: float
    """Mean score of the samples, in [0, 1]."""
    kl: float
    """Mean sequence log-ratio log π − log π_ref of the samples (nats)."""
    exact: float
    """Share of samples that are exactly the right answer."""
    samples: int
    prompts: int


@torch.no_grad()
def sequence_kl(policy, reference, batch: dict[str, torch.Tensor], impl: str = "auto"
                ) -> torch.Tensor:
    """[R] Σ_t log π(y_t) − log π_ref(y_t) over each row's completion tokens
    (`batch["completion_mask"]`), both at temperature 1."""
    ours = completion_logps(policy, batch, impl=impl).logps
    theirs = completion_logps(reference, batch, impl=impl).logps
    return ours.double() - theirs.double()


def heldout_prompts(data_cfg, count: int, where: str) -> list[str]:
    """The first `count` validation prompts of the built-in task `data_cfg` describes
    (they are the same for every record format)."""
    if getattr(data_cfg, "path", None) is not None or getattr(data_cfg, "mix", None):
        raise NotComparableError(
            f"{where}: trained on data.path={data_cfg.path or '<a mixture>'}, not the built-in "
            "synthetic task, so no program knows its true reward; compare runs of the "
            "synthetic task (data=synthetic)")
    prompts = [r["prompt"] for r in synthetic.splits(data_cfg.synthetic, "prompts")["val"]]
    return prompts[:count]


def evaluate_policy(policy, reference, tokenizer, data_cfg, cfg: EvalConfig, where: str,
                    impl: str = "auto") -> Evaluation:
    """Sample from `policy`, score the samples and estimate KL(policy ‖ reference)."""
    from prefopt.data.tokenize import Encoder
    from prefopt.online.rollout import RolloutConfig, sample

    prompts = heldout_prompts(data_cfg, cfg.prompts, where)
    prompt_ids = Encoder(tokenizer, data_cfg).prompt_ids(prompts)
    rollout_cfg = RolloutConfig(num_samples=cfg.samples, max_new_tokens=cfg.max_new_tokens,
                                temperature=1.0, top_p=1.0)
    policy.eval()
    reference.eval()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        rollout = sample(policy, tokenizer, prompts, prompt_ids, rollout_cfg)
    finally:
        torch.random.set_rng_state(generator_state)
    batch = {k: v for k, v in rollout.batch.items() if k != "group"}
    kl = sequence_kl(policy, reference, batch, impl=impl)
    scores = [synthetic.score(p, c) for p, c in zip(rollout.prompts, rollout.completions)]
    exact = [synthetic.is_correct(p, c) for p, c in zip(rollout.prompts, rollout.completions)]
    n = len(scores)
    return Evaluation(true_reward=math.fsum(scores) / n, kl=float(kl.mean()),
                      exact=sum(exact) / n, samples=n, prompts=len(prompts))


def initial_policy(cfg):
    """(the run's initial policy, its tokenizer, its data config): the run's reference,
    rebuilt from its config with its seed exactly as training built it."""
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from prefopt.training.train import build

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module, _, tokenizer = build(cfg)
    if getattr(module.needs, "reward_model", False):
        raise NotComparableError(
            f"{cfg.output_dir}: objective '{cfg.objective.name}' trains a reward model, not a "
            "policy; compare runs of policy objectives")
    return module.policy, tokenizer, OmegaConf.to_object(cfg.data)


def evaluate_run(run_dir: Path, cfg, eval_cfg: EvalConfig) -> Evaluation:
    """`evaluate_policy` of the run's exported policy/ against its initial policy."""
    from transformers import AutoModelForCausalLM

    policy_dir = run_dir / "policy"
    if not (policy_dir / "config.json").is_file():
        raise NotComparableError(
            f"{run_dir}: holds no exported policy/ (export_policy=false, or the run did not "
            "finish); train it with export_policy=true")
    reference, tokenizer, data_cfg = initial_policy(cfg)
    heldout_prompts(data_cfg, 0, str(run_dir))  # refuse other data before loading more
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    return evaluate_policy(policy, reference, tokenizer, data_cfg, eval_cfg, str(run_dir),
                           impl=cfg.logprob_impl)

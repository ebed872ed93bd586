"""Fixtures of the objective tests: TRL 1.16's own loss code run on given log-probs (for
parity tests), and random log-probs.

TRL's DPOTrainer computes its losses inside `_compute_loss`, after the model's forward.
`dpo_trainer_loss` runs that very method with a stand-in for the trainer (the attributes
the method reads) and for the model (its output carries per-token log-probs whose sums are
the given log-probs): TRL's code computes the loss, no copy of it does.
"""

from __future__ import annotations

import collections
import types

import pytest
import torch


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(tensor):
        return tensor

    gather_for_metrics = gather


class _Model:
    """Returns what TRL's fused LM head returns: per-token log-probs and the logged extras.
    Row i's log-probs sum to logps[i], all on its first completion position."""

    training = True

    def __init__(self, logps: torch.Tensor, width: int):
        self.logps, self.width = logps, width

    def __call__(self, **kwargs):
        rows = self.logps.shape[0]
        per_token = torch.zeros(rows, self.width - 1, dtype=self.logps.dtype)
        per_token[:, 0] = self.logps
        zeros = torch.zeros(rows, self.width, dtype=self.logps.dtype)
        return types.SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                                     is_top1=torch.zeros(rows, self.width, dtype=torch.bool))


def _dpo_trainer_loss(loss_type: str, chosen, rejected, ref_chosen, ref_rejected, *,
                     beta: float, label_smoothing: float = 0.0, discopop_tau: float = 0.05,
                     chosen_tokens=None, rejected_tokens=None) -> torch.Tensor:
    """TRL's DPOTrainer loss (mean over pairs) for `loss_type` on summed log-probs [B]."""
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    batch = chosen.shape[0]
    tokens = torch.cat([chosen_tokens if chosen_tokens is not None else torch.ones(batch),
                        rejected_tokens if rejected_tokens is not None else torch.ones(batch)])
    width = int(tokens.max()) + 2  # position 0 is the prompt; completions follow it
    completion_mask = (torch.arange(width) >= 1) & (torch.arange(width) <= tokens[:, None])
    model = _Model(torch.cat([chosen, rejected]), width)
    trainer = types.SimpleNamespace(
        model=model, accelerator=_Accelerator(), aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        args=types.SimpleNamespace(discopop_tau=discopop_tau),
        _metrics={"train": collections.defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * batch, width, dtype=torch.long),
              "attention_mask": torch.ones(2 * batch, width, dtype=torch.long),
              "completion_mask": completion_mask.long(),
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    return dpo_trainer.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)


def _trl_method(module: str, cls: str, method: str, **attributes):
    """An unbound TRL trainer method bound to a stand-in carrying `attributes`."""
    owner = getattr(pytest.importorskip(module), cls)
    stand_in = types.SimpleNamespace(accelerator=_Accelerator(), **attributes)
    return getattr(owner, method).__get__(stand_in)


def _random_pairs(n: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Summed log-probs of n pairs, policy and reference, spread over [-20, 0]."""
    gen = torch.Generator().manual_seed(seed)
    names = ("chosen", "rejected", "ref_chosen", "ref_rejected")
    return {name: -torch.rand(n, generator=gen, dtype=torch.float64) * 20 for name in names}


@pytest.fixture
def dpo_trainer_loss():
    """dpo_trainer_loss(loss_type, chosen, rejected, ref_chosen, ref_rejected, beta=...,
    label_smoothing=..., discopop_tau=...) -> TRL's DPOTrainer loss."""
    return _dpo_trainer_loss


@pytest.fixture
def trl_method():
    """trl_method(module, cls, method, **attributes) -> that TRL method, bound."""
    return _trl_method


@pytest.fixture
def random_pairs():
    """random_pairs(n=16, seed=0) -> {chosen, rejected, ref_chosen, ref_rejected} [n]."""
    return _random_pairs

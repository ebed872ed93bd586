"""Where the time of one DPO step goes, measured the same way for every trainer.

Hooks on objects both trainers share (the policy's and the reference's trunk modules, the
policy's input embedding, the trunk's output tensor, the end of every optimizer step) mark
instants of a step; the trainer's own callbacks mark the rest: step start, loss, the start
of gradient clipping (which both run right before the optimizer's update) and step end.
At each mark the device is synchronised, so each phase holds the GPU work issued in it.
Those synchronisations cost time, so profiled steps are separate from the timed ones.

A step of both trainers runs in this order (checked at every step; a trainer that ran its
phases in another order would stop the profile rather than mislabel it):

    step start
      -> policy trunk forward -> policy log-probs forward
      -> reference trunk forward -> reference log-probs forward + DPO loss
      -> policy log-probs backward (down to the trunk's final hidden states)
      -> policy trunk backward (down to the input embeddings; recomputation included
         under gradient checkpointing)
      -> embedding backward -> gradient clipping + optimizer step
      -> zero_grad, scheduler -> step end

What runs between one step's end callback and the next step's start callback (HF's
logging, Lightning's logging and its copy of the batch to the device) is in the timed steps
but in no phase.
"""

from __future__ import annotations

import time

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from prefopt.models import base_model

# (the mark that ends a phase, the phase's name), in step order.
PHASES = (
    ("policy_trunk_start", "step setup"),
    ("policy_trunk_end", "policy trunk forward"),
    ("reference_trunk_start", "policy log-probs forward"),
    ("reference_trunk_end", "reference trunk forward"),
    ("loss", "reference log-probs forward + loss"),
    ("hidden_grad", "policy log-probs backward"),
    ("embedding_grad", "policy trunk backward"),
    ("clip_start", "embedding backward"),
    ("optimizer_end", "grad clipping + optimizer step"),
    ("step_end", "after the update (zero_grad, scheduler)"),
)
PHASE_NAMES = tuple(name for _, name in PHASES)


def synchronized_time(device: torch.device) -> float:
    """perf_counter once the device has finished the work issued so far."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def trunk(model):
    """The decoder without its LM head (e.g. LlamaModel), through any LoRA wrapper."""
    return base_model(model).base_model


class StepProfiler:
    def __init__(self, device: torch.device):
        self.device = device
        self.active = False
        self.marks: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []  # per profiled step: {phase: ms}
        self._handles = []

    def _now(self) -> float:
        return synchronized_time(self.device)

    def mark(self, name: str) -> None:
        # First instant only: e.g. an optimizer whose step calls another's step.
        if self.active and name not in self.marks:
            self.marks[name] = self._now()

    def begin_step(self) -> None:
        self.active = True
        self.marks = {"step_start": self._now()}

    def end_step(self) -> None:
        if not self.active:
            return
        self.mark("step_end")
        self.active = False
        missing = [mark for mark, _ in PHASES if mark not in self.marks]
        if missing:
            raise RuntimeError(f"profiled step without the marks {missing}: a hook did not "
                               "fire, so the phases cannot be told apart")
        order = ["step_start", *(mark for mark, _ in PHASES)]
        times = [self.marks[m] for m in order]
        if times != sorted(times):
            seen = sorted(self.marks, key=self.marks.get)
            raise RuntimeError(f"the step ran its phases in the order {seen}, not {order}; "
                               "the profile's phase names would not hold")
        self.steps.append({name: (times[i + 1] - times[i]) * 1e3
                           for i, name in enumerate(PHASE_NAMES)})

    def attach(self, policy, reference) -> None:
        """Hooks on the policy and reference trunks and after every optimizer step."""
        policy_trunk, reference_trunk = trunk(policy), trunk(reference)

        def on_policy_output(_module, _args, output):
            self.mark("policy_trunk_end")
            hidden = output[0]
            if hidden.requires_grad:
                hidden.register_hook(lambda grad: self.mark("hidden_grad"))

        def on_embedding_output(_module, _args, output):
            if output.requires_grad:
                output.register_hook(lambda grad: self.mark("embedding_grad"))

        self._handles += [
            policy_trunk.register_forward_pre_hook(lambda *_: self.mark("policy_trunk_start")),
            policy_trunk.register_forward_hook(on_policy_output),
            policy_trunk.get_input_embeddings().register_forward_hook(on_embedding_output),
            reference_trunk.register_forward_pre_hook(
                lambda *_: self.mark("reference_trunk_start")),
            reference_trunk.register_forward_hook(lambda *_: self.mark("reference_trunk_end")),
            register_optimizer_step_post_hook(
                lambda *_: self.mark("optimizer_end")),
        ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def summary(self) -> dict[str, float]:
        """Median ms of each phase over the profiled steps."""
        if not self.steps:
            return {}
        return {name: float(torch.tensor([s[name] for s in self.steps]).median())
                for name in PHASE_NAMES}

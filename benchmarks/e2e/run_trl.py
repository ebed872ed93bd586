"""One benchmark run of TRL's DPOTrainer on the same model, data and settings.

Settings matched to run_prefopt.py: the same random weights (policy and a deep copy as the
reference), the same pairs in the same order (sequential sampling), sigmoid DPO at β=0.1,
the same learning rate with a constant schedule, gradient clipping at 1.0, the same
precision and gradient-checkpointing setting, one optimizer step per micro-batch. TRL
keeps its own defaults otherwise (its fused AdamW, its chunked log-prob LM head), since
those are what its users get.

The subclass changes no part of a step: it skips TRL's tokenisation of text (the pairs are
token ids already, the same ones prefopt gets) and marks the loss and the start of
gradient clipping for the phase profile.
"""

from __future__ import annotations

import tempfile
import warnings

from clock import StepClock
from datasets import Dataset
from job import prepare
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from prefopt import tiny


class _BenchDPOTrainer(DPOTrainer):
    clock: StepClock

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset  # prompt_ids / chosen_ids / rejected_ids already

    def compute_loss(self, *args, **kwargs):
        loss = super().compute_loss(*args, **kwargs)
        self.clock.profiler.mark("loss")
        return loss

    def _clip_grad_norm(self, model):
        self.clock.profiler.mark("clip_start")
        return super()._clip_grad_norm(model)


class _Callbacks(TrainerCallback):
    def __init__(self, clock: StepClock):
        self.clock = clock

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock.step_start()

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.step_end()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.clock.record(float(logs["loss"]), logs.get("logps/chosen"))


def run(spec) -> StepClock:
    shape = spec.shape
    policy, reference, clock, pairs = prepare(spec)
    dataset = Dataset.from_dict({"prompt_ids": [p for p, _, _ in pairs],
                                 "chosen_ids": [c for _, c, _ in pairs],
                                 "rejected_ids": [r for _, _, r in pairs]})
    # The tokenizer only supplies the pad id (0, as prefopt's collation uses).
    tokenizer = tiny.build_tokenizer()
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out, per_device_train_batch_size=shape.pairs,
            gradient_accumulation_steps=1, max_steps=clock.total_steps,
            learning_rate=spec.lr, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"],
            max_length=None, bf16=spec.precision.startswith("bf16"),
            use_cpu=spec.device.type == "cpu",
            gradient_checkpointing=spec.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            train_sampling_strategy="sequential", dataloader_num_workers=0,
            logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
            disable_tqdm=True, seed=spec.seed, data_seed=spec.seed)
        trainer = _BenchDPOTrainer(model=policy, ref_model=reference, args=args,
                                   train_dataset=dataset, processing_class=tokenizer,
                                   callbacks=[_Callbacks(clock)])
        trainer.clock = clock
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            trainer.train()
    clock.profiler.detach()
    return clock

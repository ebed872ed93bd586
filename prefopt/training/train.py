"""One training run from a composed config: build, validate, fit, validate, export, report."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table

from prefopt import models, reference_cache, registry
from prefopt.data.datamodule import PreferenceDataModule, attribute_schema, load_splits
from prefopt.data.output import write_atomically
from prefopt.data.prompts import PromptDataModule
from prefopt.models import build_policy, build_tokenizer, make_reference, uses_lora
from prefopt.objective import FORMATS, Needs, Objective, OnlineObjective, unfeedable
from prefopt.online.module import OnlineModule
from prefopt.online.pairs import OnlinePairsData, OnlinePairsModule, refusal
from prefopt.online.rewards import build_reward
from prefopt.training import rundir
from prefopt.training.checkpoints import AtomicCheckpointIO, LastCheckpoint
from prefopt.training.config import ConfigError, check_keys
from prefopt.training.export import RunFacts, export
from prefopt.training.module import PreferenceModule
from prefopt.training.plots import plot_curves
from prefopt.training.progress import PROGRESS_BARS, StepProgressBar, StepTQDMProgressBar
from prefopt.training.samples import SAMPLES_FILE, SamplesConfig, SampleWriter, samples_problem
from prefopt.training.throughput import Throughput

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("val/loss", "val/rewards/accuracies", "val/rewards/margins", "val/kl",
                "val/logps/chosen", "val/logps/rejected", "val/logps/response", "val/entropy",
                "val/reward/mean", "val/response/length", "val/response/ended")


def _quiet_expected_warnings() -> None:
    """Lightning warnings this design triggers on purpose: the frozen reference sits in
    eval mode, the run directory already holds config.yaml when the CSV logger starts
    (it only ever replaces its own metrics.csv), and online pairs return no loss for a
    batch of only ties."""
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* is not empty")
    # Online pairs: a batch whose samples all tied has nothing to learn (prefopt.online.pairs).
    warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")


def _json(payload) -> str:
    return json.dumps(payload, indent=2, sort_keys=True) + "\n"


def _write_json(path: Path, payload) -> None:
    write_atomically(path, lambda f: f.write(_json(payload).encode()))


def build(cfg: DictConfig):
    """(module, datamodule, tokenizer) for a composed config."""
    objective_cfg = OmegaConf.to_object(cfg.objective)
    try:
        objective = registry.build(objective_cfg)
    except (ConfigError, registry.PluginError):
        raise
    except ValueError as exc:
        # An objective refusing a value of its own Config (e.g. require_positive): the
        # message names the setting; anything else an objective raises stays a traceback.
        raise ConfigError(f"objective '{objective_cfg.name}': {exc}; give "
                          "objective.<setting>=<value> a value it accepts") from exc
    if cfg.get("online", False):
        return _build_online_pairs(cfg, objective)
    if FORMATS[objective.batch_format].fed:
        return _build_offline(cfg, objective)
    return _build_online(cfg, objective)


def _models(cfg: DictConfig, needs: Needs, reference: bool, num_labels: int = 1):
    """(tokenizer, policy, reference or None) as `cfg.model` describes them. With LoRA the
    reference is the policy with its adapters disabled: no copy is made."""
    model_cfg = OmegaConf.to_object(cfg.model)
    tokenizer = build_tokenizer(model_cfg)
    policy = build_policy(model_cfg, tokenizer, reward_head=needs.reward_model,
                          num_labels=num_labels)
    models.check_max_length(policy, cfg.data.max_length)
    frozen = make_reference(policy) if reference and not uses_lora(policy) else None
    return tokenizer, policy, frozen


def _build_offline(cfg: DictConfig, objective: Objective):
    """An offline objective: recorded batches of its format."""
    needs, fmt = objective.needs(), objective.batch_format
    reason = unfeedable(objective)
    if reason:
        raise registry.PluginError(f"objective '{objective.config.name}': {reason}")
    cached = cfg.reference == "cached"
    if cached:
        _check_cacheable(objective, needs)
    data_cfg = OmegaConf.to_object(cfg.data)
    # Attributed records: a SteerLM policy reads the attribute line; an attribute model
    # (reward head, one output per attribute) predicts the values instead.
    schema = attribute_schema(data_cfg) if FORMATS[fmt].attributed else None
    tokenizer, policy, reference = _models(
        cfg, needs, reference=needs.reference and not cached,
        num_labels=len(schema) if schema and needs.reward_model else 1)
    datamodule = PreferenceDataModule(data_cfg, tokenizer, fmt=fmt.value,
                                      mismatched=needs.mismatched_pairs, seed=cfg.seed,
                                      condition=not needs.reward_model)
    module = PreferenceModule(policy, reference, objective, OmegaConf.to_object(cfg.optimizer),
                              OmegaConf.to_object(cfg.scheduler), logprob_impl=cfg.logprob_impl,
                              reference_cached=cached, schema=schema,
                              reference_reuse=cfg.get("reference_reuse", True))
    return module, datamodule, tokenizer


def _sampling_parts(cfg: DictConfig, name: str, needs: Needs):
    """What both kinds of run on the policy's own samples build alike: the models, the
    reward source, and the reward and rollout settings. A cached reference cannot serve
    them: the completions are new at every step."""
    if cfg.reference == "cached":
        online = " with online=true" if cfg.get("online") else ""
        raise ConfigError(f"reference=cached cannot serve objective '{name}'{online}: it "
                          "samples new completions at every step; use reference=model")
    tokenizer, policy, reference = _models(cfg, needs, reference=needs.reference)
    reward_cfg = OmegaConf.to_object(cfg.reward)
    rollout_cfg = OmegaConf.to_object(cfg.rollout)
    return tokenizer, policy, reference, build_reward(reward_cfg), reward_cfg, rollout_cfg


def _build_online(cfg: DictConfig, objective: Objective):
    """An online objective (prompts in, samples scored by the reward source)."""
    name, needs = objective.config.name, objective.needs()
    if not isinstance(objective, OnlineObjective):
        raise registry.PluginError(f"objective '{name}' consumes "
                                   f"{objective.batch_format.value}, which only online "
                                   "objectives (subclasses of OnlineObjective) can")
    if needs.reward_model:
        raise registry.PluginError(f"objective '{name}': an online objective trains a policy, "
                                   "not a reward model")
    tokenizer, policy, reference, reward, reward_cfg, rollout_cfg = _sampling_parts(
        cfg, name, needs)
    datamodule = PromptDataModule(OmegaConf.to_object(cfg.data), tokenizer,
                                  max_new_tokens=rollout_cfg.max_new_tokens, seed=cfg.seed)
    module = OnlineModule(policy, reference, objective, OmegaConf.to_object(cfg.optimizer),
                          OmegaConf.to_object(cfg.scheduler), tokenizer, reward, rollout_cfg,
                          logprob_impl=cfg.logprob_impl, seed=cfg.seed,
                          missing_eos_penalty=reward_cfg.missing_eos_penalty)
    return module, datamodule, tokenizer


def _build_online_pairs(cfg: DictConfig, objective: Objective):
    """online=true: a pairwise objective on judged pairs of the policy's samples."""
    name, needs = objective.config.name, objective.needs()
    reason = refusal(objective)
    if reason:
        raise ConfigError(reason)
    tokenizer, policy, reference, reward, reward_cfg, rollout_cfg = _sampling_parts(
        cfg, name, needs)
    datamodule = OnlinePairsData(OmegaConf.to_object(cfg.data), tokenizer,
                                 max_new_tokens=rollout_cfg.max_new_tokens, seed=cfg.seed,
                                 mismatched=needs.mismatched_pairs)
    try:
        module = OnlinePairsModule(policy, reference, objective,
                                   OmegaConf.to_object(cfg.optimizer),
                                   OmegaConf.to_object(cfg.scheduler), tokenizer, reward,
                                   rollout_cfg, logprob_impl=cfg.logprob_impl, seed=cfg.seed,
                                   missing_eos_penalty=reward_cfg.missing_eos_penalty)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return module, datamodule, tokenizer


# Lightning's Trainer arguments that must be whole numbers: (key, smallest value allowed).
_TRAINER_INTS = {"max_steps": -1, "max_epochs": -1, "min_steps": 0, "min_epochs": 0,
                 "log_every_n_steps": 1, "accumulate_grad_batches": 1,
                 "num_sanity_val_steps": -1, "check_val_every_n_epoch": 1}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_settings(cfg: DictConfig) -> None:
    """Refuse values no run can work with, before anything is built or written, naming the
    override to fix (the schema checks types only where it declares them)."""
    check_keys(cfg)
    for key in ("batch_size", "val_batch_size"):
        value = cfg.data.get(key)
        if value is not None and (not _is_int(value) or value < 1):
            raise ConfigError(f"data.{key}={value!r}: records per batch must be a whole "
                              f"number >= 1; set data.{key}=<n>, e.g. data.{key}=8")
    for key, least in _TRAINER_INTS.items():
        value = cfg.trainer.get(key)
        if value is None:
            continue
        if not _is_int(value) or value < least:
            what = "a whole number" + (f" >= {least}" if least > -1 else " (-1: no limit)")
            raise ConfigError(f"trainer.{key}={value!r}: must be {what}; set "
                              f"trainer.{key}=<n>")
    lr = cfg.optimizer.lr
    if lr < 0:
        raise ConfigError(f"optimizer.lr={lr}: a learning rate must be >= 0; set "
                          "optimizer.lr=<rate>, e.g. optimizer.lr=1e-5")
    if lr == 0:
        log.warning("optimizer.lr=0: the policy's weights will not change during this run; "
                    "set optimizer.lr=<rate> to train it")
    _progress_bar_choice(cfg)
    samples_config(cfg)
    interval = cfg.trainer.get("val_check_interval")
    if interval is not None and (isinstance(interval, bool)
                                 or not isinstance(interval, (int, float)) or interval <= 0):
        raise ConfigError(f"trainer.val_check_interval={interval!r}: must be a number of "
                          "steps (an integer >= 1) or a fraction of an epoch in (0, 1]; set "
                          "trainer.val_check_interval=<n>")


def check_writable(out: Path) -> None:
    """Refuse an output_dir the run could not write into (read-only, not a folder), in one
    line, before anything is built. Creates `out` (as the run would) and nothing else."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"output_dir={out}: the run cannot write there ({reason}); choose "
                          "a folder you can write to: output_dir=<folder>") from None


def train(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Run the job described by `cfg`; returns the validation metrics before and after.

    The run directory is locked for the whole run. A new run (no ckpt_path) is refused in
    a directory that holds a run; a resume is refused if `cfg` changes a setting the run
    must keep (`rundir.check_resume`), and writes nothing into the run until its settings
    and its checkpoint passed every check (`_Commit`)."""
    started = time.perf_counter()
    check_settings(cfg)
    out = Path(cfg.output_dir)
    if rank_zero_only.rank == 0:
        check_writable(out)
    resume = _resume_checkpoint(cfg, out)
    if resume is not None:
        rundir.check_resume(cfg, out)
    # The process that owns the run directory; Lightning's relaunched DDP processes
    # (LOCAL_RANK set) share it.
    owner = rank_zero_only.rank == 0
    with rundir.lock(out) if owner else contextlib.nullcontext():
        if owner and resume is None:
            rundir.refuse_existing(out)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

        module, datamodule, tokenizer = build(cfg)
        datamodule.setup("fit")
        if not isinstance(module, OnlinePairsModule):  # its pairs are not known yet
            module.objective.check_data(datamodule.groups["train"])
        files = {"config.yaml": OmegaConf.to_yaml(cfg, resolve=True)}
        if module.reference_cached:
            files["reference_cache.json"] = _json(attach_cached_reference(cfg, module,
                                                                          datamodule))
        files["data_report.json"] = _json(
            {name: report.as_dict() for name, report in datamodule.reports.items()})

        with warnings.catch_warnings():
            _quiet_expected_warnings()
            return _fit(cfg, out, module, datamodule, tokenizer, files, started)


def _check_cacheable(objective, needs) -> None:
    name = objective.config.name
    if not needs.reference:
        raise ConfigError(f"reference=cached: objective '{name}' uses no reference model; "
                          "drop the option")
    if needs.mismatched_pairs:
        raise ConfigError(
            f"reference=cached cannot serve objective '{name}': its KL estimate pairs "
            "completions across a batch, and batches change with every shuffle; use "
            "reference=model")
    if needs.token_logps:
        raise ConfigError(
            f"reference=cached cannot serve objective '{name}': it reads per-token reference "
            "log-probs (needs().token_logps) and the cache keeps sums; use reference=model")


def attach_cached_reference(cfg: DictConfig, module: PreferenceModule,
                            datamodule: PreferenceDataModule) -> dict:
    """Give every encoded record its reference log-probs, from the cache or computed once
    now from the initial policy (the reference). `module.policy` must still be the initial
    policy: a cached file is checked against it (`reference_cache.load_or_compute`).
    Returns what was used, per split."""
    model_cfg = OmegaConf.to_object(cfg.model)
    cache_dir = Path(cfg.reference_cache_dir) if cfg.reference_cache_dir \
        else reference_cache.default_cache_dir()
    policy = module.policy

    @functools.cache  # built at most once, and only if some split is not cached yet
    def reference():
        return policy if uses_lora(policy) else make_reference(policy)

    used = {}
    for name, groups in datamodule.groups.items():
        key = reference_cache.cache_key(model_cfg, cfg.seed, datamodule.tokenizer, groups)
        path = cache_dir / "reference" / f"{key}.pt"
        values, reused = reference_cache.load_or_compute(
            path, groups, reference, datamodule.tokenizer.pad_token_id, impl=cfg.logprob_impl,
            policy=policy)
        datamodule.groups[name] = [dataclasses.replace(g, ref_logps=tuple(v))
                                   for g, v in zip(groups, values)]
        used[name] = {"path": str(path), "reused": reused}
    return used


def _fit(cfg, out: Path, module, datamodule, tokenizer, files: dict[str, str] | None = None,
         started: float | None = None) -> dict[str, dict[str, float]]:
    """Fit and report. `files` (name: text) are written into `out` once the run is known
    to start: before the first validation of a new run, right before fitting for a
    resume whose checkpoint was checked (which also sets the earlier metrics.csv aside
    then, and puts everything back if fitting fails before its first step)."""
    metric, mode = module.objective.monitor
    # The best by the monitored metric; last.ckpt at every validation (LastCheckpoint).
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", monitor=f"val/{metric}", mode=mode,
                                  save_top_k=1, save_last=False, filename="best-step{step}",
                                  auto_insert_metric_name=False)
    resume = _resume_checkpoint(cfg, out)
    step = _checkpoint_step(cfg, resume, module) if resume else None  # before any write
    loggers = [hydra.utils.instantiate(node) for node in cfg.logger.values()]
    trainer_args = dict(cfg.trainer)
    if not module.automatic_optimization:
        # Online objectives step the optimizer themselves (several steps per rollout), and
        # Lightning refuses automatic clipping then: the module clips each step instead.
        module.gradient_clip_val = trainer_args.pop("gradient_clip_val", None)
        module.gradient_clip_algorithm = trainer_args.pop("gradient_clip_algorithm",
                                                          None) or "norm"
    plugins = trainer_args.get("plugins") or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple, ListConfig)) else [plugins]
    trainer_args["plugins"] = [*plugins, AtomicCheckpointIO()]
    commit = _Commit(out, files or {}, resume)
    throughput = Throughput()
    trainer = pl.Trainer(**trainer_args, default_root_dir=str(out), logger=loggers,
                         callbacks=[checkpoints, LastCheckpoint(out / "checkpoints"), commit,
                                    throughput, *_sample_writer(cfg, out, module, datamodule,
                                                                tokenizer),
                                    *_progress_bar(cfg)])
    # Sharded parameters (FSDP, DeepSpeed ZeRO-3) are not whole on any one process outside
    # a step: saving them as policy/ would write a wrong model.
    if cfg.export_policy and (isinstance(trainer.strategy, pl.strategies.FSDPStrategy)
                              or getattr(trainer.strategy, "zero_stage_3", False)):
        raise ConfigError(
            f"export_policy=true with trainer.strategy={cfg.trainer.get('strategy')}: "
            "prefopt-train cannot save policy/ from sharded parameters yet; set "
            "export_policy=false and export from the checkpoints")
    # Under DDP every process runs this; only rank 0 (known once the Trainer exists) owns
    # the run directory's files.
    earlier = []
    if resume and trainer.is_global_zero:
        earlier = _metrics_before(out, step)
    commit.write(trainer)
    if resume:
        start = _start_metrics(earlier)
    else:
        start = _floats(trainer.validate(module, datamodule=datamodule, verbose=False)[0])
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    except BaseException:
        commit.undo()
        raise
    # last.ckpt is the final state: the last validation may fall before max_steps.
    trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")
    end = _floats(trainer.validate(module, datamodule=datamodule, verbose=False)[0])

    if trainer.is_global_zero:
        if cfg.export_policy:
            export(out, module.policy, tokenizer, _run_facts(cfg, module, datamodule, end,
                                                             trainer.global_step),
                   schema=getattr(module, "schema", None))  # attributed records only
        # This process's figures: a resume counts from its own start.
        runtime = time.perf_counter() - started if started is not None else None
        reuse = getattr(module, "reference_reuse_report", lambda: None)()
        _write_json(out / "summary.json", {"start": start, "end": end,
                                           "steps": trainer.global_step, "runtime_s": runtime,
                                           **throughput.totals(),
                                           **({"reference_rows": reuse} if reuse else {})})
        for logger in trainer.loggers:
            logger.finalize("success")  # flush metrics.csv before drawing from it
        if earlier:
            _prepend_rows(out / "metrics.csv", earlier)
        if (out / "metrics.csv").exists():
            plot_curves(out / "metrics.csv", out / "curves.png")
        print_summary(start, end, trainer.global_step, out, f"val/{metric}")
    return {"start": start, "end": end}


def _progress_bar(cfg: DictConfig) -> list[pl.Callback]:
    """The bar `progress_bar` names (rich or tqdm); none with trainer.enable_progress_bar=false.
    Always given explicitly: left to choose, Lightning picks Rich whenever it is installed."""
    choice = _progress_bar_choice(cfg)
    if not cfg.trainer.get("enable_progress_bar", True):
        return []
    if choice == "rich":
        # 4 redraws a second, as Rich itself defaults to; Lightning asks 100, and on two
        # cores the redrawing thread then costs a third of the training speed.
        return [StepProgressBar(refresh_rate=4, leave=True)]
    # Every 10th batch: each redraw also reads the bar's metrics off the device.
    return [StepTQDMProgressBar(refresh_rate=10, leave=True)]


def _progress_bar_choice(cfg: DictConfig) -> str:
    choice = getattr(cfg.progress_bar, "value", cfg.progress_bar)  # an enum, or plain text
    if choice not in PROGRESS_BARS:
        raise ConfigError(f"progress_bar={choice!r} is not a progress bar; set "
                          "progress_bar=rich or progress_bar=tqdm (or "
                          "trainer.enable_progress_bar=false for none)")
    return choice


def samples_config(cfg: DictConfig) -> SamplesConfig:
    """`cfg.samples`, checked (its defaults where the config has no `samples`)."""
    node = OmegaConf.to_container(cfg.samples) if cfg.get("samples") is not None else {}
    known = [f.name for f in dataclasses.fields(SamplesConfig)]
    for key in node:
        if key not in known:
            raise ConfigError(f"samples.{key}: no such setting; samples has "
                              f"{', '.join(known)}")
    samples = SamplesConfig(**node)
    problem = samples_problem(samples)
    if problem:
        raise ConfigError(problem)
    return samples


def _sample_writer(cfg: DictConfig, out: Path, module, datamodule, tokenizer
                   ) -> list[pl.Callback]:
    """The writer of samples.jsonl, for a policy trained on recorded data (not a reward
    model, nor an online objective, which logs its own samples' rewards)."""
    samples = samples_config(cfg)
    if samples.count == 0 or not isinstance(datamodule, PreferenceDataModule) \
            or module.needs.reward_model:
        return []
    records = load_splits(datamodule.cfg, datamodule.fmt, datamodule.seed)["val"]
    prompts = [record.prompt for record in records[:samples.count]]
    return [SampleWriter(out / SAMPLES_FILE, prompts, tokenizer, samples.max_new_tokens,
                         datamodule.cfg, schema=datamodule.schema)]


def _run_facts(cfg: DictConfig, module, datamodule, end: dict[str, float], steps: int
               ) -> RunFacts:
    """What the exported policy's model card says about this run."""
    model = cfg.model
    if model.name_or_path:
        base = f"`{model.name_or_path}`" + (f" (revision {model.revision})"
                                             if model.revision else "")
    else:
        base = ("prefopt's built-in tiny Llama (`prefopt.tiny`: random weights, "
                f"seed={cfg.seed}; model.tiny: {OmegaConf.to_container(model.tiny)})")
    if cfg.data.get("path"):
        data = {"source": f"`{cfg.data.path}`"}
    elif cfg.data.get("mix"):
        data = {"source": "a mixture: " + ", ".join(
            f"`{part.path}` (weight {part.weight})" for part in cfg.data.mix)}
    elif cfg.data.get("arithmetic"):
        data = {"source": "prefopt's built-in arithmetic task (`prefopt.data.arithmetic`)"}
    else:
        data = {"source": "prefopt's built-in synthetic task (`prefopt.data.synthetic`)"}
    if cfg.data.get("val_path"):
        data["validation source"] = f"`{cfg.data.val_path}`"
    data.update({f"{split} records": report.summary()
                 for split, report in getattr(datamodule, "reports", {}).items()})
    # enum_to_str: the objective's enum settings (sft's average, AOT's form) as their
    # names, which YAML can write.
    return RunFacts(base_model=base, objective=OmegaConf.to_container(
                        cfg.objective, resolve=True, enum_to_str=True),
                    data=data, metrics=end, steps=steps, command=_overrides())


def _overrides() -> list[str]:
    """The command line's overrides, where Hydra ran this job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _resume_checkpoint(cfg: DictConfig, out: Path) -> Path | None:
    if cfg.ckpt_path is None:
        return None
    path = out / "checkpoints" / "last.ckpt" if cfg.ckpt_path == "last" else Path(cfg.ckpt_path)
    if not path.exists():
        hint = ("the run stopped before its first checkpoint: there is nothing to resume; "
                "start a new run in another output_dir" if cfg.ckpt_path == "last"
                and (out / "config.yaml").exists() else
                "resume with the run's own output_dir=...")
        raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path}: no checkpoint at {path} ({hint})")
    return path


class _Commit(pl.Callback):
    """Writes the run's files (config.yaml, data and cache reports) into the run
    directory, once the run is known to start: a new run before its first validation; a
    resume right before fitting, once its settings and checkpoint passed every check.
    A resume sets the earlier metrics.csv aside (the CSV logger deletes one it finds; its
    rows up to the checkpoint are prepended to the new one at the end) and keeps an
    earlier file that differs aside too. Should fitting fail before the first training
    step, `undo` puts every file of the resumed run back as it was."""

    def __init__(self, out: Path, files: dict[str, str], resume: Path | None):
        self.out, self.files, self.resume = out, files, resume
        self._undo: list = []

    def write(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        metrics = self.out / "metrics.csv"
        if self.resume is not None and metrics.exists():
            aside = rundir.set_aside(metrics)
            self._undo.append(lambda: os.replace(aside, metrics))
        for name, text in self.files.items():
            self._undo.append(rundir.write_keeping(self.out / name, text))
        if self.resume is None:
            self._undo.clear()  # a new run's files describe it, whatever happens next

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._undo.clear()  # the resumed run has started: its files are its own now

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()


def _checkpoint_step(cfg: DictConfig, path: Path, module) -> int:
    """The checkpoint's global step, once it is known to be readable and to hold this
    run's parameters with their shapes (a ConfigError naming it otherwise)."""
    where = f"ckpt_path={cfg.ckpt_path}"
    if path.is_dir():
        raise ConfigError(f"{where}: {path} is a directory (a sharded checkpoint); "
                          "prefopt-train resumes from a single-file checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        step, state = checkpoint["global_step"], checkpoint["state_dict"]
    except Exception as exc:  # truncated, not a checkpoint, ...: any reason to refuse it
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        # The newest other checkpoint of the run, if there is one, is the one to offer.
        others = sorted((p for p in path.parent.glob("*.ckpt") if p != path),
                        key=lambda p: p.stat().st_mtime)
        offer = f"ckpt_path={others[-1]}" if others else \
            f"ckpt_path={path.parent / 'best-step<N>.ckpt'}"
        raise ConfigError(f"{where}: {path} is not a readable checkpoint ({reason}); resume "
                          f"from another checkpoint of the run: {offer}") from None
    own = module.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape))
              for k in sorted(own.keys() & state.keys())
              if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        what = (f"{shapes[0][0]} has shape {list(shapes[0][1])} there, {list(shapes[0][2])} "
                "in this run's model" if shapes else
                f"it lacks {missing[0]}" if missing else f"it has {unexpected[0]}, which this "
                "run's model does not")
        raise ConfigError(f"{where}: {path} is not a checkpoint of this run's model ({what}); "
                          "resume with the run's own output_dir and ckpt_path=last")
    return int(step)


def _metrics_before(out: Path, step: int) -> list[dict[str, str]]:
    """The rows of the run's metrics.csv up to the checkpoint at `step`; rows after it
    are replayed by the resume. Reads only: the file is set aside by `_Commit`."""
    metrics = out / "metrics.csv"
    if not metrics.exists():
        return []
    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    # Training rows before the checkpoint's step; validation rows up to and including it
    # (the validation that wrote the checkpoint is not run again).
    return [r for r in rows if int(float(r["step"])) < step or (
        int(float(r["step"])) == step and any(r[k] for k in r if k.startswith("val/")))]


def _start_metrics(rows: list[dict[str, str]]) -> dict[str, float]:
    for row in rows:  # the validation before training, at step 0
        values = {k: float(v) for k, v in row.items() if k.startswith("val/") and v}
        if values:
            return values
    return {}


def _prepend_rows(metrics: Path, earlier: list[dict[str, str]]) -> None:
    with open(metrics, newline="") as f:
        later = list(csv.DictReader(f))
    columns = sorted({k for row in earlier + later for k in row} - {"epoch", "step"})
    with open(metrics, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "step", *columns], restval="")
        writer.writeheader()
        writer.writerows(earlier + later)


def _floats(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def print_summary(start: dict[str, float], end: dict[str, float], steps: int, out: Path,
                  monitor: str = "val/rewards/accuracies") -> None:
    table = Table(title=f"prefopt: {steps} optimizer steps", title_justify="left")
    for column in ("metric", "start", "end"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    # The common metrics first, then the objective's own (e.g. val/attributes/*).
    keys = [k for k in SUMMARY_KEYS if k in end] + sorted(
        k for k in end if k.startswith("val/") and k not in SUMMARY_KEYS
        and not k.startswith(("val/rewards/", "val/logps/")))
    for key in keys:
        table.add_row(key, f"{start.get(key, float('nan')):.4f}", f"{end[key]:.4f}")
    console = Console()
    console.print(table)
    if monitor in end:
        console.print(f"{monitor} went from {start.get(monitor, float('nan')):.2f} "
                      f"to {end[monitor]:.2f}.")
    console.print(f"Run directory: {out}")

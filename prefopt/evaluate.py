"""prefopt-eval: evaluate a finished run on held-out data.

    prefopt-eval outputs/2026-11-24/20-00-40 [--data pairs.jsonl] [--reward-model RM_DIR]

1. The run is rebuilt from its config.yaml with its seed, which reproduces its reference
   model exactly (the initial policy), and the final weights come from checkpoints/last.ckpt.
   Then the validation metrics of training (preference accuracy, reward margins, KL to
   the reference, ...) are computed on the run's validation split or on `--data`.
2. With `--reward-model`, the policy and the reference each answer the held-out prompts
   and a reward model judges each pair, AlpacaEval-style: the win rate is the share of
   prompts where the policy's answer scores higher (ties count ½). The length-controlled
   win rate (Dubois et al. 2024, arXiv:2404.04475) removes the part of the preference that
   the length difference explains: a logistic regression of the win on the
   length difference (scaled by its std), read at a difference of zero: σ(intercept).
3. For a SteerLM run (objective=steerlm), steering obedience: the policy answers the
   held-out prompts with requested attribute values, and the share of answers that have
   them is measured, before training (the initial policy), after training, and after
   training with an empty attribute line (what chance gives a model that is not
   steered). On the built-in task the requests are the best quality with a random order
   and length, measured by program (`synthetic.measure_attributes`); on other data they
   are the held-out responses' own steerable values, measured by `--attribute-model`.
Results are printed as a table and written as JSON (default <run>/eval.json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from prefopt import registry
from prefopt.generate import GenerationConfig, generate
from prefopt.models import make_reference, uses_lora
from prefopt.objective import FORMATS
from prefopt.training.config import ConfigError, TrainConfig


def load_run_config(run_dir: Path):
    """The run's config.yaml, typed again by prefopt's schema and its objective's Config."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: is a file, not a run directory; give the output_dir "
                          "of a prefopt-train run (the folder that holds config.yaml)")
    path = run_dir / "config.yaml"
    try:
        saved = OmegaConf.load(path)
        name = saved.objective.name
    except (yaml.YAMLError, OmegaConfBaseException, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not a readable run config ({first}); prefopt-train "
                          "writes it: restore it from the run, or train again") from None
    objective_cls = registry.load(name)
    try:
        objective = OmegaConf.merge(OmegaConf.structured(objective_cls.Config),
                                    saved.objective)
        rest = {k: v for k, v in saved.items() if k != "objective"}
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), rest)
    except OmegaConfBaseException as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{path}: not a valid run config ({first}); prefopt-train "
                          "writes it: restore it from the run, or train again") from None
    cfg.objective = objective
    return cfg


def length_controlled_win_rate(wins: torch.Tensor, length_difference: torch.Tensor) -> float:
    """σ(b₀) of the logistic regression win ~ b₀ + b₁ · length difference / its std."""
    x = length_difference.double()
    # Scaled, not centred: the intercept must sit at a length difference of zero.
    x = x / x.std().clamp(min=1e-12) if x.numel() > 1 else x * 0
    y = wins.double()
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([params], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = params[0] + params[1] * x
        # A small ridge keeps the fit finite when the wins are perfectly separable.
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) \
            + 1e-3 * params.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(torch.sigmoid(params[0].detach()))


def win_rates(policy_scores, reference_scores, policy_lengths, reference_lengths) -> dict:
    wins = (policy_scores > reference_scores).double() \
        + 0.5 * (policy_scores == reference_scores).double()
    difference = torch.tensor(policy_lengths, dtype=torch.float64) \
        - torch.tensor(reference_lengths, dtype=torch.float64)
    return {"win_rate": float(wins.mean()),
            "length_controlled_win_rate": length_controlled_win_rate(wins, difference),
            "mean_length_policy": float(torch.tensor(policy_lengths, dtype=torch.float64).mean()),
            "mean_length_reference": float(torch.tensor(reference_lengths,
                                                        dtype=torch.float64).mean())}


def obedience(requests: list[dict[str, float]], measured: list[dict]) -> dict[str, float]:
    """Share of answers whose measured value equals the requested one, per attribute and
    for all requested attributes at once (`all`)."""
    names = sorted({n for r in requests for n in r})
    rates = {}
    for name in names:
        hits = [m.get(name) == r[name] for r, m in zip(requests, measured) if name in r]
        rates[name] = sum(hits) / len(hits)
    rates["all"] = sum(all(m.get(n) == v for n, v in r.items())
                       for r, m in zip(requests, measured)) / max(len(requests), 1)
    return rates


def steering(policy, initial, tokenizer, schema, records, builtin: bool, max_prompts: int,
             generation: GenerationConfig, attribute_model: str | None, seed: int) -> dict:
    """Obedience of `policy` (and of `initial`, and of `policy` unconditioned)."""
    from prefopt.data import synthetic

    records = records[:max_prompts]
    prompts = [r.prompt for r in records]
    if builtin:
        requests = synthetic.steering_requests(prompts, seed)

        def measure(answers):
            return [synthetic.measure_attributes(p, a) for p, a in zip(prompts, answers)]
    else:
        if attribute_model is None:
            raise ValueError("steering obedience on your own data needs --attribute-model "
                             "(an objective=attribute_model run's policy/) to measure answers")
        from prefopt.steer.label import AttributeLabeler

        labeler = AttributeLabeler.load(attribute_model)
        requests = [{n: v for n, v in (r.attributes or ()) if v is not None
                     and schema.by_name.get(n) and schema.by_name[n].steerable}
                    for r in records]

        def measure(answers):
            return labeler.label(prompts, answers)

    def answers(model, asked):
        return generate(model, tokenizer, prompts, generation, schema=schema, attributes=asked)

    ours = answers(policy, requests)
    result = {"prompts": len(prompts),
              "before": obedience(requests, measure(answers(initial, requests))),
              "after": obedience(requests, measure(ours)),
              "after_unconditioned": obedience(requests, measure(answers(policy, None)))}
    result["examples"] = [{"prompt": p, "requested": schema.as_json(r), "answer": a}
                          for p, r, a in list(zip(prompts, requests, ours))[:5]]
    return result


def evaluate(run_dir: Path, data: str | None = None, reward_model: str | None = None,
             max_prompts: int = 64, generation: GenerationConfig | None = None,
             attribute_model: str | None = None) -> dict:
    from prefopt.data.datamodule import load_splits
    from prefopt.training.train import attach_cached_reference, build

    cfg = load_run_config(run_dir)
    if data is not None:
        # One file for both splits, in place of the run's own source(s).
        cfg.data.path, cfg.data.val_path = data, data
        if cfg.data.get("mix") is not None:
            cfg.data.mix = None
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module, datamodule, tokenizer = build(cfg)  # same seed: the reference is the run's
    datamodule.setup("validate")
    if module.reference_cached:
        attach_cached_reference(cfg, module, datamodule)
    generator_reference = module.reference
    # A policy that reads attribute lines (SteerLM), not an attribute model.
    steered = FORMATS[module.objective.batch_format].attributed \
        and not module.needs.reward_model
    if (generator_reference is None or steered) and not uses_lora(module.policy):
        generator_reference = make_reference(module.policy)  # before the trained weights
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint} not found: is {run_dir} a prefopt-train run?")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)

    trainer = pl.Trainer(accelerator=cfg.trainer.get("accelerator", "auto"), devices=1,
                         logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = {k: float(v) for k, v in
               trainer.validate(module, datamodule=datamodule, verbose=False)[0].items()}
    result = {"run": str(run_dir), "data": data or "the run's validation split",
              "objective": cfg.objective.name, "metrics": metrics}

    if steered:
        records = load_splits(cfg.data, datamodule.fmt, cfg.seed)["val"]
        result["steering"] = steering(
            module.policy, generator_reference, tokenizer, datamodule.schema, records,
            builtin=cfg.data.path is None and cfg.data.get("mix") is None,
            max_prompts=max_prompts,
            generation=generation or GenerationConfig(), attribute_model=attribute_model,
            seed=cfg.seed)

    if reward_model is not None:
        from prefopt.steer.scorer import RewardScorer

        prompts = [r.prompt for r in load_splits(cfg.data, datamodule.fmt, cfg.seed)["val"]]
        prompts = prompts[:max_prompts]
        generation = generation or GenerationConfig()
        policy = module.policy
        ours = generate(policy, tokenizer, prompts, generation)
        if uses_lora(policy):
            with policy.disable_adapter():
                theirs = generate(policy, tokenizer, prompts, generation)
        else:
            theirs = generate(generator_reference, tokenizer, prompts, generation)
        scorer = RewardScorer.load(reward_model)
        result["generation"] = win_rates(
            scorer.score(prompts, ours), scorer.score(prompts, theirs),
            [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ours],
            [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in theirs])
        result["generation"].update({"prompts": len(prompts), "reward_model": reward_model,
                                     "examples": [{"prompt": p, "policy": a, "reference": b}
                                                  for p, a, b in list(zip(prompts, ours,
                                                                          theirs))[:5]]})
    return result


def print_result(result: dict) -> None:
    table = Table(title=f"prefopt-eval: {result['run']} ({result['objective']})",
                  title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(result["metrics"].items()):
        table.add_row(key, f"{value:.4f}")
    for key, value in result.get("generation", {}).items():
        if isinstance(value, float) and math.isfinite(value):
            table.add_row(f"generation/{key}", f"{value:.4f}")
    for when in ("before", "after", "after_unconditioned"):
        for key, value in result.get("steering", {}).get(when, {}).items():
            table.add_row(f"steering/{when}/{key}", f"{value:.4f}")
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="prefopt-eval", description="Evaluate a prefopt-train run on held-out data: "
        "preference accuracy, reward margins and KL to the reference; with --reward-model, "
        "the win rate (and length-controlled win rate) of the policy's answers against the "
        "reference's; for a SteerLM run, how often answers have the requested attributes.")
    parser.add_argument("run_dir", type=Path, help="a prefopt-train output directory")
    parser.add_argument("--data", help="held-out records (default: the run's validation split)")
    parser.add_argument("--reward-model", help="a reward model saved by prefopt-train "
                        "(objective=reward_bt or reward_pl) to judge generations")
    parser.add_argument("--attribute-model", help="an attribute model saved by prefopt-train "
                        "(objective=attribute_model) to measure a SteerLM policy's answers "
                        "on your own data (the built-in task is measured by program)")
    parser.add_argument("--max-prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--output", type=Path, help="JSON file (default: <run_dir>/eval.json)")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.run_dir, args.data, args.reward_model, args.max_prompts,
                          GenerationConfig(max_new_tokens=args.max_new_tokens),
                          args.attribute_model)
    except (FileNotFoundError, registry.PluginError, ValueError) as exc:
        sys.exit(f"prefopt-eval: error: {exc}")
    output = args.output or args.run_dir / "eval.json"
    output.write_text(json.dumps(result, indent=2) + "\n")
    print_result(result)
    print(f"Written to {output}")

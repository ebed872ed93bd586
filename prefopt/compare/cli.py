"""`prefopt-compare`: train several objectives on the built-in task (or read runs already
trained) and compare them on the reward–KL frontier. See docs/compare.md."""

from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import sys
import time
from pathlib import Path

from prefopt.compare import evaluation, report, runs, sweep

log = logging.getLogger("prefopt")

# The default comparison (`prefopt-compare` alone): every installed offline objective of
# the pairwise or unpaired format at three β (where it has β), two seeds, short runs on a
# small slice of the task, all starting from one shared SFT warm start. Sized to finish
# well under 30 minutes on a busy 2-core CPU (docs/compare.md has the measured time).
DEFAULT_BETAS = "0.05,0.2,1.0"
DEFAULT_SEEDS = "0,1"
DEFAULT_STEPS = 60
DEFAULT_WARM_START_STEPS = 300
DEFAULT_PROMPTS = 64
# Each key applies to the compared runs unless the command line gives it: a learning rate
# ten times below the warm start's (the runs fine-tune a trained policy, as preference
# optimisation does; at 1e-3 every reference-based objective left the warm start's
# reward behind within 30 steps), one validation per epoch whatever max_steps is, a
# training set of 2000 pairs (60 steps of 32 = 1920 pairs: one epoch; tokenising the
# full 20 000 for every run would cost more than training), 64 validation pairs, no
# samples.jsonl.
DEFAULT_KEYS = ("optimizer.lr=1e-4", "trainer.val_check_interval=1.0",
                "trainer.check_val_every_n_epoch=1", "data.synthetic.n_train=2000",
                "data.synthetic.n_val=64", "samples.count=0",
                "trainer.enable_progress_bar=false")
QUIET = ("trainer.enable_progress_bar=false", "samples.count=0")

EPILOG = f"""\
Overrides are prefopt-train's, sweeps included (Hydra's grammar: a,b,c and range()).
Each key not given takes the default comparison's value:
  objective=<every installed objective of the pairwise or unpaired format that trains
             a policy; combinations (mix) are left out: name them or a preset, e.g. rpo>
  objective.beta={DEFAULT_BETAS}   applied to the objectives that have beta; one without
             it trains once per seed and its row says '(no beta)'. An objective setting
             you give is applied the same way, but one that none of the objectives has
             is an error naming it.
  seed={DEFAULT_SEEDS}   trainer.max_steps={DEFAULT_STEPS}
  {" ".join(DEFAULT_KEYS[:3])}
  {" ".join(DEFAULT_KEYS[3:])}
Warm start: unless model.* is given, an SFT run of --warm-start-steps steps (seed 0, the
full training set, the default optimizer) trains first, into <out>/warm-start, and
every run starts from its policy, which is then its reference (as in Rafailov et al.
2023, arXiv:2305.18290, where π_ref = π_SFT). Your settings that are not swept apply to
it too, but the optimizer's and scheduler's.
Evaluation: --prompts held-out prompts x --samples completions sampled from each final
policy at temperature 1, scored by the task's true reward; KL(π‖π_ref) is the mean over
those samples of Σ_t log π(y_t) − log π_ref(y_t). Intervals: 95% Student-t over seeds.

Examples:
  prefopt-compare                                     the default comparison
  OMP_NUM_THREADS=1 prefopt-compare                   the same, on a CPU shared with
                                                      other jobs (far faster there)
  prefopt-compare objective=dpo,ipo,kto objective.beta=0.1,0.5 seed=0,1,2
  prefopt-compare objective=dpo,sft trainer.max_steps=300 --warm-start-steps 0
  prefopt-compare runs/*                              compare runs trained before
Writes <out>/compare.json, compare.md and compare.png (and runs/ when it trains).
"""


def default_objectives() -> list[str]:
    """The installed objectives that train a policy on pairwise or unpaired records of
    the synthetic task, but combinations of other objectives (a Config with `parts`,
    whose default is one of its parts again)."""
    from prefopt import registry
    from prefopt.objective import BatchFormat

    names = []
    for name in sorted(registry.discover()):
        try:
            cls = registry.load(name)
            if cls.batch_format not in (BatchFormat.PAIRWISE, BatchFormat.UNPAIRED) \
                    or "parts" in cls.Config.__dataclass_fields__:
                continue
            if registry.build(cls.Config(name=name)).needs().reward_model:
                continue
        except (registry.PluginError, ValueError) as exc:
            log.warning("prefopt-compare: objective '%s' left out: %s", name, exc)
            continue
        names.append(name)
    return names


def _keys(overrides: list[str]) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides}


def with_defaults(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(the overrides with the default comparison's value of each key not given, the
    objective keys added that way)."""
    given = _keys(overrides)
    added, lenient = [], []
    if "objective" not in given:
        added.append("objective=" + ",".join(default_objectives()))
    if "objective.beta" not in given:
        added.append(f"objective.beta={DEFAULT_BETAS}")
        lenient.append("beta")
    if "seed" not in given:
        added.append(f"seed={DEFAULT_SEEDS}")
    if "trainer.max_steps" not in given:
        added.append(f"trainer.max_steps={DEFAULT_STEPS}")
    added += [o for o in DEFAULT_KEYS if o.split("=", 1)[0] not in given]
    return [*added, *overrides], lenient


def warm_start_overrides(out: Path) -> list[str]:
    """What starts a run from the warm start trained into `out`."""
    return ["model=hf", f"model.name_or_path={out / 'policy'}"]


def train_warm_start(overrides: list[str], steps: int, out: Path) -> None:
    """Train the shared SFT warm start into `out` (kept: a rerun into the same --out reuses
    it): SFT on the task's preferred answers, seed 0, the full training set and the
    default optimizer. The settings given on the command line that are not swept apply
    to it too (data, model shape, ...), but the objective's, the seed, the steps and the
    optimizer's and scheduler's, which are the compared runs' own."""
    from prefopt import api

    own = ("objective", "seed", "trainer.max_steps", "optimizer", "scheduler")
    common = [text for text, o in zip(overrides, sweep.parse(overrides))
              if not o.is_sweep_override()
              and not any(o.key_or_group == k or o.key_or_group.startswith(k + ".")
                          for k in own)]
    epochs = [o for o in ("trainer.val_check_interval=1.0", "trainer.check_val_every_n_epoch=1")
              if o.split("=", 1)[0] not in _keys(common)]  # any training-set size works
    wanted = ["objective=sft", f"trainer.max_steps={steps}", "seed=0", *QUIET, *epochs,
              *common, f"output_dir={out}"]
    if not (out / "policy" / "config.json").is_file():
        print(f"prefopt-compare: SFT warm start, {steps} steps, into {out}", file=sys.stderr,
              flush=True)
        api.run_composed(api.compose(wanted), wanted)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prefopt-compare", epilog=EPILOG, formatter_class=argparse.RawTextHelpFormatter,
        description="Compare preference objectives on the built-in task: true reward of "
                    "sampled completions against KL(π‖π_ref), a frontier per objective "
                    "(the experiment of the DPO paper's Figure 2).")
    parser.add_argument("items", nargs="*", metavar="OVERRIDE|RUN_DIR",
                        help="prefopt-train overrides (key=value, sweeps allowed), or run "
                             "directories to compare instead of training")
    parser.add_argument("--out", type=Path, help="where to write (default: "
                        "compare/<date>/<time>)")
    parser.add_argument("--warm-start-steps", type=int, default=DEFAULT_WARM_START_STEPS,
                        help=f"SFT steps of the shared warm start (default "
                             f"{DEFAULT_WARM_START_STEPS}; 0: start from the random tiny "
                             "model)")
    parser.add_argument("--prompts", type=int, default=DEFAULT_PROMPTS,
                        help="held-out prompts per policy (default %(default)s)")
    parser.add_argument("--samples", type=int, default=evaluation.EvalConfig.samples,
                        help="completions sampled per prompt (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=int,
                        default=evaluation.EvalConfig.max_new_tokens,
                        help="longest sampled completion, in tokens (default %(default)s)")
    return parser


def _check_counts(parser, args) -> None:
    for name in ("prompts", "samples", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warm_start_steps < 0:
        parser.error(f"--warm-start-steps must be >= 0, got {args.warm_start_steps}")


def train_comparison(overrides: list[str], args, out: Path, facts: dict
                     ) -> list[runs.RunEntry]:
    """Plan the jobs (every key checked), train the warm start, train the jobs."""
    from prefopt import api

    api.prepare()
    wanted, lenient = with_defaults(overrides)
    jobs = sweep.plan(wanted, api.compose, lenient)
    warm = args.warm_start_steps > 0
    if warm and any(k.startswith("model") for k in _keys(overrides)):
        print("prefopt-compare: model settings given: no warm start, every run starts from "
              "the model they describe", file=sys.stderr)
        warm = False
    if warm:
        facts["warm_start"] = {"objective": "sft", "steps": args.warm_start_steps,
                               "policy": str(out / "warm-start" / "policy")}
        for job in jobs:
            job.overrides = [*job.overrides, *warm_start_overrides(out / "warm-start")]
    composed = runs.compose_jobs(jobs, out / "runs")  # every job checked before training
    if warm:
        train_warm_start(overrides, args.warm_start_steps, out / "warm-start")
    return runs.train_composed(composed)


def evaluate_entries(entries: list[runs.RunEntry], eval_cfg: evaluation.EvalConfig
                     ) -> list[report.RunResult]:
    print(f"prefopt-compare: sampling and scoring {len(entries)} policies", file=sys.stderr,
          flush=True)
    results = []
    for entry in entries:
        measured = evaluation.evaluate_run(entry.path, entry.config, eval_cfg)
        results.append(report.RunResult(
            path=str(entry.path), objective=entry.objective, setting=entry.setting,
            seed=entry.seed, true_reward=measured.true_reward, kl=measured.kl,
            exact=measured.exact, accuracy=entry.accuracy, runtime_s=entry.runtime_s))
    return results


def compare(args, command: str) -> Path:
    """Run the comparison `args` describe; returns the folder written."""
    from prefopt import api

    started = time.perf_counter()
    out = (args.out or Path("compare") / datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
           ).absolute()
    overrides = [i for i in args.items if "=" in i]
    dirs = [Path(i) for i in args.items if "=" not in i]
    if overrides and dirs:
        raise api.ConfigError(f"{dirs[0]}: give either overrides (to train) or run "
                              "directories (to compare them), not both")
    facts: dict = {"command": command, "warm_start": None}
    if dirs:
        entries = [runs.read_run(d) for d in dirs]
        runs.label_runs(entries)
    else:
        entries = train_comparison(overrides, args, out, facts)
    eval_cfg = evaluation.EvalConfig(prompts=args.prompts, samples=args.samples,
                                     max_new_tokens=args.max_new_tokens)
    results = evaluate_entries(entries, eval_cfg)
    if facts["warm_start"] is not None and entries:
        # The reference itself, for scale: every run starts from it (KL 0 exactly).
        reference, tokenizer, data_cfg = evaluation.initial_policy(entries[0].config)
        measured = evaluation.evaluate_policy(reference, reference, tokenizer, data_cfg,
                                              eval_cfg, "the warm start")
        facts["warm_start"].update(true_reward=measured.true_reward, exact=measured.exact)
    found = report.rows(results)
    facts["evaluation"] = {"prompts": eval_cfg.prompts, "samples": eval_cfg.samples,
                           "max_new_tokens": eval_cfg.max_new_tokens, "temperature": 1.0,
                           "seed": eval_cfg.seed}
    out.mkdir(parents=True, exist_ok=True)
    facts["wall_s"] = round(time.perf_counter() - started, 1)
    report.write_json(out / "compare.json", found, results, facts)
    (out / "compare.md").write_text(report.markdown(found, facts))
    report.write_figure(out / "compare.png", found,
                        (facts["warm_start"] or {}).get("true_reward"))
    print(report.markdown_table(found))
    print(f"prefopt-compare: {len(results)} runs in {facts['wall_s']:.0f} s; wrote "
          f"{out / 'compare.json'}, compare.md and compare.png")
    return out


def main(argv: list[str] | None = None) -> None:
    from prefopt import api

    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    _check_counts(parser, args)
    command = shlex.join(["prefopt-compare", *(sys.argv[1:] if argv is None else argv)])
    try:
        compare(args, command)
    except (*api.USER_ERRORS, evaluation.NotComparableError) as exc:
        sys.exit(f"prefopt-compare: error: {exc}")

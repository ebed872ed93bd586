"""The runs of a comparison: trained here (`train_jobs`) or read from run directories that
`prefopt-train` or `prefopt.train` wrote (`read_run`), in both cases described the same
way (`RunEntry`) from the run directory's own files: config.yaml, summary.json
(`runtime_s`, the `end` validation metrics) and the exported policy/.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from prefopt.compare.sweep import Job
from prefopt.training.rundir import RunDirError

ACCURACY = "val/rewards/accuracies"


@dataclass
class RunEntry:
    """One run as the comparison sees it."""

    path: Path
    objective: str
    seed: int
    setting: str
    config: DictConfig
    runtime_s: float | None
    """Wall seconds of the training process (summary.json), None if not recorded."""
    accuracy: float | None
    """Held-out preference accuracy at the end (val/rewards/accuracies), None if the
    objective does not log it."""


def read_run(path: Path, setting: str | None = None) -> RunEntry:
    """The run in `path`; a one-line RunDirError or FileNotFoundError when `path` is not a
    finished run directory. `setting`: the label of a run this comparison trained (None:
    filled later by `label_runs`)."""
    from prefopt.api import load_run

    run = load_run(path)
    summary_path = run.output_dir / "summary.json"
    if not summary_path.is_file():
        raise RunDirError(f"{path}: the run has not finished (no summary.json); resume it "
                          f"with `prefopt-train output_dir={path} ckpt_path=last`")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{summary_path}: not readable as JSON ({exc})") from None
    end = summary.get("end", {})
    runtime = summary.get("runtime_s")
    return RunEntry(path=run.output_dir, objective=str(run.config.objective.name),
                    seed=int(run.config.seed), setting=setting or "", config=run.config,
                    runtime_s=float(runtime) if runtime is not None else None,
                    accuracy=float(end[ACCURACY]) if ACCURACY in end else None)


def _flat(cfg: DictConfig) -> dict[str, str]:
    """Dotted key -> value (as text) of every leaf of a run's config."""
    from omegaconf import OmegaConf

    def walk(node, prefix: str):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}{key}.")
        else:
            yield prefix[:-1], str(node)

    return dict(walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), ""))


# Keys that differ between runs without making them different settings.
_NOT_SETTINGS = ("seed", "output_dir", "ckpt_path", "export_policy", "progress_bar",
                 "reference_cache_dir", "reference_reuse", "logger",
                 "trainer.enable_progress_bar")


def label_runs(entries: list[RunEntry]) -> None:
    """Label runs read from directories by what sets them apart: the objective settings
    that differ between runs of one objective, and any other key that differs between
    the runs (seed, output_dir and display keys aside), e.g. `beta=0.5`."""
    flats = [_flat(e.config) for e in entries]
    others = set().union(*flats) if flats else set()
    varying = {k for k in others if len({f.get(k) for f in flats}) > 1
               and not k.startswith("objective.")
               and not any(k == n or k.startswith(n + ".") for n in _NOT_SETTINGS)}
    for entry, flat in zip(entries, flats):
        same = [f for e, f in zip(entries, flats) if e.objective == entry.objective]
        own = sorted(k for k in flat if k.startswith("objective.") and k != "objective.name"
                     and len({f.get(k) for f in same}) > 1)
        parts = [f"{k[len('objective.'):]}={flat[k]}" for k in own]
        parts += [f"{k}={flat.get(k)}" for k in sorted(varying)]
        entry.setting = " ".join(parts)


def compose_jobs(jobs: list[Job], runs_dir: Path) -> list[tuple[Job, Path, list[str], DictConfig]]:
    """(job, run directory, overrides, composed config) of every job: each config composed,
    so checked (keys, types), before anything trains. Run directories are
    runs_dir/<objective>/<i>-seed<seed>."""
    from prefopt import api

    composed = []
    for index, job in enumerate(jobs):
        out = runs_dir / job.objective / f"{index:03d}-seed{job.seed}"
        overrides = [*job.overrides, f"output_dir={out}"]
        composed.append((job, out, overrides, api.compose(overrides)))
    return composed


def train_composed(composed, done=None) -> list[RunEntry]:
    """Train the jobs `compose_jobs` composed, one after the other, in this process.
    `done(entry)` is called after each."""
    from prefopt import api

    entries = []
    for index, (job, out, overrides, cfg) in enumerate(composed):
        print(f"prefopt-compare: run {index + 1}/{len(composed)}: {job.objective} "
              f"{job.setting} seed={job.seed}", file=sys.stderr, flush=True)
        api.run_composed(cfg, overrides)
        entry = read_run(out, job.setting)
        entries.append(entry)
        if done is not None:
            done(entry)
    return entries

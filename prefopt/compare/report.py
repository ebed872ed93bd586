"""What a comparison writes: compare.json (every run and every row), compare.md (the
table) and compare.png (the frontier: true reward against KL, one curve per objective).

A row is one (objective, setting) over its seeds; each number is the mean over the seeds
with its 95% Student-t interval (`prefopt.compare.stats.mean_ci`), written `mean ± half`
(no `±` for one seed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from prefopt.compare.stats import mean_ci
from prefopt.data.output import write_atomically

INTERVAL = ("95% Student-t interval over seeds: mean ± t(0.975, n-1) · s / sqrt(n), s the "
            "sample standard deviation of the seeds' results; none for one seed")
KL_ESTIMATE = ("sequence-level KL(pi || pi_ref): mean over the samples y ~ pi (temperature 1, "
               "no top-k, top-p 1) of sum_t log pi(y_t) - log pi_ref(y_t), completion tokens "
               "(EOS included), nats")
COLUMNS = ("objective", "setting", "seeds", "true reward", "KL (nats)",
           "preference accuracy", "wall time (s)")
FIGURE_SIZE = (8.0, 5.0)  # inches; at FIGURE_DPI: 800 x 500 pixels
FIGURE_DPI = 100


@dataclass
class RunResult:
    """One run's numbers (compare.json "runs")."""

    path: str
    objective: str
    setting: str
    seed: int
    true_reward: float
    kl: float
    exact: float
    accuracy: float | None
    runtime_s: float | None


@dataclass
class Estimate:
    mean: float
    ci: float | None
    """Half-width of the 95% interval; None for one seed."""


@dataclass
class Row:
    objective: str
    setting: str
    seeds: list[int]
    true_reward: Estimate
    kl: Estimate
    accuracy: Estimate | None
    runtime_s: Estimate | None
    runs: list[str]


def _estimate(values: Sequence[float | None]) -> Estimate | None:
    if not values or any(v is None for v in values):
        return None
    return Estimate(*mean_ci(values))


def rows(results: Sequence[RunResult]) -> list[Row]:
    """One row per (objective, setting), in the order they first appear."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.objective, result.setting), []).append(result)
    found = []
    for (objective, setting), group in groups.items():
        group = sorted(group, key=lambda r: r.seed)
        found.append(Row(
            objective=objective, setting=setting, seeds=[r.seed for r in group],
            true_reward=_estimate([r.true_reward for r in group]),
            kl=_estimate([r.kl for r in group]),
            accuracy=_estimate([r.accuracy for r in group]),
            runtime_s=_estimate([r.runtime_s for r in group]),
            runs=[r.path for r in group]))
    return found


def _cell(estimate: Estimate | None, digits: int) -> str:
    if estimate is None:
        return "n/a"
    if estimate.ci is None:
        return f"{estimate.mean:.{digits}f}"
    return f"{estimate.mean:.{digits}f} ± {estimate.ci:.{digits}f}"


def markdown_table(found: Sequence[Row]) -> str:
    """The rows as a Markdown table (COLUMNS)."""
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(COLUMNS) - 2)) + "|"]
    for row in found:
        cells = (row.objective, row.setting or "-", str(len(row.seeds)),
                 _cell(row.true_reward, 3), _cell(row.kl, 2), _cell(row.accuracy, 3),
                 _cell(row.runtime_s, 0))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(found: Sequence[Row], facts: dict) -> str:
    """compare.md: how the numbers were made, then the table."""
    evaluation = facts["evaluation"]
    return (
        f"# prefopt-compare\n\n`{facts['command']}`\n\n"
        f"True reward: the built-in task's score in [0, 1], mean over "
        f"{evaluation['prompts']} held-out prompts x {evaluation['samples']} samples "
        f"(at most {evaluation['max_new_tokens']} new tokens) of each final policy. "
        f"KL: {KL_ESTIMATE}, on the same samples. Preference accuracy: the run's own "
        f"{'val/rewards/accuracies'} at the end (n/a: the objective does not log it). "
        f"Wall time: the training process (summary.json runtime_s). "
        f"Intervals: {INTERVAL}.{_reference_line(facts)}\n\n" + markdown_table(found))


def _reference_line(facts: dict) -> str:
    start = facts.get("warm_start") or {}
    if start.get("true_reward") is None:
        return ""
    return (f" Every run starts from the warm start ({start['objective']}, {start['steps']} "
            f"steps), its reference: its own true reward is {start['true_reward']:.3f} "
            f"(KL 0).")


def _finite(value):
    """JSON without NaN or Infinity (which strict readers refuse): null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, found: Sequence[Row], results: Sequence[RunResult],
               facts: dict) -> None:
    payload = _finite({**facts, "interval": INTERVAL, "kl_estimate": KL_ESTIMATE,
                       "columns": list(COLUMNS), "rows": [asdict(r) for r in found],
                       "runs": [asdict(r) for r in results]})
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))


def frontier_figure(found: Sequence[Row], reference_reward: float | None = None):
    """True reward against KL, one curve per objective through its settings (sorted by
    KL), with the reward's interval as error bars where there is one; a dashed line at
    the reference's own reward when it is known (the warm start every run starts from)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI)
    axes = figure.add_subplot(1, 1, 1)
    objectives = list(dict.fromkeys(r.objective for r in found))
    colours = colormaps["tab20"]
    markers = "osD^v<>ph*"
    for index, objective in enumerate(objectives):
        points = sorted((r for r in found if r.objective == objective),
                        key=lambda r: r.kl.mean)
        errors = [r.true_reward.ci or 0.0 for r in points]
        axes.errorbar([r.kl.mean for r in points], [r.true_reward.mean for r in points],
                      yerr=errors if any(errors) else None, label=objective,
                      color=colours(index % 20), marker=markers[index % len(markers)],
                      markersize=5, linewidth=1.2, capsize=2)
    if reference_reward is not None:
        axes.axhline(reference_reward, color="black", linestyle="--", linewidth=1,
                     label="π_ref (warm start)")
    axes.set_xlabel("KL(π ‖ π_ref), nats per completion (samples from π)")
    axes.set_ylabel("true reward (task score, mean)")
    axes.set_title("reward–KL frontier on the built-in task")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2 if len(objectives) > 8 else 1, loc="best")
    figure.tight_layout()
    return figure


def write_figure(path: Path, found: Sequence[Row], reference_reward: float | None = None
                 ) -> None:
    frontier_figure(found, reference_reward).savefig(path, dpi=FIGURE_DPI)

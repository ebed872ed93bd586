"""The picture at the end of a run: training and validation curves from metrics.csv."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure

# (panel title, metric without the train/ or val/ prefix)
PANELS = (("loss", "loss"), ("reward margin", "rewards/margins"),
          ("preference accuracy", "rewards/accuracies"), ("KL to reference (k1)", "kl"))


def read_series(metrics_csv: Path) -> dict[str, tuple[list[int], list[float]]]:
    """{metric: (steps, values)} for every column, skipping the rows that lack it."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                steps, values = series.setdefault(key, ([], []))
                steps.append(int(float(row["step"])))
                values.append(float(value))
    return series


def curves_figure(series: dict[str, tuple[list[int], list[float]]]) -> Figure:
    panels = [(title, metric) for title, metric in PANELS
              if f"train/{metric}" in series or f"val/{metric}" in series]
    figure = Figure(figsize=(4.5 * max(len(panels), 1), 3.6), layout="constrained")
    for index, (title, metric) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for stage, style in (("train", {"alpha": 0.5, "linewidth": 1}),
                             ("val", {"marker": "o", "linewidth": 2})):
            if f"{stage}/{metric}" in series:
                steps, values = series[f"{stage}/{metric}"]
                axes.plot(steps, values, label=stage, **style)
        axes.set_title(title)
        axes.set_xlabel("optimizer step")
        axes.grid(alpha=0.3)
        axes.legend()
    return figure


def plot_curves(metrics_csv: Path, out_png: Path) -> Path:
    curves_figure(read_series(metrics_csv)).savefig(out_png, dpi=110)
    return out_png

"""Objectives of the zoo through prefopt-train's code on the built-in task, beyond what every
objective gets anyway (tests/conf/test_configs.py trains each installed objective two
steps and checks the shared metric schema; tests/integration/test_precision.py does it in
bf16): the objective's own metrics reach the run's logs, and BCO's reward shift δ, moved
by the training steps, is what validation reads."""

import csv
import math

import pytest

# The module logs whatever metrics an objective returns, one code path for all: ORPO (a
# scalar and a per-pair metric) and BCO (unpaired, with state) stand for the zoo, keeping
# the suite short; every objective's own metrics are checked at the loss in its test file.
OWN_METRICS = {"orpo": ["orpo/nll", "orpo/log_odds_ratio"], "bco": ["bco/delta"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OWN_METRICS))
def test_own_metrics_are_logged_in_training(name, compose, fast_overrides, tmp_path):
    from prefopt.training.train import train

    end = train(compose(f"objective={name}", *fast_overrides, "export_policy=false"))["end"]
    assert math.isfinite(end["val/loss"])
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for metric in OWN_METRICS[name]:
        assert math.isfinite(end[f"val/{metric}"])
        logged = [float(row[f"train/{metric}"]) for row in rows if row.get(f"train/{metric}")]
        assert logged and all(math.isfinite(value) for value in logged)
    if name == "bco":
        # δ starts at 0; the training steps moved it (their rewards β log π/π_ref are not
        # all 0 once the policy has taken a step), and validation read it, not reset it.
        assert end["val/bco/delta"] != 0.0

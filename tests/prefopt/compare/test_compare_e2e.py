"""prefopt-compare end to end: a third-party objective (a distribution on sys.path, found
by its entry point like any plugin) and IPO, two settings each, one seed, tiny runs from a
tiny warm start; compare.json, the Markdown table and the PNG are checked."""

import importlib
import json
import math
import struct
import sys

import pytest

from prefopt import registry
from prefopt.compare import cli

pytestmark = pytest.mark.slow

THIRD_PARTY = '''
from prefopt.plugins.dpo import DPO


class ScaledDPO(DPO):
    """DPO under another name, from another distribution."""

    description = "a third party's DPO"
'''
FAST = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
        "data.synthetic.n_train=32", "data.synthetic.n_val=8", "data.batch_size=4"]


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    site = tmp_path / "site"
    info = site / "compare_probe-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: compare-probe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\nthirdparty_dpo = compare_probe:ScaledDPO\n")
    (site / "compare_probe.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    registry.clear_caches()
    yield "thirdparty_dpo"
    registry.clear_caches()
    sys.modules.pop("compare_probe", None)


def test_two_objectives_two_settings_one_seed(third_party, tmp_path):
    out = tmp_path / "cmp"
    cli.main([f"objective={third_party},ipo", "objective.beta=0.1,0.5", "seed=0", *FAST,
              "--warm-start-steps", "2", "--prompts", "2", "--samples", "2",
              "--max-new-tokens", "4", "--out", str(out)])
    payload = json.loads((out / "compare.json").read_text())
    assert payload["warm_start"]["steps"] == 2
    assert 0.0 <= payload["warm_start"]["true_reward"] <= 1.0  # the reference's own
    assert [(r["objective"], r["setting"], r["seeds"]) for r in payload["rows"]] == [
        (third_party, "beta=0.1", [0]), (third_party, "beta=0.5", [0]),
        ("ipo", "beta=0.1", [0]), ("ipo", "beta=0.5", [0])]
    for run in payload["runs"]:
        assert 0.0 <= run["true_reward"] <= 1.0
        assert all(math.isfinite(run[k]) for k in ("kl", "accuracy", "runtime_s"))
        config = (tmp_path / run["path"] / "config.yaml").read_text()
        assert f"name_or_path: {out / 'warm-start' / 'policy'}" in config
    assert payload["evaluation"]["samples"] == 2

    lines = (out / "compare.md").read_text().splitlines()
    header = lines.index("| objective | setting | seeds | true reward | KL (nats) | "
                         "preference accuracy | wall time (s) |")
    rows = [line.strip("| ").split(" | ") for line in lines[header + 2:]
            if line.startswith("|")]
    assert len(rows) == 4
    for cells in rows:
        assert cells[2] == "1" and "±" not in cells[3]  # one seed: no interval
        assert all(math.isfinite(float(cells[i])) for i in (3, 4, 5, 6))

    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (800, 500)

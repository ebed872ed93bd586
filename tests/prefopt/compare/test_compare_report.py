"""compare.md's table, compare.json and the PNG, from results written by hand."""

import json
import math
import struct

from prefopt.compare import report
from prefopt.compare.report import RunResult


def _results():
    return [
        RunResult("r/0", "dpo", "beta=0.1", 1, true_reward=0.7, kl=3.0, exact=0.5,
                  accuracy=0.9, runtime_s=20.0),
        RunResult("r/1", "dpo", "beta=0.1", 0, true_reward=0.5, kl=1.0, exact=0.25,
                  accuracy=0.8, runtime_s=10.0),
        RunResult("r/2", "sft", "(no beta)", 0, true_reward=0.25, kl=0.5, exact=0.0,
                  accuracy=None, runtime_s=12.0),
    ]


def test_rows_group_seeds_and_sort_them():
    found = report.rows(_results())
    assert [(r.objective, r.setting, r.seeds) for r in found] == [
        ("dpo", "beta=0.1", [0, 1]), ("sft", "(no beta)", [0])]
    dpo = found[0]
    assert dpo.runs == ["r/1", "r/0"]
    assert dpo.true_reward.mean == 0.6
    # s = 0.2/√2; half = 12.706 s / √2 = 12.706 · 0.1
    assert math.isclose(dpo.true_reward.ci, 1.2706)
    assert found[1].accuracy is None and found[1].kl.ci is None


def test_markdown_table():
    table = report.markdown_table(report.rows(_results()))
    # KL: mean 2, half 12.706 · √2 / √2; accuracy: 0.85 ± 12.706 · 0.05;
    # wall time: 15 ± 12.706 · 5 = 63.53
    assert table.splitlines() == [
        "| objective | setting | seeds | true reward | KL (nats) | preference accuracy "
        "| wall time (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
        "| dpo | beta=0.1 | 2 | 0.600 ± 1.271 | 2.00 ± 12.71 | 0.850 ± 0.635 | 15 ± 64 |",
        "| sft | (no beta) | 1 | 0.250 | 0.50 | n/a | 12 |",
    ]


def test_json_is_strict_and_holds_rows_and_runs(tmp_path):
    results = _results()
    results[2].kl = float("nan")  # a NaN would make the JSON unreadable to strict readers
    found = report.rows(results)
    report.write_json(tmp_path / "compare.json", found, results,
                      {"command": "prefopt-compare", "evaluation": {"prompts": 2}})
    text = (tmp_path / "compare.json").read_text()
    payload = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert payload["columns"] == list(report.COLUMNS)
    assert payload["rows"][1]["kl"] == {"mean": None, "ci": None}
    assert [r["seed"] for r in payload["runs"]] == [1, 0, 0]
    assert "t(0.975, n-1)" in payload["interval"] and "pi_ref" in payload["kl_estimate"]


def png_size(path):
    """(width, height) from the PNG's IHDR chunk (signature, length, 'IHDR', w, h)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_frontier_has_the_documented_size(tmp_path):
    report.write_figure(tmp_path / "f.png", report.rows(_results()))
    assert png_size(tmp_path / "f.png") == (800, 500)


def test_markdown_states_the_evaluation_and_the_reference():
    facts = {"command": "prefopt-compare seed=0",
             "evaluation": {"prompts": 64, "samples": 4, "max_new_tokens": 16},
             "warm_start": {"objective": "sft", "steps": 300, "true_reward": 0.41234}}
    text = report.markdown(report.rows(_results()), facts)
    assert text.startswith("# prefopt-compare\n\n`prefopt-compare seed=0`\n")
    assert "mean over 64 held-out prompts x 4 samples (at most 16 new tokens)" in text
    assert "its own true reward is 0.412 (KL 0)" in text
    assert text.endswith(report.markdown_table(report.rows(_results())))
    facts["warm_start"] = None
    assert "warm start" not in report.markdown(report.rows(_results()), facts)


def test_png_with_the_reference_line_keeps_its_size(tmp_path):
    report.write_figure(tmp_path / "f.png", report.rows(_results()), reference_reward=0.4)
    assert png_size(tmp_path / "f.png") == (800, 500)

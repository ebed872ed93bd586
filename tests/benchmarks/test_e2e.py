"""The end-to-end benchmark harness (benchmarks/e2e): same job for both trainers, phase
profile, report. The CPU smoke run is what `make bench-e2e` does without a GPU."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parents[2] / "benchmarks" / "e2e"
sys.path.insert(0, str(E2E))

import e2e_report  # noqa: E402
import phases  # noqa: E402
from data import EOS_ID, FIRST_ORDINARY_ID, random_pairs  # noqa: E402
from shapes import GPU_SHAPES, Shape  # noqa: E402


def test_the_issue_shapes():
    assert {(s.model, s.seq_len, s.pairs) for s in GPU_SHAPES} == {
        (m, t, b) for m in ("qwen2-0.5b", "llama-3.2-1b") for t in (1024, 2048) for b in (4, 8)}
    assert Shape("qwen2-0.5b", 2048, 8).tokens_per_step == 2 * 8 * 2048


@pytest.mark.parametrize("name, params", [("qwen2-0.5b", 494.0e6), ("llama-3.2-1b", 1235.8e6)])
def test_models_have_the_published_sizes(name, params):
    """Qwen2-0.5B: 494M parameters; Llama-3.2-1B: 1.24B (their model cards), both with the
    LM head tied to the input embedding."""
    import torch
    from shapes import build_model

    model = build_model(name, seed=0, gradient_checkpointing=False,
                        device=torch.device("meta"))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=1e-3)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_pairs_fill_the_sequence_and_end_in_eos():
    shape = Shape("tiny-llama", 48, 2)
    pairs = random_pairs(shape, vocab_size=515, n_pairs=3, seed=0)
    assert len(pairs) == 3
    for prompt, chosen, rejected in pairs:
        assert len(prompt) == 12 and len(chosen) == len(rejected) == 36
        assert chosen[-1] == rejected[-1] == EOS_ID
        assert all(FIRST_ORDINARY_ID <= t < 515 for t in prompt + chosen[:-1] + rejected[:-1])
    assert random_pairs(shape, 515, 3, seed=0) == pairs  # both trainers get the same ones


class _FakeClock(phases.StepProfiler):
    """Marks at the instants given, in seconds."""

    def __init__(self, instants):
        super().__init__(device=__import__("torch").device("cpu"))
        self._instants = iter(instants)

    def _now(self):
        return next(self._instants)


MARKS = [mark for mark, _ in phases.PHASES]


def test_phases_are_the_intervals_between_marks():
    profiler = _FakeClock([0.0, 0.001, 0.003, 0.006, 0.010, 0.015, 0.021, 0.028, 0.036,
                           0.045, 0.055])
    profiler.begin_step()
    for mark in MARKS[:-1]:
        profiler.mark(mark)
        profiler.mark(mark)  # a second firing (e.g. an inner optimizer) keeps the first
    profiler.end_step()
    got = profiler.summary()
    assert list(got) == list(phases.PHASE_NAMES)
    assert [round(v, 6) for v in got.values()] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_a_missing_or_misordered_mark_stops_the_profile():
    profiler = _FakeClock([0.0, 1.0, 2.0])
    profiler.begin_step()
    profiler.mark("policy_trunk_start")
    with pytest.raises(RuntimeError, match=r"without the marks \['policy_trunk_end'"):
        profiler.end_step()
    order = ["step_start", "reference_trunk_start", *[m for m in MARKS
                                                       if m != "reference_trunk_start"]]
    profiler = _FakeClock([float(i) for i in range(len(order))])
    profiler.begin_step()
    for mark in order[1:]:
        profiler.mark(mark)
    with pytest.raises(RuntimeError, match="phase names would not hold"):
        profiler.end_step()


def _run(provider, tokens_per_s, peak_mib):
    first, second = (-100.0, 0.693) if provider == "prefopt" else (-100.01, 0.690)
    return {"provider": provider, "shape": {"model": "qwen2-0.5b", "seq_len": 1024, "pairs": 4},
            "spec": {"device": "cuda"}, "versions": {"device_name": "GPU", "torch": "x"},
            "result": {"tokens_per_s": tokens_per_s, "peak_mib": peak_mib, "step_ms": 1.0,
                       "first_logps_chosen": first, "losses": [0.6931, second],
                       "peak_rss_mib": 1.0, "step_start_mib": 2048.0, "reserved_mib": None,
                       "phases_ms": {name: 1.0 for name in phases.PHASE_NAMES}}}


@pytest.mark.parametrize("speed, memory, verdict", [
    ((13000, 10000), (6144, 10240), "both met"),  # 1.30x, 0.60x: on the targets
    ((12000, 10000), (6144, 10240), "speed not met"),
    ((13000, 10000), (7168, 10240), "memory not met"),
])
def test_report_compares_with_the_targets(speed, memory, verdict):
    results = {"date": "d", "commit": "c", "precision": "bf16-mixed",
               "gradient_checkpointing": False,
               "steps": {"warmup": 1, "timed": 1, "profiled": 1},
               "runs": [_run("prefopt", speed[0], memory[0]), _run("trl", speed[1], memory[1])]}
    text = e2e_report.markdown(results)
    row = next(line for line in text.splitlines() if line.startswith("| qwen2-0.5b"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[5] == f"{speed[0] / speed[1]:.2f}×"
    assert cells[6:8] == [f"{memory[0] / 1024:.1f}", f"{memory[1] / 1024:.1f}"]
    assert cells[8] == f"{memory[0] / memory[1]:.2f}×"
    assert cells[9] == verdict
    assert "| **sum of phases** | 10.0 / 10.0 |" in text
    assert "| GiB allocated at step start | 2.0 / 2.0 |" in text
    # -100 and -100.01: 1e-4 relative; losses 0.693 and 0.690 at the second step: 3e-3.
    assert "| same job: first Σ log π(chosen), relative difference | 1.0e-04 |" in text
    assert "| same job: largest loss difference over the steps | 3.0e-03 |" in text
    assert "| GiB peak reserved | n/a / n/a |" in text


def test_a_failed_run_is_reported_not_hidden():
    failed = {"provider": "trl", "shape": {"model": "qwen2-0.5b", "seq_len": 1024, "pairs": 4},
              "error": "out of GPU memory"}
    results = {"date": "d", "commit": "c", "precision": "bf16-mixed",
               "gradient_checkpointing": False, "steps": {"warmup": 1, "timed": 1, "profiled": 1},
               "runs": [_run("prefopt", 100, 10), failed]}
    row = next(line for line in e2e_report.markdown(results).splitlines()
               if line.startswith("| qwen2-0.5b"))
    assert "out of GPU memory" in row and row.endswith("| n/a | n/a |")


def test_a_gpu_run_whose_workers_all_failed_is_not_labelled_a_cpu_run():
    failed = [{"provider": p, "shape": {"model": "qwen2-0.5b", "seq_len": 1024, "pairs": 4},
               "error": "boom"} for p in ("prefopt", "trl")]
    results = {"date": "d", "commit": "c", "precision": "bf16-mixed", "device": "cuda",
               "device_name": "NVIDIA H200", "gradient_checkpointing": False,
               "steps": {"warmup": 1, "timed": 1, "profiled": 1}, "runs": failed}
    text = e2e_report.markdown(results)
    assert text.startswith("### GPU results") and "device: NVIDIA H200" in text


@pytest.mark.slow
def test_cpu_smoke_run_trains_the_same_job_in_both_trainers(tmp_path):
    """Both trainers start from the same weights and data: the same first log-probs and,
    step after step, the same losses; the report and chart are written."""
    pytest.importorskip("trl")
    import run

    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Benchmark results\n\nkept\n")
    code = run.main(["--lr", "1e-3", "--warmup", "1", "--timed", "2", "--profiled", "2",
                     "--trace", "--out", str(tmp_path / "e2e.json"), "--results", str(results_md),
                     "--png", str(tmp_path / "e2e.png")])
    assert code == 0
    results = json.loads((tmp_path / "e2e.json").read_text())
    mine, theirs = (next(r for r in results["runs"] if r["provider"] == p)
                    for p in ("prefopt", "trl"))
    for run_ in (mine, theirs):
        result = run_["result"]
        assert len(result["losses"]) == 6  # 1 warm-up, 2 timed, 2 profiled, 1 traced
        # Policy = reference at the first step: -log σ(0) = log 2.
        assert result["losses"][0] == pytest.approx(math.log(2), abs=1e-6)
        assert set(result["phases_ms"]) == set(phases.PHASE_NAMES)
        assert all(v >= 0 for v in result["phases_ms"].values())
        assert result["tokens_per_s"] > 0
    assert mine["result"]["first_logps_chosen"] == pytest.approx(
        theirs["result"]["first_logps_chosen"], rel=1e-5)
    assert mine["result"]["losses"] == pytest.approx(theirs["result"]["losses"], rel=1e-4)
    assert mine["result"]["losses"][-1] != pytest.approx(math.log(2), abs=1e-3)  # it trained
    text = results_md.read_text()
    assert text.startswith("# Benchmark results\n\nkept\n")
    assert "<!-- report:e2e-cpu-smoke:begin -->" in text and "| tiny-llama | 48 | 2 |" in text
    assert (tmp_path / "e2e.png").stat().st_size > 0
    kernels = (tmp_path / "e2e-kernels.md").read_text()
    for provider in ("prefopt", "trl"):
        section = kernels.split(f"## {provider}, tiny-llama T=48 B=2")[1].split("## ")[0]
        assert "Self CPU" in section and "aten::" in section  # torch.profiler's table
    assert "`benchmarks/e2e/e2e-kernels.md`" in text

"""The kernel benchmark's harness (benchmarks/bench_env.py, test_logprobs.py, report.py):
how many calls each timing gets, and what its JSON and table carry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_env  # noqa: E402
import report  # noqa: E402


def test_a_55_ms_call_gets_a_median_of_many_calls_on_the_gpu():
    """The issue's fwd+bwd takes ~55 ms; do_bench(rep=100) timed int(100 / 55) = 1 call."""
    reps = bench_env.reps_for(55.0, bench_env.GPU_MIN_REPS, bench_env.GPU_MIN_TOTAL_MS)
    assert reps >= 19 and reps * 55.0 >= 1000.0
    fast = bench_env.reps_for(0.5, bench_env.GPU_MIN_REPS, bench_env.GPU_MIN_TOTAL_MS)
    assert fast == 2000  # a second's worth of a fast call
    assert bench_env.reps_for(5000.0, bench_env.GPU_MIN_REPS, bench_env.GPU_MIN_TOTAL_MS) == 25


def test_time_stats_reports_min_median_max():
    calls = []
    stats = bench_env.time_stats(lambda: calls.append(1))
    assert stats["reps"] == len(calls) == bench_env.MIN_REPS
    assert 0 <= stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]


@pytest.mark.slow
def test_the_benchmark_json_and_table_carry_the_spread_and_the_gemm_path(tmp_path):
    """The CPU smoke run of the suite, with the Triton provider under the interpreter (a
    child process: the interpreter must be on before triton is imported)."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / "test_logprobs.py"), "-q",
           "-p", "no:cacheprovider", "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
           "--benchmark-enable", f"--benchmark-json={out}", "-k", "random"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = [b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]]
    assert {r["provider"] for r in rows} == {"prefopt-triton", "torch-eager",
                                             "torch-compile-chunked"}
    for r in rows:
        stats = r["fwd_bwd_stats"]
        assert stats["reps"] == 3 and stats["min_ms"] <= r["fwd_bwd_ms"] <= stats["max_ms"]
    (triton,) = [r for r in rows if r["provider"] == "prefopt-triton"]
    assert triton["triton_backward"] == {
        "dtype": "bfloat16", "dh_mm": "cpu-fp32-operands", "dw_mm": "same-dtype",
        "dz_row_scaling": False, "row_chunks": 1, "vocab_chunks": 1}
    results = tmp_path / "RESULTS.md"
    assert report.main([str(out), "--results", str(results)]) == 0
    table = results.read_text()
    assert "dh cpu-fp32-operands, dW same-dtype" in table
    assert f"({triton['fwd_bwd_stats']['reps']}) |" in table

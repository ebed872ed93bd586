"""pytest wiring of the benchmark suite; the environment itself is in bench_env.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# bench_env.py, bench_providers.py and bench_data.py sit next to this file; pytest's
# importlib import mode does not put this folder on sys.path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_env import BenchEnv  # noqa: E402


@pytest.fixture(scope="session")
def bench_env():
    return BenchEnv()

# Two commands set everything up on a fresh machine:
#   make train   create .venv, install prefopt, run the default job (DPO, tiny model, CPU)
#   make test    create .venv if needed, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# torch first, so that prefopt's `torch>=2.4` is already satisfied when pip resolves it.
# Hosts without an NVIDIA GPU take torch 2.13.0, the CPU build kept on this workplace's
# disk (an unpinned torch pulls a ~5 GB CUDA build). Hosts with a GPU take the CUDA build.
# Override either way: `make test TORCH_SPEC='torch==2.9.1'`.
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)
EXTRAS ?= test,bench,lint

.PHONY: venv train compare test test-fast lint bench bench-report bench-cpu bench-e2e clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/prefopt-train $(ARGS)

# The default comparison of objectives on the reward–KL frontier (docs/compare.md).
# One torch thread by default: on a CPU shared with other jobs, two threads per process
# made it about ten times slower, not faster. COMPARE_THREADS=2 on an idle machine.
COMPARE_THREADS ?= 1
compare: $(STAMP)
	OMP_NUM_THREADS=$(COMPARE_THREADS) $(BIN)/prefopt-compare $(ARGS)

# `pytest`, not `python -m pytest`: the latter puts the repo root on sys.path, which would
# expose kernels/ as a top-level `kernels` package (see pyproject.toml).
test: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff: lint and import order (configured in pyproject.toml). `make lint FIX=1` fixes
# what it can.
lint: $(STAMP)
	$(BIN)/ruff check $(if $(FIX),--fix) .

# Kernel microbenchmarks (pytest-benchmark). On a CPU machine: a small smoke test.
bench: $(STAMP)
	$(BIN)/pytest benchmarks -q --benchmark-enable --benchmark-json=benchmarks/bench.json $(PYTEST_ARGS)

# Benchmarks, then their table in benchmarks/RESULTS.md (and a PNG chart on a GPU).
bench-report: bench
	$(BIN)/python benchmarks/report.py benchmarks/bench.json

# The torch path of the kernels (every CPU user's) against torch eager on this CPU: fwd+bwd
# time side by side and the allocator's peak memory. ARGS="--shape 2048 512 32000 --reps 5"
bench-cpu: $(STAMP)
	$(BIN)/python benchmarks/cpu_reference.py $(ARGS)

# One DPO step, prefopt against TRL's DPOTrainer: tokens/s, peak memory and a profile, into
# benchmarks/RESULTS.md (+ benchmarks/e2e/e2e.png on a GPU). On a CPU machine: a smoke run.
bench-e2e: $(STAMP)
	$(BIN)/python benchmarks/e2e/run.py $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info outputs multirun .pytest_cache .benchmarks

"""The launch configuration of the Triton kernels (kernels/autotune.py), on the CPU.

No kernel runs here. Each expected value is worked out by hand from the rule the code
states (shared-memory arithmetic, fallback blocks, split-count formula); INTERPRETED is
set per test, so these give the same result in a compiled and in an interpreting process.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from prefopt.kernels import autotune
from prefopt.kernels.triton_logprobs import LaunchOptions


def _args(dtype):
    return {"h_ptr": torch.empty(0, dtype=dtype)}


def _shape(config):
    k = config.kwargs
    return k["BLOCK_N"], k["BLOCK_V"], k["BLOCK_K"], config.num_warps, config.num_stages


def test_smem_filter_drops_the_big_configs_for_fp32_only():
    # stages x (BLOCK_N + BLOCK_V) x BLOCK_K x bytes, against 200 KiB = 204800 bytes:
    #   128 x 256 x 64, 3 stages:  3 x 384 x 64 = 73728 elements -> bf16 147456, fp32 294912
    #   128 x 128 x 64, 4 stages:  4 x 256 x 64 = 65536          -> bf16 131072, fp32 262144
    #   128 x 128 x 32, 4 stages:  4 x 256 x 32 = 32768          -> bf16  65536, fp32 131072
    #    64 x 128 x 64, 4 stages:  4 x 192 x 64 = 49152          -> bf16  98304, fp32 196608
    #    64 x  64 x 32, 3 stages:  3 x 128 x 32 = 12288          -> bf16  24576, fp32  49152
    everything = [_shape(c) for c in autotune._GPU_CONFIGS]
    for dtype in (torch.bfloat16, torch.float16):
        kept = autotune._fits_smem(autotune._GPU_CONFIGS, _args(dtype))
        assert [_shape(c) for c in kept] == everything
    kept = autotune._fits_smem(autotune._GPU_CONFIGS, _args(torch.float32))
    assert [_shape(c) for c in kept] == [(128, 128, 32, 4, 4), (64, 128, 64, 4, 4),
                                         (64, 64, 32, 4, 3)]


def test_smem_filter_boundary_and_fallback():
    cfg = autotune._cfg
    # fp32: 1 x (144 + 256) x 128 x 4 = 204800 bytes, exactly the budget: kept;
    # 1 x (144 + 256) x 129 x 4 = 206400: dropped.
    at_budget, over = cfg(144, 256, 128, 4, 1), cfg(144, 256, 129, 4, 1)
    assert autotune._fits_smem([at_budget, over], _args(torch.float32)) == [at_budget]
    # Nothing fits (2 x 512 x 128 x 4 = 524288, 3 x 512 x 128 x 4 = 786432): the last config
    # is kept, so that the autotuner always has one to run.
    big, bigger = cfg(256, 256, 128, 4, 2), cfg(256, 256, 128, 4, 3)
    assert autotune._fits_smem([bigger, big], _args(torch.float32)) == [big]


@pytest.mark.parametrize("opts, want", [
    (LaunchOptions(), None),  # nothing given: the autotuner chooses
    # Sizes not given come from the 128 x 128 x 64 config; 4 warps, 3 stages unless given.
    (LaunchOptions(block_n=64),
     ({"BLOCK_N": 64, "BLOCK_V": 128, "BLOCK_K": 64}, {"num_warps": 4, "num_stages": 3})),
    (LaunchOptions(block_k=32, num_warps=8, num_stages=2),
     ({"BLOCK_N": 128, "BLOCK_V": 128, "BLOCK_K": 32}, {"num_warps": 8, "num_stages": 2})),
    # Warps and stages alone do not bypass the autotuner.
    (LaunchOptions(num_warps=8), None),
])
def test_explicit_blocks_compiled(monkeypatch, opts, want):
    monkeypatch.setattr(autotune, "INTERPRETED", False)
    assert autotune._explicit_blocks(opts) == want


@pytest.mark.parametrize("opts, want", [
    # The interpreter never autotunes: small 16 x 32 x 16 blocks, no warps or stages.
    (LaunchOptions(), {"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_K": 16}),
    (LaunchOptions(block_v=64, num_warps=8), {"BLOCK_N": 16, "BLOCK_V": 64, "BLOCK_K": 16}),
])
def test_explicit_blocks_interpreted(monkeypatch, opts, want):
    monkeypatch.setattr(autotune, "INTERPRETED", True)
    assert autotune._explicit_blocks(opts) == (want, {})


@pytest.mark.parametrize("H, blocks, want", [
    # Autotuned: BLOCK_K is 64 or 32 depending on the config, so H must be a multiple of 64.
    (4096, None, True),
    (128, None, True),
    (96, None, False),  # 96 = 64 + 32: the 64-wide configs would read past H
    (48, None, False),
    # Explicit blocks: only their own BLOCK_K counts.
    (48, ({"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_K": 16}, {}), True),
    (33, ({"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_K": 16}, {}), False),
])
def test_even_k(H, blocks, want):
    assert autotune._even_k(H, blocks) is want


def test_n_splits_given_or_interpreted(monkeypatch):
    monkeypatch.setattr(autotune, "INTERPRETED", False)
    assert autotune._n_splits(100, 1000, 128, 128, "cuda", LaunchOptions(n_splits=5)) == 5
    assert autotune._n_splits(100, 1000, 128, 128, "cuda", LaunchOptions(n_splits=0)) == 1
    monkeypatch.setattr(autotune, "INTERPRETED", True)
    assert autotune._n_splits(100, 1000, 16, 32, "cpu", LaunchOptions()) == 2


@pytest.mark.parametrize("n_rows, V, want", [
    # 132 SMs -> 8 x 132 = 1056 programs wanted, shared out over ceil(n_rows / 128) blocks:
    (8192, 128256, 17),  # 64 row blocks: ceil(1056 / 64) = 17 (of 1002 vocabulary tiles)
    (100_000, 128256, 2),  # 782 row blocks: ceil(1056 / 782) = 2
    (2**20, 128256, 1),  # 8192 row blocks fill the GPU alone
    (128, 300, 3),  # 1 row block would take 1056 splits, but V has only 3 tiles of 128
])
def test_n_splits_fill_the_gpu(monkeypatch, n_rows, V, want):
    monkeypatch.setattr(autotune, "INTERPRETED", False)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(multi_processor_count=132))
    assert autotune._n_splits(n_rows, V, 128, 128, "cuda", LaunchOptions()) == want


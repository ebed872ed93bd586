"""The torch side of the Triton backward (kernels/triton_backward.py), on the CPU: how the
rows and vocabulary are cut into workspace passes, and the GEMM helper that accumulates
dW and dh. The dz kernel itself runs in test_triton_interpret.py / test_triton_gpu.py.
"""

from __future__ import annotations

import pytest
import torch

from prefopt.kernels import triton_backward
from prefopt.kernels.triton_backward import _chunking, _mm_into
from prefopt.kernels.triton_logprobs import LaunchOptions


@pytest.mark.parametrize("N, H, V, dtype, want", [
    # Rows: as many as a 64 MiB fp32 dh accumulator holds, 2^26 / (4 H), in steps of 128;
    # columns: as many as a 64 MiB dz block of those rows holds, 2^26 / (bytes x rows),
    # in steps of 256. At H = 4096: 4096 rows, then 8192 bf16 / 4096 fp32 columns.
    (8192, 4096, 128256, torch.bfloat16, (4096, 8192)),
    (8192, 4096, 128256, torch.float32, (4096, 4096)),
    # H = 3000: 2^26 / 12000 = 5592.4 -> 5504 rows (43 x 128); 2^26 / (2 x 5504) = 6096.4
    # -> 5888 columns (23 x 256).
    (8192, 3000, 128256, torch.float16, (5504, 5888)),
    # Fewer rows than a chunk: rows = N, and the columns grow to fill the same 64 MiB:
    # 2^26 / (2 x 1000) = 33554.4 -> 33536 (131 x 256).
    (1000, 4096, 128256, torch.bfloat16, (1000, 33536)),
    (8192, 4096, 5000, torch.bfloat16, (4096, 5000)),  # a vocabulary narrower than a chunk
    # Floors: at H = 300000 the accumulator holds 55 rows -> at least 128 (then 2^26 /
    # (2 x 128) = 262144 columns); at H = 64 it holds 2^26 / 256 = 262144 rows, whose dz
    # block would be 2^26 / (2 x 262144) = 128 columns wide -> at least 256.
    (8192, 300_000, 10**6, torch.bfloat16, (128, 262144)),
    (262144, 64, 128256, torch.bfloat16, (262144, 256)),
])
def test_chunking_fills_the_workspace_budgets(N, H, V, dtype, want):
    assert _chunking(N, H, V, dtype, LaunchOptions()) == want


def test_chunking_overrides():
    opts = LaunchOptions(rows_per_chunk=16, cols_per_chunk=64)
    assert _chunking(37, 48, 301, torch.bfloat16, opts) == (16, 64)
    assert _chunking(10, 48, 50, torch.bfloat16, opts) == (10, 50)  # capped at N and V


def test_mm_into_same_dtype_overwrites_or_accumulates():
    a = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    out = torch.full((2, 2), 100.0)
    _mm_into(out, a, b, accumulate=False)
    assert out.tolist() == [[4.0, 5.0], [10.0, 11.0]]
    _mm_into(out, a, b, accumulate=True)
    assert out.tolist() == [[8.0, 10.0], [20.0, 22.0]]


def test_mm_into_fp32_from_bf16_is_not_rounded_to_bf16():
    """On the CPU the product of bf16 operands into an fp32 output is exact in fp32:
    1 + 2^-8 here, which bf16 (8 significant bits) would round to 1."""
    a = torch.tensor([[1.0, 1.0]], dtype=torch.bfloat16)
    b = torch.tensor([[1.0], [2.0**-8]], dtype=torch.bfloat16)
    out = torch.full((1, 1), 7.0)
    _mm_into(out, a, b, accumulate=False)
    assert out.item() == 1.0 + 2.0**-8
    _mm_into(out, a, b, accumulate=True)
    assert out.item() == 2.0 + 2.0**-7


def _fake_cuda_mm(monkeypatch, *, addmm_takes_fp32_c: bool):
    """torch.mm / torch.addmm as a CUDA build with out_dtype behaves, on CPU tensors (CPU
    torch has no out_dtype): fp32 products of half operands; addmm with an fp32 C either
    works or refuses, as on builds that want C in the operands' dtype."""
    real_mm, real_addmm = torch.mm, torch.addmm

    def mm(a, b, *, out_dtype=None, out=None):
        if out_dtype is None:
            return real_mm(a, b, out=out)
        return real_mm(a.float(), b.float(), out=out)

    def addmm(c, a, b, *, out_dtype=None, beta=1, alpha=1, out=None):
        if out_dtype is None:
            return real_addmm(c, a, b, beta=beta, alpha=alpha, out=out)
        if not addmm_takes_fp32_c:
            raise RuntimeError("self and mat2 must have the same dtype, but got Float and "
                               "BFloat16")
        return real_addmm(c, a.float(), b.float(), beta=beta, alpha=alpha, out=out)

    monkeypatch.setattr(torch, "mm", mm)
    monkeypatch.setattr(torch, "addmm", addmm)


@pytest.mark.parametrize("addmm_takes_fp32_c, want", [
    (True, triton_backward.MIXED_ADDMM),
    # Before: one probe of both calls, so such a build fell back to a bf16 product per
    # vocabulary chunk (dh rounded to bf16 each time) in a 32 MiB temporary.
    (False, triton_backward.MIXED_MM),
])
def test_the_probe_finds_the_fp32_path_each_build_has(monkeypatch, addmm_takes_fp32_c, want):
    _fake_cuda_mm(monkeypatch, addmm_takes_fp32_c=addmm_takes_fp32_c)
    assert triton_backward._probe_mixed_mm(torch.device("cpu"), torch.bfloat16) == want


def test_the_probe_without_out_dtype_settles_for_half_products(monkeypatch):
    def no_out_dtype(*args, out_dtype=None, **kwargs):
        raise TypeError("mm() got an unexpected keyword argument 'out_dtype'")

    monkeypatch.setattr(torch, "mm", no_out_dtype)
    monkeypatch.setattr(torch, "addmm", no_out_dtype)
    assert (triton_backward._probe_mixed_mm(torch.device("cpu"), torch.float16)
            == triton_backward.HALF_PRODUCT)


@pytest.mark.parametrize("path", [triton_backward.MIXED_ADDMM, triton_backward.MIXED_MM,
                                  triton_backward.CPU_UPCAST])
@pytest.mark.parametrize("alpha", [1.0, 2.0**-20])
def test_every_fp32_path_keeps_what_bf16_would_round_away(monkeypatch, path, alpha):
    """out = a @ b then out += a @ b, with out fp32 and a, b bf16, by each path: 1 + 2^-8
    per row (bf16 rounds it to 1), over more rows than one scratch slice holds."""
    _fake_cuda_mm(monkeypatch, addmm_takes_fp32_c=True)
    monkeypatch.setattr(triton_backward, "_MM_SCRATCH_BYTES", 3 * 2 * 4)  # 3 rows of 2
    a = torch.ones(7, 2, dtype=torch.bfloat16)
    b = torch.tensor([[1.0, 0.5], [2.0**-8, 0.0]], dtype=torch.bfloat16)
    out = torch.full((7, 2), float("nan"))  # never read when overwriting
    assert _mm_into(out, a, b, accumulate=False, alpha=alpha, path=path) == path
    assert torch.all(out == alpha * torch.tensor([1 + 2.0**-8, 0.5]))
    _mm_into(out, a, b, accumulate=True, alpha=alpha, path=path)
    assert torch.all(out == alpha * torch.tensor([2 + 2.0**-7, 1.0]))


def test_the_half_product_path_rounds_each_product_once():
    a = torch.ones(1, 2, dtype=torch.bfloat16)
    b = torch.tensor([[1.0], [2.0**-8]], dtype=torch.bfloat16)
    out = torch.zeros(1, 1)
    _mm_into(out, a, b, accumulate=True, path=triton_backward.HALF_PRODUCT)
    assert out.item() == 1.0  # 1 + 2^-8 rounded to bf16 (to even)

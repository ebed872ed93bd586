"""The compiled Triton kernels on a CUDA device: real shapes, odd shapes, extra memory.

Reference at real shapes: the chunked fp32 torch reference (itself checked against float64
in test_reference.py); at small odd shapes: the float64 oracle directly.
"""

from __future__ import annotations

import pytest
import torch

from prefopt.kernels import token_logprobs
from prefopt.kernels.reference import token_logprobs_torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# Same bounds as the interpreter tests. Against the fp32 reference the half-precision
# gradient error is that of both sides' roundings (each ~2e-3 for bf16).
LOGP_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-3}
ENTROPY_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
MiB = 2**20


def _to_cuda(case):
    case.hidden = case.hidden.detach().cuda().requires_grad_()
    case.weight = case.weight.detach().cuda().requires_grad_()
    case.targets, case.grad_logp, case.grad_entropy = (
        case.targets.cuda(), case.grad_logp.cuda(), case.grad_entropy.cuda())
    return case


def _triton(hidden, weight, targets, **kwargs):
    kwargs["return_entropy"] = kwargs.pop("with_entropy")
    return token_logprobs(hidden, weight, targets, impl="triton", **kwargs)


def _check(kt, got, want, dtype):
    names = ("logp", "entropy", "d hidden", "d weight")
    tols = (LOGP_TOL[dtype], ENTROPY_TOL[dtype], GRAD_TOL[dtype], GRAD_TOL[dtype])
    for name, a, b, tol in zip(names, got, want, tols):
        err = kt.rel_err(a, b)
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n, h, v", [(1, 64, 100), (37, 48, 301), (1000, 1000, 5003)])
def test_odd_shapes_against_float64(kt, n, h, v, dtype):
    case = _to_cuda(kt.make_case(n, h, v, dtype, seed=20))
    got = kt.run_and_grad(_triton, case, temperature=0.7)
    _check(kt, got, kt.oracle(case, temperature=0.7), dtype)


@pytest.mark.slow
@pytest.mark.parametrize("n, h, v", [(4096, 4096, 128256), (3001, 2048, 151936)])
def test_real_shapes_against_the_reference(kt, n, h, v):
    case = _to_cuda(kt.make_case(n, h, v, torch.bfloat16, seed=21))
    got = kt.run_and_grad(_triton, case)
    want = kt.run_and_grad(token_logprobs_torch, case)
    _check(kt, got, want, torch.bfloat16)


def test_explicit_block_sizes(kt):
    from prefopt.kernels.triton_logprobs import LaunchOptions, token_logprobs_triton

    opts = LaunchOptions(block_n=64, block_v=64, block_k=32, num_warps=4, num_stages=2,
                         n_splits=3, rows_per_chunk=16, cols_per_chunk=128)
    case = _to_cuda(kt.make_case(37, 48, 301, torch.bfloat16, seed=24))
    got = kt.run_and_grad(token_logprobs_triton, case, temperature=0.7, options=opts)
    _check(kt, got, kt.oracle(case, temperature=0.7), torch.bfloat16)


@pytest.mark.slow
def test_fp32_dw_accumulation_over_row_chunks(kt):
    """Three row chunks: dW partial sums meet in bf16 (default) or in an fp32 buffer."""
    from prefopt.kernels.triton_logprobs import LaunchOptions, token_logprobs_triton

    case = _to_cuda(kt.make_case(3000, 1024, 32000, torch.bfloat16, seed=22))
    want = kt.oracle(case)
    opts = LaunchOptions(rows_per_chunk=1024)
    default = kt.run_and_grad(token_logprobs_triton, case, fp32_dw_accum=False, options=opts)
    fp32 = kt.run_and_grad(token_logprobs_triton, case, fp32_dw_accum=True, options=opts)
    _check(kt, default, want, torch.bfloat16)
    _check(kt, fp32, want, torch.bfloat16)
    assert kt.rel_err(fp32[3], want[3]) < kt.rel_err(default[3], want[3])


@pytest.mark.slow
def test_extra_peak_memory_is_bounded(kt):
    """fwd + bwd at N=8192, H=4096, V=128256 bf16 holds <= 256 MiB beyond its inputs, the
    upstream gradients and the gradient outputs dh, dW (fp32 logits would be 4 GiB)."""
    n, h, v = 8192, 4096, 128256
    gen = torch.Generator(device="cuda").manual_seed(23)
    hidden = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, generator=gen)
    weight = torch.randn(v, h, device="cuda", dtype=torch.bfloat16, generator=gen) * 0.05
    hidden.requires_grad_()
    weight.requires_grad_()
    targets = torch.randint(0, v, (n,), device="cuda", generator=gen)
    grads = torch.randn(2, n, device="cuda", generator=gen)

    def step():
        logp, entropy = token_logprobs(hidden, weight, targets, return_entropy=True,
                                       impl="triton")
        return torch.autograd.grad((logp * grads[0]).sum() + (entropy * grads[1]).sum(),
                                   (hidden, weight))

    warm = step()  # compile and autotune first: the autotuner's benchmarking allocates
    del warm
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    dh, dw = step()
    torch.cuda.synchronize()
    outputs = dh.numel() * dh.element_size() + dw.numel() * dw.element_size()
    extra = torch.cuda.max_memory_allocated() - base - outputs
    assert extra <= 256 * MiB, f"extra peak {extra / MiB:.0f} MiB"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_mixed_gemm_path_of_this_build_keeps_fp32(dtype):
    """Whatever path the probe picks on this torch build, dh's accumulation is fp32 unless
    the build has no out_dtype at all; the path is the one the benchmark JSON logs."""
    from prefopt.kernels import triton_backward as tb

    path = tb._mixed_mm_path(torch.device("cuda"), dtype)
    a = torch.ones(64, 2, dtype=dtype, device="cuda")
    b = torch.tensor([[1.0], [2.0**-11]], dtype=dtype, device="cuda")
    out = torch.zeros(64, 1, device="cuda")
    assert tb._mm_into(out, a, b, accumulate=True) == path
    want = 1.0 if path == tb.HALF_PRODUCT else 1 + 2.0**-11
    assert torch.all(out == want), (path, out[0].item())


@pytest.mark.parametrize("grad_scale, std, temperature", [(1e-5, 1.0, 1.0), (6e4, 0.05, 0.5)])
def test_fp16_upstream_gradients_outside_fp16_range(kt, grad_scale, std, temperature):
    """fp16 with dz below fp16's normals (x1e-5) or above its max (|g| / T > 65504)."""
    gen = torch.Generator().manual_seed(25)
    n, h, v = 1000, 256, 5003
    case = kt.make_case(n, h, v, torch.float16, seed=25)
    case.hidden = (torch.randn(n, h, generator=gen) * std).half().requires_grad_()
    case.weight = (torch.randn(v, h, generator=gen) * std).half().requires_grad_()
    case.grad_logp = case.grad_logp * grad_scale
    case.grad_entropy = case.grad_entropy * grad_scale
    case = _to_cuda(case)
    got = kt.run_and_grad(_triton, case, temperature=temperature)
    want = kt.oracle(case, temperature=temperature)
    for a, b in zip(got[2:], want[2:]):
        assert torch.isfinite(a).all()
        assert kt.rel_err(a, b) <= GRAD_TOL[torch.float16] + kt.rel_err(b.half(), b)

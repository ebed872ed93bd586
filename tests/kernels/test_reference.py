"""The chunked torch reference (the oracle of the Triton kernels) against float64 log_softmax,
and the input validation of the public `token_logprobs`."""

from __future__ import annotations

import pytest
import torch

from prefopt.kernels import token_logprobs
from prefopt.kernels.reference import token_logprobs_torch

# Relative error bounds, ‖out - ref‖ / ‖ref‖. The reference computes in fp32 from the
# inputs' exact values, so logp and entropy are fp32-accurate for every input dtype
# (measured <= 3e-6; the entropy's lse - Σ p z loses a digit to cancellation). Gradients
# are returned in the input dtype, so they carry one rounding: bf16 keeps 8 significant
# bits (measured 1.7e-3), fp16 11 bits (measured 2e-4), fp32 measured <= 2.2e-6.
VALUE_TOL = 1e-5
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 5e-3, torch.float16: 1e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_float64_with_entropy_and_ignored_rows(kt, dtype, temperature):
    case = kt.make_case(37, 48, 301, dtype, seed=1)
    # chunk_size 8 < N = 37: five chunks, the last one partial.
    out = kt.run_and_grad(token_logprobs_torch, case, temperature=temperature, chunk_size=8)
    ref = kt.oracle(case, temperature=temperature)
    names = ("logp", "entropy", "d hidden", "d weight")
    tols = (VALUE_TOL, VALUE_TOL, GRAD_TOL[dtype], GRAD_TOL[dtype])
    for name, got, want, tol in zip(names, out, ref, tols):
        assert kt.rel_err(got, want) <= tol, (name, kt.rel_err(got, want))


def test_ignored_rows_give_zero_and_no_gradient(kt):
    case = kt.make_case(20, 16, 50, torch.float32, seed=2, ignore_index=7, ignore_every=3)
    logp, entropy, dh, _ = kt.run_and_grad(token_logprobs_torch, case, chunk_size=6)
    ignored = case.targets == 7
    assert ignored.sum() == 7
    assert torch.all(logp[ignored] == 0) and torch.all(entropy[ignored] == 0)
    assert torch.all(dh[ignored] == 0)
    assert torch.all(logp[~ignored] < 0) and torch.all(entropy[~ignored] > 0)


def test_entropy_is_zero_and_inert_when_not_requested(kt):
    case = kt.make_case(9, 16, 40, torch.float32, seed=3)
    logp, entropy = token_logprobs_torch(case.hidden, case.weight, case.targets)
    assert torch.all(entropy == 0)
    # Gradients come from logp alone: compare with the oracle with no entropy upstream.
    dh, dw = torch.autograd.grad((logp * case.grad_logp).sum() + entropy.sum(),
                                 (case.hidden, case.weight))
    case.grad_entropy = torch.zeros_like(case.grad_entropy)
    _, _, ref_dh, ref_dw = kt.oracle(case)
    assert kt.rel_err(dh, ref_dh) <= 1e-5 and kt.rel_err(dw, ref_dw) <= 1e-5


@pytest.mark.parametrize("impl", ["torch", "auto"])
def test_public_api_on_cpu_uses_the_reference(kt, impl):
    case = kt.make_case(11, 24, 70, torch.bfloat16, seed=4)
    logp = token_logprobs(case.hidden, case.weight, case.targets, impl=impl)
    assert logp.dtype == torch.float32 and logp.shape == (11,)
    pair = token_logprobs(case.hidden, case.weight, case.targets, temperature=2.0,
                          return_entropy=True, impl=impl)
    ref_logp, ref_entropy, _, _ = kt.oracle(case, temperature=2.0)
    assert kt.rel_err(logp, kt.oracle(case)[0]) <= VALUE_TOL
    assert kt.rel_err(pair[0], ref_logp) <= VALUE_TOL
    assert kt.rel_err(pair[1], ref_entropy) <= VALUE_TOL


def _inputs(n=4, h=8, v=10, dtype=torch.float32):
    return torch.randn(n, h, dtype=dtype), torch.randn(v, h, dtype=dtype), torch.zeros(n).long()


@pytest.mark.parametrize("hidden, weight, targets, error, match", [
    (torch.randn(8), torch.randn(10, 8), torch.zeros(1).long(), ValueError, "expects hidden"),
    (torch.randn(4, 8), torch.randn(10, 8, 1), torch.zeros(4).long(), ValueError,
     "expects hidden"),
    (torch.randn(4, 8), torch.randn(10, 8), torch.zeros(4, 1).long(), ValueError,
     "expects hidden"),
    (torch.randn(4, 8), torch.randn(10, 9), torch.zeros(4).long(), ValueError,
     "hidden size mismatch"),
    (torch.randn(4, 8), torch.randn(10, 8), torch.zeros(5).long(), ValueError, "rows"),
    (torch.randn(4, 8).bfloat16(), torch.randn(10, 8), torch.zeros(4).long(), TypeError,
     "share one dtype"),
    (torch.randn(4, 8).double(), torch.randn(10, 8).double(), torch.zeros(4).long(),
     TypeError, "share one dtype"),
    (torch.randn(4, 8), torch.randn(10, 8), torch.zeros(4), TypeError, "int64 or int32"),
])
def test_invalid_inputs_are_rejected(hidden, weight, targets, error, match):
    with pytest.raises(error, match=match):
        token_logprobs(hidden, weight, targets)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_non_positive_temperature_is_rejected(temperature):
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(*_inputs(), temperature=temperature)


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="impl must be one of"):
        token_logprobs(*_inputs(), impl="cuda")


def test_triton_on_cpu_without_the_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="impl='triton' cannot run here.*CUDA"):
        token_logprobs(*_inputs(), impl="triton")


def test_triton_interpreter_switched_on_too_late_says_why(monkeypatch):
    import triton.language.standard as standard

    if type(standard.cdiv).__name__ == "InterpretedFunction":
        pytest.skip("this process's triton was imported under the interpreter")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="set after triton had been imported"):
        token_logprobs(*_inputs(), impl="triton")

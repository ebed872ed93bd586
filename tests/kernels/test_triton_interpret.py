"""The real Triton kernels, run by the Triton interpreter on CPU tensors, against float64.

The interpreter only works if TRITON_INTERPRET=1 was set before `import triton`: the
helpers of triton.language (tl.sum, tl.cdiv, ...) are decorated when triton is imported.
In a full test session triton is imported long before this module (torch._dynamo, pulled
in by Lightning and transformers, imports it). So when this process's triton is not
interpreting, the tests below are skipped here and `test_under_the_interpreter` runs this
same file in a child pytest with TRITON_INTERPRET=1 set from the start (the child also
never touches CUDA, so GPU tests in the parent keep the compiled kernels).
Run them in-process with `TRITON_INTERPRET=1 .venv/bin/pytest tests/kernels`.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton.language.standard

from prefopt.kernels import token_logprobs

MODULE = "prefopt.kernels.triton_logprobs"
# The Triton modules in import order, MODULE last: each takes INTERPRETED and the kernels
# it calls from those before it, so a stale import is reloaded as a whole, in this order.
KERNEL_MODULES = [*(f"prefopt.kernels.{name}" for name in
                    ("triton_tiles", "autotune", "triton_forward", "triton_backward")),
                  MODULE]
ROOT = Path(__file__).resolve().parents[2]
_CHILD_FLAG = "PREFOPT_INTERPRETER_CHILD"

# Whether triton's own jit helpers were built for the interpreter in this process.
INTERPRETING = type(triton.language.standard.cdiv).__name__ == "InterpretedFunction"

# Relative error bounds ‖out - ref‖ / ‖ref‖ against float64 of the same input values.
# The interpreter computes tl.dot with numpy in fp32 (bf16/fp16 operands upcast exactly),
# so values are fp32-accurate for every dtype: measured logp <= 1.5e-7, entropy <= 1.5e-6
# (the latter for a single near-deterministic row, entropy 0.06 nats). fp32 gradients:
# measured <= 7e-7 here; a row that peaked reaches 1e-5 (1 - p_target cancels in fp32; the
# fp32 torch reference is 15x worse there), so the cases below keep rows of >= 0.5 nats.
# Half-precision gradients carry two roundings to the input dtype (the dz workspace and
# the output): bf16 measured ~4e-3, fp16 ~3.5e-4.
LOGP_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-3}
ENTROPY_TOL = 1e-5
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.mark.skipif(INTERPRETING, reason="this process interprets: the tests run here")
def test_under_the_interpreter(tmp_path):
    """Runs this file in a child pytest whose triton is imported under the interpreter."""
    assert os.environ.get(_CHILD_FLAG) != "1", "the child's triton is not interpreting"
    env = {**os.environ, "TRITON_INTERPRET": "1", _CHILD_FLAG: "1"}
    # cwd outside the repository: `python -m pytest` puts the cwd on sys.path, and the
    # repository root there would expose kernels/ as a top-level package.
    here = Path(__file__).resolve()
    cmd = [sys.executable, "-m", "pytest", str(here), "-q", "-p", "no:cacheprovider",
           "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
           "-k", "not test_under_the_interpreter"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    print(report)  # the child's summary, shown with -rA / -s
    assert proc.returncode == 0, report
    assert " passed" in report and "skipped" not in report, report


@pytest.fixture(scope="module")
def tl_module():
    module = importlib.import_module(MODULE)
    if not module.INTERPRETED:  # imported by an earlier test before the env var was set
        for name in KERNEL_MODULES:  # reload() updates `module` in place
            importlib.reload(importlib.import_module(name))
    assert module.INTERPRETED
    return module


def _check(kt, out, ref, dtype, *, entropy=True):
    names = ("logp", "entropy", "d hidden", "d weight")
    tols = (LOGP_TOL[dtype], ENTROPY_TOL, GRAD_TOL[dtype], GRAD_TOL[dtype])
    for name, got, want, tol in zip(names, out, ref, tols):
        if name == "entropy" and not entropy:
            continue
        err = kt.rel_err(got, want)
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_odd_shape_all_features(kt, tl_module, dtype):
    """N, H, V multiples of no block size; ignored rows, temperature, entropy gradients."""
    case = kt.make_case(37, 48, 301, dtype, seed=10)
    out = kt.run_and_grad(tl_module.token_logprobs_triton, case, temperature=0.7)
    _check(kt, out, kt.oracle(case, temperature=0.7), dtype)


@pytest.mark.parametrize("n, h, v", [(1, 12, 20), (5, 12, 20), (3, 33, 31)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_smaller_than_one_block(kt, tl_module, n, h, v, dtype):
    """H and V below BLOCK_K / BLOCK_V (16 / 32 here), N below BLOCK_N, N = 1."""
    case = kt.make_case(n, h, v, dtype, seed=11, ignore_every=0)
    out = kt.run_and_grad(tl_module.token_logprobs_triton, case, temperature=1.3)
    _check(kt, out, kt.oracle(case, temperature=1.3), dtype)


@pytest.mark.parametrize("fp32_dw", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_chunks_and_splits(kt, tl_module, dtype, fp32_dw):
    """Backward over 3 row chunks x 5 vocabulary chunks (dW summed across row chunks, in
    dW's dtype or in fp32), forward with more splits than vocabulary tiles (empty splits)."""
    opts = tl_module.LaunchOptions(rows_per_chunk=16, cols_per_chunk=64, n_splits=16)
    case = kt.make_case(37, 48, 301, dtype, seed=12)
    out = kt.run_and_grad(tl_module.token_logprobs_triton, case, temperature=0.7,
                          fp32_dw_accum=fp32_dw, options=opts)
    _check(kt, out, kt.oracle(case, temperature=0.7), dtype)


def _fp16_case(kt, *, std, grad_scale, seed):
    """An fp16 case whose hidden states and LM head have entry std `std` (tiny logits:
    near-uniform rows) and whose upstream gradients are randn x grad_scale ("mixed": row
    r's scale is 10^(-6 + 9 r / N), nine decades within one row chunk)."""
    gen = torch.Generator().manual_seed(seed)
    n, h, v = 37, 48, 301
    hidden = (torch.randn(n, h, generator=gen) * std).half().requires_grad_()
    weight = (torch.randn(v, h, generator=gen) * std).half().requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[1::5] = -100
    if grad_scale == "mixed":
        grad_scale = 10.0 ** torch.linspace(-6, 3, n)[torch.randperm(n, generator=gen)]
    return kt.Case(hidden, weight, targets, torch.randn(n, generator=gen) * grad_scale,
                   torch.randn(n, generator=gen) * grad_scale)


@pytest.mark.parametrize("grad_scale, std, temperature", [
    # dz = g (onehot - p) / T is ~g / (T V) per entry: x1e-5 puts it below fp16's
    # smallest normal (6e-5) and much of it below its smallest subnormal (6e-8); before
    # the per-row scaling of the workspace this gave a dh error of 2.3e-2.
    (1e-5, 1.0, 1.0),
    (1e-5, 1.0, 0.7),
    # |g| / T up to ~2.5e5 > 65504, fp16's largest value: the workspace held inf, and dh,
    # dW NaN. Small h and W keep the true dh and dW (~1e4) representable in fp16.
    (6e4, 0.05, 0.5),
    # Rows whose gradients differ by nine decades share the workspace and the GEMMs.
    ("mixed", 1.0, 1.0),
], ids=["g_x1e-5", "g_x1e-5_T0.7", "g_over_T_above_fp16_max", "g_mixed_decades"])
@pytest.mark.parametrize("chunks", [None, (16, 64)], ids=["one_chunk", "3x5_chunks"])
def test_fp16_gradients_outside_fp16_range(kt, tl_module, grad_scale, std, temperature,
                                           chunks):
    """fp16 inputs with upstream gradients whose dz underflows or overflows fp16; dh and
    dW against float64 within the usual fp16 bound."""
    opts = tl_module.LaunchOptions(
        **({} if chunks is None else {"rows_per_chunk": chunks[0],
                                      "cols_per_chunk": chunks[1]}))
    case = _fp16_case(kt, std=std, grad_scale=grad_scale, seed=19)
    out = kt.run_and_grad(tl_module.token_logprobs_triton, case, temperature=temperature,
                          options=opts)
    ref = kt.oracle(case, temperature=temperature)
    _check(kt, out[:2], ref[:2], torch.float16)
    for name, got, want in zip(("d hidden", "d weight"), out[2:], ref[2:]):
        assert torch.isfinite(got).all(), name
        # At x1e-5 the true gradients are ~1e-5, fp16 subnormals: rounding the float64
        # values themselves to fp16 costs up to 3.8e-3 (dW), which no kernel can beat.
        floor = kt.rel_err(want.half(), want)
        err = kt.rel_err(got, want)
        assert err <= GRAD_TOL[torch.float16] + floor, f"{name}: {err:.2e} (floor {floor:.1e})"
    if grad_scale == "mixed":  # each row of dh on its own: dz is scaled per row
        dh, ref_dh = out[2], ref[2]
        for r in torch.nonzero(ref_dh.abs().sum(1) > 0)[:, 0].tolist():
            err, floor = kt.rel_err(dh[r], ref_dh[r]), kt.rel_err(ref_dh[r].half(), ref_dh[r])
            assert err <= GRAD_TOL[torch.float16] + floor, f"dh row {r}: {err:.2e}"


def test_block_sizes_can_be_overridden(kt, tl_module):
    opts = tl_module.LaunchOptions(block_n=32, block_v=64, block_k=32, n_splits=1)
    case = kt.make_case(40, 70, 130, torch.float32, seed=13)
    out = kt.run_and_grad(tl_module.token_logprobs_triton, case, options=opts)
    _check(kt, out, kt.oracle(case), torch.float32)


def test_through_the_public_api(kt, tl_module):
    case = kt.make_case(23, 40, 150, torch.bfloat16, seed=14, ignore_index=3)
    logp, entropy = token_logprobs(case.hidden, case.weight, case.targets, temperature=0.5,
                                   ignore_index=3, return_entropy=True, impl="triton")
    loss = (logp * case.grad_logp).sum() + (entropy * case.grad_entropy).sum()
    dh, dw = torch.autograd.grad(loss, (case.hidden, case.weight))
    _check(kt, (logp, entropy, dh, dw), kt.oracle(case, temperature=0.5), torch.bfloat16)
    ignored = case.targets == 3
    assert ignored.any() and torch.all(logp[ignored] == 0) and torch.all(dh[ignored] == 0)


def test_logp_only(kt, tl_module):
    """Entropy not requested: zeros, and its (ignored) gradient changes nothing."""
    case = kt.make_case(19, 24, 90, torch.float32, seed=15)
    logp, entropy = tl_module.token_logprobs_triton(case.hidden, case.weight, case.targets)
    assert torch.all(entropy == 0)
    dh, dw = torch.autograd.grad((logp * case.grad_logp).sum() + entropy.sum(),
                                 (case.hidden, case.weight))
    case.grad_entropy = torch.zeros_like(case.grad_entropy)
    _check(kt, (logp, entropy, dh, dw), kt.oracle(case), torch.float32, entropy=False)


def test_detached_entropy_and_hidden_only_gradient(kt, tl_module):
    """A detached entropy (grad None in backward) and a weight that needs no gradient."""
    case = kt.make_case(21, 24, 90, torch.bfloat16, seed=16)
    case.weight.requires_grad_(False)
    logp, entropy = tl_module.token_logprobs_triton(case.hidden, case.weight, case.targets,
                                                    with_entropy=True)
    (dh,) = torch.autograd.grad((logp * case.grad_logp).sum(), (case.hidden,))
    case.grad_entropy = torch.zeros_like(case.grad_entropy)
    _, ref_entropy, ref_dh, _ = kt.oracle(case)
    assert kt.rel_err(entropy, ref_entropy) <= ENTROPY_TOL
    assert kt.rel_err(dh, ref_dh) <= GRAD_TOL[torch.bfloat16]


def test_non_contiguous_inputs(kt, tl_module):
    case = kt.make_case(17, 24, 60, torch.float32, seed=17)
    hidden_t = case.hidden.detach().T.contiguous().T.requires_grad_()  # column-major view
    assert not hidden_t.is_contiguous()
    case.hidden = hidden_t
    out = kt.run_and_grad(tl_module.token_logprobs_triton, case)
    _check(kt, out, kt.oracle(case), torch.float32)


def test_out_of_range_target_is_nan_not_a_silent_value(tl_module):
    hidden, weight = torch.randn(3, 16), torch.randn(20, 16)
    logp = tl_module.token_logprobs_triton(hidden, weight, torch.tensor([0, 20, 5]))[0]
    assert torch.isfinite(logp[[0, 2]]).all() and torch.isnan(logp[1])


@pytest.mark.parametrize("tied", [False, True])
def test_a_dpo_step_on_the_tiny_model_through_the_kernels(tl_module, tokenizer, tied):
    """The training path (prefopt.logprobs, impl="triton") in one DPO step of the tiny
    model: the loss and every parameter's gradient equal those of full float64 logits."""
    from prefopt.data.collate import collate_groups
    from prefopt.data.records import pairwise_record
    from prefopt.data.tokenize import Encoder, TokenizeConfig
    from prefopt.logprobs import completion_logps
    from prefopt.models import ModelConfig, TinyModelConfig, build_policy, make_reference
    from prefopt.plugins.dpo import dpo_loss

    torch.manual_seed(0)
    policy = build_policy(ModelConfig(tiny=TinyModelConfig(tie_word_embeddings=tied)), tokenizer)
    reference = make_reference(policy)
    with torch.no_grad():  # off the reference, so that the gradient is not trivial
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    records = [pairwise_record("sort 5213", "1235", "1253", "r0"),
               pairwise_record("reverse 90817", "71809", "7180", "r1")]
    batch = collate_groups(Encoder(tokenizer, TokenizeConfig()).encode_all(records)[0],
                           tokenizer.pad_token_id)

    def full_logits(model):  # the textbook path: all logits, log_softmax, gather
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, :-1].double()
        token = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        return (token * batch["completion_mask"][:, 1:]).sum(-1)

    def loss_and_grads(policy_logps, reference_logps):
        loss = dpo_loss(policy_logps[0::2], policy_logps[1::2], reference_logps[0::2],
                        reference_logps[1::2], beta=0.1)[0].mean()
        return loss, torch.autograd.grad(loss, list(policy.parameters()))

    with torch.no_grad():
        ref_kernel = completion_logps(reference, batch, impl="triton").logps
        ref_logits = full_logits(reference)
    kernel = completion_logps(policy, batch, impl="triton").logps
    torch.testing.assert_close(kernel.double(), full_logits(policy).detach(), rtol=1e-5,
                               atol=1e-5)
    loss_k, grads_k = loss_and_grads(kernel, ref_kernel)
    loss_l, grads_l = loss_and_grads(full_logits(policy), ref_logits)
    assert loss_k.item() == pytest.approx(loss_l.item(), rel=1e-5)
    for g_kernel, g_logits in zip(grads_k, grads_l):
        torch.testing.assert_close(g_kernel.double(), g_logits.double(), rtol=1e-4, atol=1e-6)


if not INTERPRETING:  # test_under_the_interpreter runs these in its child pytest
    for _name in [n for n in list(globals()) if n.startswith("test_")
                  and n != "test_under_the_interpreter"]:
        del globals()[_name]

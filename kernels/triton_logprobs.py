"""Triton kernels for per-token log-probabilities and entropy, never forming N x V logits.

This module is their public entry point: `token_logprobs_triton`, its `LaunchOptions`, the
autograd Function that ties the two phases together, and the process-wide default
`FP32_DW_ACCUMULATION`. The design notes sit with the code they describe:

    triton_tiles.py     `_logits_tile`, the logits tile both kernels compute, its flags,
                        and INTERPRETED (re-exported here)
    triton_forward.py   the forward kernel (online log-sum-exp over vocabulary splits)
                        and its launch, `_forward`
    triton_backward.py  the dz kernel, the dW / dh GEMMs and the chunked loop, `_backward`;
                        why not one fused kernel with atomics; dW precision
    autotune.py         the autotuner's configs, their shared-memory filter, the blocks
                        used without the autotuner, the forward's split count

Shapes: hidden h [N, H], LM head W [V, H], z = (h W^T) / T. Formulas: see reference.py.
Saved for backward: per-row lse and entropy (fp32), besides the inputs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .reference import token_logprobs_torch
from .triton_backward import _backward
from .triton_forward import _forward

# Whether the kernels were built for the interpreter (decided when triton_tiles.py was
# imported); re-exported for the tests, which read it here. A record, not a switch.
from .triton_tiles import INTERPRETED  # noqa: F401

__all__ = ["token_logprobs_triton", "LaunchOptions"]

# Default for `fp32_dw_accum=None` (set prefopt.kernels.triton_logprobs.FP32_DW_ACCUMULATION
# to change it process-wide). Off: an fp32 dW buffer is V x H x 4 bytes (2 GiB for a
# 128k vocabulary at H=4096), and the default path already accumulates each dW slice in
# fp32 inside its GEMM; only the few row chunks are summed in dW's dtype (see "dW
# precision" in triton_backward.py).
FP32_DW_ACCUMULATION = False


@dataclass(frozen=True)
class LaunchOptions:
    """Overrides of the launch parameters (tests, tuning). None: the automatic choice.

    Block sizes given here bypass the autotuner. Under the interpreter they default to
    small blocks, because the interpreter's cost grows with the number of tile steps.
    """

    block_n: int | None = None
    block_v: int | None = None
    block_k: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None
    n_splits: int | None = None  # forward: vocabulary splits per row block
    rows_per_chunk: int | None = None  # backward: rows of h per workspace pass
    cols_per_chunk: int | None = None  # backward: vocabulary columns per workspace pass


# ----------------------------------------------------------------------------- autograd


class _TritonTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, ignore_index, with_entropy,
                fp32_dw, opts):
        valid = targets != ignore_index
        # -1 matches no vocabulary column: ignored rows have no target logit.
        tgt = torch.where(valid, targets, torch.full_like(targets, -1)).to(torch.int32)
        logp, lse, entropy = _forward(hidden, weight, tgt, temperature, with_entropy, opts)
        zero = torch.zeros_like(logp)
        logp = torch.where(valid, logp, zero)
        entropy = torch.where(valid, entropy, zero)
        ctx.save_for_backward(hidden, weight, tgt, valid, lse, entropy)
        ctx.temperature, ctx.with_entropy = temperature, with_entropy
        ctx.fp32_dw, ctx.opts = fp32_dw, opts
        # Unused outputs arrive as None rather than as zero tensors: a detached entropy
        # then costs nothing in the backward kernel.
        ctx.set_materialize_grads(False)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, tgt, valid, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        none = (None,) * 8
        if not (need_h or need_w):
            return none
        zero = torch.zeros_like(lse)
        # where(), not a product with the mask: a NaN upstream on an ignored row stays out.
        g = torch.where(valid, grad_logp.float(), zero) if grad_logp is not None else zero
        e = None
        if ctx.with_entropy and grad_entropy is not None:
            e = torch.where(valid, grad_entropy.float(), zero).contiguous()
        if grad_logp is None and e is None:
            dh = torch.zeros_like(hidden) if need_h else None
            dw = torch.zeros_like(weight) if need_w else None
            return (dh, dw) + none[2:]
        with _device_guard(hidden):
            dh, dw = _backward(hidden, weight, tgt, lse, entropy, g.contiguous(), e,
                               ctx.temperature, need_h, need_w, ctx.fp32_dw, ctx.opts)
        return (dh, dw) + none[2:]


def _device_guard(t):
    # Triton launches on the current CUDA device; make it the tensors' device.
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def token_logprobs_triton(hidden, weight, targets, *, temperature=1.0, ignore_index=-100,
                          with_entropy=False, fp32_dw_accum=None, options=None):
    """Per-row log p(target) and entropy by the Triton kernels; see the module docstring.

    Returns (logp [N] fp32, entropy [N] fp32); the entropy is zeros unless `with_entropy`.
    `fp32_dw_accum`: accumulate dW across row chunks in an fp32 buffer (None: the module
    default FP32_DW_ACCUMULATION). `options`: a LaunchOptions of overrides.
    """
    hidden, weight, targets = hidden.contiguous(), weight.contiguous(), targets.contiguous()
    if hidden.shape[0] == 0:  # nothing to launch; the reference handles the empty case
        return token_logprobs_torch(hidden, weight, targets, temperature=temperature,
                                    ignore_index=ignore_index, with_entropy=with_entropy)
    fp32_dw = FP32_DW_ACCUMULATION if fp32_dw_accum is None else bool(fp32_dw_accum)
    with _device_guard(hidden):
        return _TritonTokenLogprobs.apply(hidden, weight, targets, float(temperature),
                                          int(ignore_index), bool(with_entropy), fp32_dw,
                                          options or LaunchOptions())

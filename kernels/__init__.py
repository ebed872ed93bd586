"""prefopt.kernels: per-token log-probabilities (and entropy) straight from hidden states.

    logp = token_logprobs(hidden, weight, targets)                      # [N] fp32
    logp, entropy = token_logprobs(hidden, weight, targets, return_entropy=True)

`hidden` [N, H] are the trunk's final hidden states, `weight` [V, H] the LM head, `targets`
[N] the token whose log-probability is wanted. The (N x V) logits are never materialised:
the Triton path tiles the matmul with an online log-sum-exp, the torch path works a chunk
of rows at a time. Both are differentiable with respect to `hidden` and `weight`, through
the entropy too. Rows whose target is `ignore_index` give 0 and no gradient.

`impl`: "triton" (CUDA, or the Triton interpreter with TRITON_INTERPRET=1), "torch" (the
chunked fp32 reference: anywhere), or "auto" (Triton on CUDA, torch elsewhere).

Files (this one: the API, input checks and the choice of implementation):

    reference.py        the torch path, `token_logprobs_torch`, and the formulas
    triton_logprobs.py  the Triton path's entry point: `token_logprobs_triton`,
                        `LaunchOptions`, the autograd Function, FP32_DW_ACCUMULATION
    triton_forward.py   forward kernel: online log-sum-exp, entropy, target logit
    triton_backward.py  backward: the dz kernel, then dW and dh by cuBLAS GEMMs, in chunks
    triton_tiles.py     the logits tile both Triton kernels compute
    autotune.py         launch configuration: autotuner configs and their filter, explicit
                        block sizes (overrides, interpreter), the forward's split count
"""

from __future__ import annotations

import os

import torch

from .reference import token_logprobs_torch

__all__ = ["token_logprobs", "triton_unavailable_reason"]

_IMPLS = ("auto", "triton", "torch")
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when the Triton kernels can run on `device`, else a sentence saying why not."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the `triton` package is not installed (pip install 'prefopt[triton]')"
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type == "cuda":
        return None
    if interpreting:
        if _interpreter_ready():
            return None
        return ("TRITON_INTERPRET=1 was set after triton had been imported; the interpreter "
                "needs it before `import triton` (set it in the process's environment)")
    return (f"tensors are on '{device}', and Triton runs on CUDA devices only "
            "(or on the CPU under TRITON_INTERPRET=1, for testing)")


def _interpreter_ready() -> bool:
    """Whether this process's triton was imported under TRITON_INTERPRET=1. Kernels alone
    are not enough: triton's own tl.* helpers (tl.sum, tl.cdiv, ...) are built for the
    interpreter or the compiler when triton is imported."""
    import triton.language.standard as standard

    return type(standard.cdiv).__name__ == "InterpretedFunction"


def _check_inputs(hidden, weight, targets, temperature):
    if hidden.dim() != 2 or weight.dim() != 2 or targets.dim() != 1:
        raise ValueError("token_logprobs expects hidden [N, H], weight [V, H], targets [N]; "
                         f"got {tuple(hidden.shape)}, {tuple(weight.shape)}, "
                         f"{tuple(targets.shape)}")
    if hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden size mismatch: hidden has H={hidden.shape[1]}, "
                         f"weight has H={weight.shape[1]}")
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"hidden has N={hidden.shape[0]} rows but targets has {targets.shape[0]}")
    if hidden.dtype not in _DTYPES or weight.dtype != hidden.dtype:
        raise TypeError("hidden and weight must share one dtype of float32, bfloat16, float16; "
                        f"got {hidden.dtype} and {weight.dtype}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"targets must be int64 or int32, got {targets.dtype}")
    if not (hidden.device == weight.device == targets.device):
        raise ValueError(f"tensors on different devices: {hidden.device}, {weight.device}, "
                         f"{targets.device}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def token_logprobs(hidden, weight, targets, *, temperature=1.0, ignore_index=-100,
                   return_entropy=False, impl="auto", fp32_dw_accum=None):
    """log softmax(W h / T)[target] per row, and the entropy of softmax(W h / T) if asked.

    Returns a float32 tensor [N], or a pair of them with `return_entropy=True`.
    `fp32_dw_accum` (Triton path): accumulate dW across row chunks in an fp32 V x H buffer
    instead of dW's dtype; None takes triton_logprobs.FP32_DW_ACCUMULATION. The torch path
    always accumulates in fp32.
    """
    if impl not in _IMPLS:
        raise ValueError(f"impl must be one of {_IMPLS}, got {impl!r}")
    _check_inputs(hidden, weight, targets, temperature)
    if impl == "auto":
        impl = "triton" if hidden.is_cuda and triton_unavailable_reason(hidden.device) is None \
            else "torch"
    if impl == "triton":
        reason = triton_unavailable_reason(hidden.device)
        if reason is not None:
            raise RuntimeError(f"impl='triton' cannot run here: {reason}. Use impl='torch' or "
                               "'auto'.")
        from .triton_logprobs import token_logprobs_triton

        def run(*args, **kwargs):
            return token_logprobs_triton(*args, fp32_dw_accum=fp32_dw_accum, **kwargs)
    else:
        run = token_logprobs_torch
    # The inputs' dtype is the precision contract; an enclosing autocast region must not
    # re-cast the reference's fp32 matmuls to bf16.
    with torch.autocast(hidden.device.type, enabled=False):
        logp, entropy = run(hidden, weight, targets, temperature=temperature,
                            ignore_index=ignore_index, with_entropy=return_entropy)
    return (logp, entropy) if return_entropy else logp

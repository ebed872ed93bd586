"""The implementations compared by the log-prob benchmark.

Each provider maps (hidden [N, H], weight [V, H], targets [N]) to (logp [N] fp32,
entropy [N] fp32 or None), differentiable w.r.t. hidden and weight. Liger and CCE compute
a cross-entropy (-logp) and no entropy; their rows are logp-only.
"""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass
from typing import Callable

import torch

COMPILE_CHUNK = 2048  # tokens per chunk of the torch.compile baseline


@dataclass(frozen=True)
class Provider:
    name: str
    fn: Callable
    entropy: bool  # whether it returns the entropy too
    version: str  # the package version measured


def prefopt_triton(hidden, weight, targets):
    from prefopt.kernels import token_logprobs

    return token_logprobs(hidden, weight, targets, return_entropy=True, impl="triton")


def torch_eager(hidden, weight, targets):
    """What a model does by default: materialise fp32 logits, log_softmax, gather."""
    log_p = torch.log_softmax((hidden @ weight.T).float(), dim=-1)
    logp = log_p.gather(1, targets[:, None]).squeeze(1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return logp, entropy


def _chunk_forward(hidden, weight, targets):
    logits = (hidden @ weight.T).float()
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(1, targets[:, None]).squeeze(1) - lse
    p = torch.exp(logits - lse[:, None])
    return logp, lse, lse - (p * logits).sum(-1)


def _chunk_grad_logits(hidden, weight, targets, lse, entropy, g, e):
    logits = (hidden @ weight.T).float()
    log_p = logits - lse[:, None]
    p = log_p.exp()
    one_hot = torch.zeros_like(p).scatter_(1, targets[:, None], 1.0)
    return (g[:, None] * (one_hot - p) - e[:, None] * p * (log_p + entropy[:, None])).to(
        hidden.dtype)


_compiled: dict = {}


def _compiled_fns(device_type):
    """torch.compile'd chunk functions; on CPU the "eager" backend (dynamo tracing only):
    the CPU run is a seconds-long harness check, and Inductor's C++ build would dominate."""
    if device_type not in _compiled:
        backend = "inductor" if device_type == "cuda" else "eager"
        _compiled[device_type] = (torch.compile(_chunk_forward, backend=backend, dynamic=False),
                                  torch.compile(_chunk_grad_logits, backend=backend,
                                                dynamic=False))
    return _compiled[device_type]


class _CompileChunked(torch.autograd.Function):
    """Chunks of COMPILE_CHUNK tokens; the backward recomputes each chunk's logits, folds
    the per-token upstream gradients in, and accumulates dW in the weight's dtype."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        fwd, _ = _compiled_fns(hidden.device.type)
        parts = [fwd(hidden[i:i + chunk], weight, targets[i:i + chunk])
                 for i in range(0, hidden.shape[0], chunk)]
        logp, lse, entropy = (torch.cat(x) for x in zip(*parts))
        ctx.save_for_backward(hidden, weight, targets, lse, entropy)
        ctx.chunk = chunk
        return logp, entropy

    @staticmethod
    def backward(ctx, g, e):
        hidden, weight, targets, lse, entropy = ctx.saved_tensors
        _, grad_logits = _compiled_fns(hidden.device.type)
        dh = torch.empty_like(hidden)
        dw = torch.zeros_like(weight)
        for i in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(i, i + ctx.chunk)
            dz = grad_logits(hidden[rows], weight, targets[rows], lse[rows], entropy[rows],
                             g[rows], e[rows])
            torch.mm(dz, weight, out=dh[rows])
            dw.addmm_(dz.T, hidden[rows])
        return dh, dw, None, None


def torch_compile_chunked(hidden, weight, targets, *, chunk=COMPILE_CHUNK):
    return _CompileChunked.apply(hidden, weight, targets, chunk)


def _liger():
    from liger_kernel.ops.fused_linear_cross_entropy import (
        LigerFusedLinearCrossEntropyFunction as fused,
    )

    def run(hidden, weight, targets):
        # Positional: bias, ce_weight, ignore_index, lse_square_scale, label_smoothing,
        # reduction. The return value is the loss alone or a tuple, by version.
        out = fused.apply(hidden, weight, targets, None, None, -100, 0.0, 0.0, "none")
        loss = out[0] if isinstance(out, tuple) else out
        return -loss.float(), None

    return run


def _cce():
    from cut_cross_entropy import linear_cross_entropy

    def run(hidden, weight, targets):
        return -linear_cross_entropy(hidden, weight, targets, reduction="none").float(), None

    return run


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def available_providers(device: torch.device, triton_ok: bool,
                        compile_chunk: int = COMPILE_CHUNK) -> dict[str, Provider]:
    """The providers that can run here. Liger and CCE are optional (CUDA only)."""
    chunked = functools.partial(torch_compile_chunked, chunk=compile_chunk)
    out = {
        "torch-eager": Provider("torch-eager", torch_eager, True, _version("torch")),
        "torch-compile-chunked": Provider("torch-compile-chunked", chunked, True,
                                          _version("torch")),
    }
    if triton_ok:
        out["prefopt-triton"] = Provider("prefopt-triton", prefopt_triton, True,
                                         _version("prefopt"))
    if device.type == "cuda":
        for name, make, dist in (("liger", _liger, "liger-kernel"),
                                 ("cce", _cce, "cut-cross-entropy")):
            try:
                out[name] = Provider(name, make(), False, _version(dist))
            except ImportError:
                pass
    return out

"""Torch reference for fused token log-probabilities: chunked over tokens, fp32 throughout.

This is the exact oracle the Triton kernels are tested against, and the CPU path of
training. It never holds more than one chunk of logits: the forward keeps only the
per-row log-sum-exp, and the backward recomputes each chunk's logits.

Notation, for one row (token) with hidden state h, LM head W [V, H], temperature T:

    z_j    = (W h)_j / T                     tempered logits
    lse    = log Σ_j exp z_j
    logp   = z_t - lse                       t = the target token
    p_j    = exp(z_j - lse)
    H      = lse - Σ_j p_j z_j               entropy of the tempered distribution

Gradients with respect to the raw logits l = W h (so z = l / T), for upstream gradients
g (of logp) and e (of H):

    d logp / d z_j = [j = t] - p_j
    d H    / d z_j = -p_j (log p_j + H) = -p_j (z_j - lse + H)
    dL / d l_j     = (g ([j = t] - p_j) - e p_j (z_j - lse + H)) / T

then dh = (dL/dl) W and dW = (dL/dl)^T h. Per-token upstream gradients are applied to
each row before anything is summed into dW, and dW is accumulated in fp32.
"""

from __future__ import annotations

import torch

# One chunk of fp32 logits at most this large. Small enough for a laptop, large enough
# that the matmuls are not launch-bound on a GPU.
_CHUNK_BYTES = 256 * 2**20


def default_chunk_size(vocab_size: int) -> int:
    return max(16, _CHUNK_BYTES // (4 * max(1, vocab_size)))


class _ChunkedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, ignore_index, with_entropy, chunk_size):
        n_rows = hidden.shape[0]
        w32 = weight.float()
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
        logp = torch.zeros(n_rows, dtype=torch.float32, device=hidden.device)
        lse = torch.zeros_like(logp)
        entropy = torch.zeros_like(logp)
        for start in range(0, n_rows, chunk_size):
            rows = slice(start, min(start + chunk_size, n_rows))
            z = (hidden[rows].float() @ w32.T) / temperature
            # Shift by the row max: H = log s - t/s with s = Σ e^(z-m), t = Σ e^(z-m)(z-m)
            # is a sum of non-negative terms; lse - Σ p z cancels badly on peaked rows.
            shifted = z - z.max(dim=-1, keepdim=True).values
            s = shifted.exp().sum(-1)
            chunk_lse = z.max(dim=-1).values + s.log()
            lse[rows] = chunk_lse
            logp[rows] = z.gather(1, safe_targets[rows, None]).squeeze(1) - chunk_lse
            if with_entropy:
                entropy[rows] = s.log() - (shifted.exp() * shifted).sum(-1) / s
        logp = torch.where(valid, logp, torch.zeros_like(logp))
        entropy = torch.where(valid, entropy, torch.zeros_like(entropy))
        ctx.save_for_backward(hidden, weight, safe_targets, valid, lse, entropy)
        ctx.temperature = temperature
        ctx.with_entropy = with_entropy
        ctx.chunk_size = chunk_size
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, valid, lse, entropy = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return (None,) * 7
        t = ctx.temperature
        w32 = weight.float()
        # `where`, not a product with the mask: a NaN upstream on an ignored row stays out.
        zero = torch.zeros_like(lse)
        g = torch.where(valid, grad_logp, zero) if grad_logp is not None else zero
        e = None
        if ctx.with_entropy and grad_entropy is not None:
            e = torch.where(valid, grad_entropy, zero)
        grad_hidden = torch.zeros_like(hidden) if need_h else None
        grad_w32 = torch.zeros_like(w32) if need_w else None
        n_rows = hidden.shape[0]
        for start in range(0, n_rows, ctx.chunk_size):
            rows = slice(start, min(start + ctx.chunk_size, n_rows))
            h32 = hidden[rows].float()
            z = (h32 @ w32.T) / t
            logp_all = z - lse[rows, None]
            p = torch.exp(logp_all)
            dz = -g[rows, None] * p
            dz.scatter_add_(1, targets[rows, None], g[rows, None])
            if e is not None:
                dz -= e[rows, None] * p * (logp_all + entropy[rows, None])
            dl = dz / t
            if need_h:
                grad_hidden[rows] = (dl @ w32).to(hidden.dtype)
            if need_w:
                grad_w32 += dl.T @ h32
        grad_weight = grad_w32.to(weight.dtype) if need_w else None
        return grad_hidden, grad_weight, None, None, None, None, None


def token_logprobs_torch(hidden, weight, targets, *, temperature=1.0, ignore_index=-100,
                         with_entropy=False, chunk_size=None):
    """Per-row log p(target) and entropy; see the module docstring for the formulas.

    Returns (logp [N] fp32, entropy [N] fp32). The entropy is zeros (and carries no
    gradient) unless `with_entropy`.
    """
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    return _ChunkedTokenLogprobs.apply(hidden, weight, targets, float(temperature),
                                       int(ignore_index), bool(with_entropy), int(chunk))

"""Torch reference for fused token log-probabilities: chunked over tokens, fp32 throughout.

This is the exact oracle the Triton kernels are tested against, and the CPU path of
training. It never holds more than two chunk-sized fp32 buffers (a chunk: rows of logits,
at most _CHUNK_BYTES), allocated once per call and worked in place: the forward keeps only
the per-row log-sum-exp and entropy, and the backward recomputes each chunk's logits into
its buffer and turns them into dL/dl there, the 1/T riding on the GEMMs as alpha.
benchmarks/cpu_reference.py measures it against torch eager (time and peak memory).

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

# One chunk of fp32 logits at most this large (bytes). The forward holds one such buffer
# (two with the entropy), the backward two (one without), reused chunk after chunk. On
# the CPU the chunk's height is what the GEMMs' speed depends on: at N=2048, H=512,
# V=32000 fp32, 16 MiB chunks (131 rows) ran fwd+bwd 0.7x as fast as eager, 64 MiB
# ~1.0x, 128 MiB (1048 rows) 1.1x (benchmarks/cpu_reference.py); eager's peak there is
# ~5 N x V x 4 bytes, ours at most 2 x 128 MiB plus dW.
_CHUNK_BYTES = 128 * 2**20
_MIN_CHUNK_ROWS = 16


def default_chunk_size(vocab_size: int) -> int:
    return max(_MIN_CHUNK_ROWS, _CHUNK_BYTES // (4 * max(1, vocab_size)))


def _scaled_logits(out, h32, w32, inv_t):
    """out = (h32 @ w32^T) / T, in place; the scale rides on the GEMM (beta = 0: out's old
    contents are not read)."""
    return torch.addmm(out, h32, w32.T, beta=0.0, alpha=inv_t, out=out)


class _ChunkedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, ignore_index, with_entropy, chunk_size):
        n_rows = hidden.shape[0]
        w32 = weight.float()
        inv_t = 1.0 / temperature
        valid = targets != ignore_index
        safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
        logp = torch.zeros(n_rows, dtype=torch.float32, device=hidden.device)
        lse = torch.zeros_like(logp)
        entropy = torch.zeros_like(logp)
        rows_max = min(chunk_size, n_rows)
        buf = hidden.new_empty(rows_max, weight.shape[0], dtype=torch.float32)
        exp_buf = torch.empty_like(buf) if with_entropy else None
        for start in range(0, n_rows, chunk_size):
            rows = slice(start, min(start + chunk_size, n_rows))
            c = rows.stop - rows.start
            z = _scaled_logits(buf[:c], hidden[rows].float(), w32, inv_t)
            # Shift by the row max: H = log s - t/s with s = Σ e^(z-m), t = Σ e^(z-m)(z-m)
            # is a sum of non-negative terms; lse - Σ p z cancels badly on peaked rows.
            m = z.amax(dim=-1)
            shifted = z.sub_(m[:, None])
            z_t = shifted.gather(1, safe_targets[rows, None]).squeeze(1)
            if with_entropy:
                q = torch.exp(shifted, out=exp_buf[:c])
                s = q.sum(-1)
                t = shifted.mul_(q).sum(-1)  # Σ q (z - m); z_t was read above
                entropy[rows] = s.log() - t / s
            else:
                s = shifted.exp_().sum(-1)
            log_s = s.log()
            lse[rows] = m + log_s
            logp[rows] = z_t - log_s
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
        inv_t = 1.0 / ctx.temperature
        w32 = weight.float()
        # `where`, not a product with the mask: a NaN upstream on an ignored row stays out.
        zero = torch.zeros_like(lse)
        g = torch.where(valid, grad_logp, zero) if grad_logp is not None else zero
        e = None
        if ctx.with_entropy and grad_entropy is not None:
            e = torch.where(valid, grad_entropy, zero)
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_w32 = torch.empty_like(w32) if need_w else None
        n_rows = hidden.shape[0]
        rows_max = min(ctx.chunk_size, n_rows)
        buf = hidden.new_empty(rows_max, weight.shape[0], dtype=torch.float32)
        p_buf = torch.empty_like(buf) if e is not None else None
        if need_w and n_rows == 0:
            grad_w32.zero_()
        neg_lse = -lse
        if e is not None:
            neg_e, offset = -e, -(g + e * entropy)
        for start in range(0, n_rows, ctx.chunk_size):
            rows = slice(start, min(start + ctx.chunk_size, n_rows))
            c = rows.stop - rows.start
            h32 = hidden[rows].float()
            # dz = g ([j = t] - p) - e p (log p + H), built in place in the logits buffer:
            # log p straight from the GEMM (beta = 1 on -lse), then p (-(g + e H) - e log p).
            log_p = torch.addmm(neg_lse[rows, None], h32, w32.T, alpha=inv_t, out=buf[:c])
            g_c = g[rows, None]
            if e is None:
                dz = log_p.exp_().mul_(-g_c)
            else:
                p = torch.exp(log_p, out=p_buf[:c])
                dz = torch.addcmul(offset[rows, None], log_p, neg_e[rows, None], out=log_p)
                dz.mul_(p)
            dz.scatter_add_(1, targets[rows, None], g_c)
            # dL/dl = dz / T: the 1/T rides on both GEMMs as alpha.
            if need_h:
                if hidden.dtype == torch.float32:
                    torch.addmm(grad_hidden[rows], dz, w32, beta=0.0, alpha=inv_t,
                                out=grad_hidden[rows])
                else:
                    grad_hidden[rows] = torch.mm(dz, w32).mul_(inv_t)
            if need_w:
                grad_w32.addmm_(dz.T, h32, beta=0.0 if start == 0 else 1.0, alpha=inv_t)
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

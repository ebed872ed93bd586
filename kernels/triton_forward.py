"""Forward Triton kernel: per-row log-sum-exp, entropy and target logit, and its launch.

Forward (`_fwd_kernel`). A program owns one block of BLOCK_N rows and one contiguous
range ("split") of vocabulary tiles. For each BLOCK_N x BLOCK_V tile it computes the logits
with `tl.dot` over H (operands in the input dtype, fp32 accumulator) and folds them into
running per-row statistics: max m, s = Σ exp(z - m), t = Σ exp(z - m) (z - m), rescaling
s and t by exp(m_old - m_new) when the max grows (t first shifted by (m_old - m_new) s).
Keeping t relative to m is the issue's t = Σ exp(z - m) z minus m s; it makes the entropy
log s - t/s, a sum of two non-negative terms, where lse - Σ p z cancels for peaked rows.
The tile holding a row's target writes z_target.
Only the per-(split, row) triples leave the kernel ([3, n_splits, N] fp32, a few MiB at
most); a tiny torch step merges the splits into lse = M + log S and entropy log S - T/S.
Splits exist because N / BLOCK_N row blocks alone cannot fill 132 SMs; the split index is
the fastest-varying program id, so the programs running together share their h rows, and
each W tile they load is shared by the ~132 / n_splits row blocks in flight (L2 reuse).
`_forward` returns per-row logp, lse and entropy (fp32); the autograd Function
(triton_logprobs.py) saves lse and entropy for the backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .autotune import (
    _GPU_CONFIGS,
    _GPU_NOMINAL_BLOCK_N,
    _even_k,
    _explicit_blocks,
    _fits_smem,
    _n_splits,
)
from .triton_tiles import _dot_flags, _logits_tile


@triton.jit
def _fwd_kernel(h_ptr, w_ptr, tgt_ptr, part_ptr, zt_ptr, N, V, H, stride_h, stride_w,
                inv_temp, n_splits,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                EVEN_K: tl.constexpr, WITH_ENT: tl.constexpr, DOT_PRECISION: tl.constexpr,
                UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    pid_n = pid // n_splits
    pid_s = pid % n_splits
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_n < N
    tgt = tl.load(tgt_ptr + offs_n, mask=row_ok, other=-1)

    n_tiles = tl.cdiv(V, BLOCK_V)
    per_split = tl.cdiv(n_tiles, n_splits)
    first = pid_s * per_split
    last = tl.minimum(first + per_split, n_tiles)

    # Finite "minus infinity": (m_old - m_new) * s must be 0, not NaN, before the first tile.
    m = tl.full((BLOCK_N,), -1e30, tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    t = tl.zeros((BLOCK_N,), tl.float32)
    for tile in range(first, last):
        offs_v = tile * BLOCK_V + tl.arange(0, BLOCK_V)
        col_ok = offs_v < V
        z = _logits_tile(h_ptr, w_ptr, offs_n, offs_v, N, V, H, stride_h, stride_w,
                         BLOCK_N, BLOCK_V, BLOCK_K, EVEN_K, DOT_PRECISION, UPCAST) * inv_temp
        # Target logit: exactly one tile in the whole grid holds a row's (valid) target.
        is_tgt = offs_v[None, :] == tgt[:, None]
        z_tgt = tl.sum(tl.where(is_tgt, z, 0.0), axis=1)
        in_tile = (tgt >= tile * BLOCK_V) & (tgt < tile * BLOCK_V + BLOCK_V) & (tgt < V)
        tl.store(zt_ptr + offs_n, z_tgt, mask=row_ok & in_tile)
        # Online log-sum-exp; padding columns must count for nothing.
        z = tl.where(col_ok[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))  # finite: every tile has a real column
        rescale = tl.exp(m - m_new)
        e = tl.exp(z - m_new[:, None])
        if WITH_ENT:
            # t is kept relative to the running max, t = Σ exp(z - m) (z - m): the entropy
            # is then log s - t / s, two non-negative terms, instead of lse - Σ p z, whose
            # cancellation costs digits for peaked rows. A new max shifts every (z - m)
            # by (m_old - m_new) before the rescale. where(): padding columns hold -inf.
            shifted = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)
            t = (t + (m - m_new) * s) * rescale + tl.sum(e * shifted, axis=1)
        s = s * rescale + tl.sum(e, axis=1)
        m = m_new
    base = part_ptr + pid_s * N + offs_n
    tl.store(base, m, mask=row_ok)
    tl.store(base + n_splits * N, s, mask=row_ok)
    tl.store(base + 2 * n_splits * N, t, mask=row_ok)


_fwd_tuned = triton.autotune(_GPU_CONFIGS, key=["H", "V", "WITH_ENT"],
                             prune_configs_by={"early_config_prune": _fits_smem})(_fwd_kernel)


def _forward(hidden, weight, tgt, temperature, with_entropy, opts):
    N, H = hidden.shape
    V = weight.shape[0]
    blocks = _explicit_blocks(opts)
    nominal_bn = blocks[0]["BLOCK_N"] if blocks else _GPU_NOMINAL_BLOCK_N
    nominal_bv = blocks[0]["BLOCK_V"] if blocks else 128
    n_splits = _n_splits(N, V, nominal_bn, nominal_bv, hidden.device, opts)
    part = torch.empty(3, n_splits, N, dtype=torch.float32, device=hidden.device)
    # NaN marks "target never seen": an out-of-range target yields NaN, not a silent value.
    z_tgt = torch.full((N,), float("nan"), dtype=torch.float32, device=hidden.device)
    args = (hidden, weight, tgt, part, z_tgt, N, V, H, hidden.stride(0), weight.stride(0),
            1.0 / temperature, n_splits)
    flags = {"EVEN_K": _even_k(H, blocks), "WITH_ENT": with_entropy,
             **_dot_flags(hidden.dtype)}
    if blocks is None:
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]) * n_splits,)  # noqa: E731
        _fwd_tuned[grid](*args, **flags)
    else:
        grid = (triton.cdiv(N, blocks[0]["BLOCK_N"]) * n_splits,)
        _fwd_kernel[grid](*args, **flags, **blocks[0], **blocks[1])

    # Merge the splits: a few element-wise ops on [n_splits, N].
    m, s, t = part[0], part[1], part[2]
    m_max = m.max(dim=0).values
    scale = torch.exp(m - m_max)  # empty splits: m = -1e30, s = t = 0 -> 0
    s_all = (s * scale).sum(dim=0)
    lse = m_max + torch.log(s_all)
    entropy = torch.zeros_like(lse)
    if with_entropy:  # re-centre each split's t on the common max, as in the kernel
        t_all = ((t + (m - m_max) * s) * scale).sum(dim=0)
        entropy = torch.log(s_all) - t_all / s_all
    return z_tgt - lse, lse, entropy

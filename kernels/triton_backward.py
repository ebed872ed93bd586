"""Backward: the dz Triton kernel, the dW / dh GEMMs that consume it, and their loop.

Backward. The gradient w.r.t. the raw logits is
    dL/dl_j = (g ([j = t] - p_j) - e p_j (z_j - lse + H)) / T,
with g, e the per-token upstream gradients of logp and entropy (zeroed on ignored rows).
`_dz_kernel` recomputes a logits tile exactly as the forward does (`_logits_tile` of
triton_tiles.py: same operand dtype, fp32 accumulate; same temperature scaling), forms
dL/dl in registers, applies g and e to each row there, and stores it in the input dtype
into a workspace that covers one (row chunk x vocab chunk) block only. Two tensor-core
GEMMs (cuBLAS) then consume it:
    dW[vocab chunk]  (+)= dz^T @ h[row chunk]      and     dh_acc += dz @ W[vocab chunk].
The loop is row chunks (outer) x vocab chunks (inner). Row chunks are as tall as a 64 MiB
fp32 dh accumulator allows (4096 rows at H = 4096), vocab chunks as wide as a 64 MiB dz
workspace allows (8192 columns for 4096 rows), so the backward's extra memory is about
128 MiB whatever N and V are; nothing of size N x V exists at any time.

Why not a single fused kernel with atomics (the Cut-Cross-Entropy layout)? Per tile it
would add (BLOCK_N + BLOCK_V) x H partial sums into dh and dW. At N=8192, H=4096,
V=128256 with 128 x 128 tiles that is N V H (1/BLOCK_N + 1/BLOCK_V) ~ 6.7e10 fp32 atomic
adds, ~0.5 TB of read-modify-write traffic next to 3.4e13 useful flops (43 ms at peak):
the atomics alone would cost more than the whole budget, and the result would depend on
their order (CCE survives this by skipping tiles whose gradient is negligible). Keeping
dh or dW rows in registers instead would need H = 4096 fp32 columns per row
(FlashAttention can, its head dim is <= 256). The split design does the same 8 N H V
flops (fwd 2, recompute 2, dh 2, dW 2), runs the two gradient GEMMs at cuBLAS speed,
writes dz once and reads it twice (N V x 2 bytes each way, streamed through the 64 MiB
workspace: ~2 ms of HBM traffic at the target shape), and is deterministic.

dW precision. Each dW[vocab chunk] GEMM contracts a whole row chunk with fp32 tensor-core
accumulation, so when N fits one row chunk dW is fp32-accumulated and rounded once, for
free. With several row chunks the partial sums meet again: by default they are added into
dW in its own dtype (cuBLAS adds beta*C in fp32, then rounds): ceil(N / rows_per_chunk)
roundings (2 at N=8192, H=4096) instead of one, each of relative size up to 2^-8 for
bf16 (interpreter tests, 3 row chunks: 4.2e-3 relative error in dW vs 3.5e-3 with fp32).
`fp32_dw_accum=True` (or FP32_DW_ACCUMULATION in triton_logprobs.py) keeps an fp32 V x H
buffer instead (2 GiB at V=128256, H=4096, far beyond the 256 MiB extra-memory budget),
hence not the default. dh is always accumulated across vocab chunks in fp32 (the bounded
[rows, H] buffer).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .autotune import _GPU_CONFIGS, _even_k, _explicit_blocks, _fits_smem
from .triton_tiles import _dot_flags, _logits_tile

# Backward workspace budgets (bytes): the fp32 dh accumulator of one row chunk, and the dz
# block of one (row chunk x vocab chunk). Together ~128 MiB, half the 256 MiB target.
_DH_ACC_BYTES = 64 * 2**20
_DZ_BYTES = 64 * 2**20


@triton.jit
def _dz_kernel(h_ptr, w_ptr, tgt_ptr, lse_ptr, ent_ptr, g_ptr, e_ptr, dz_ptr,
               n_rows, n_cols, H, col0, stride_h, stride_w, stride_dz, inv_temp,
               BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
               GROUP_N: tl.constexpr, EVEN_K: tl.constexpr, HAS_ENT: tl.constexpr,
               DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """dz[r, c] = dL/dl for rows [0, n_rows) of the chunk and vocabulary col0 + c."""
    # Grouped ordering: GROUP_N row blocks sweep the vocabulary tiles together, so a W
    # tile fetched once from HBM serves GROUP_N programs out of L2.
    pid = tl.program_id(0)
    tiles_n = tl.cdiv(n_rows, BLOCK_N)
    tiles_v = tl.cdiv(n_cols, BLOCK_V)
    per_group = GROUP_N * tiles_v
    first_n = (pid // per_group) * GROUP_N
    group_rows = tl.minimum(tiles_n - first_n, GROUP_N)
    pid_n = first_n + (pid % per_group) % group_rows
    pid_v = (pid % per_group) // group_rows

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = offs_n < n_rows
    col_ok = offs_v < n_cols
    z = _logits_tile(h_ptr, w_ptr, offs_n, offs_v, n_rows, n_cols, H, stride_h, stride_w,
                     BLOCK_N, BLOCK_V, BLOCK_K, EVEN_K, DOT_PRECISION, UPCAST) * inv_temp

    lse = tl.load(lse_ptr + offs_n, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + offs_n, mask=row_ok, other=0.0)
    tgt = tl.load(tgt_ptr + offs_n, mask=row_ok, other=-1)
    logp = z - lse[:, None]
    p = tl.exp(logp)
    is_tgt = (offs_v[None, :] + col0) == tgt[:, None]
    dz = tl.where(is_tgt, g[:, None], 0.0) - g[:, None] * p
    if HAS_ENT:
        ent = tl.load(ent_ptr + offs_n, mask=row_ok, other=0.0)
        e = tl.load(e_ptr + offs_n, mask=row_ok, other=0.0)
        dz -= e[:, None] * p * (logp + ent[:, None])
    dz = dz * inv_temp
    dz_ptrs = dz_ptr + offs_n[:, None].to(tl.int64) * stride_dz + offs_v[None, :]
    tl.store(dz_ptrs, dz.to(dz_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


_dz_tuned = triton.autotune(_GPU_CONFIGS, key=["H", "HAS_ENT"],
                            prune_configs_by={"early_config_prune": _fits_smem})(_dz_kernel)


_MIXED_MM_OK: dict = {}


def _mixed_mm_supported(device, dtype) -> bool:
    """Can cuBLAS write/accumulate a half-precision product straight into fp32 here?

    torch >= 2.8 has mm/addmm(..., out_dtype=torch.float32) on CUDA; some releases insist
    that addmm's C has the operands' dtype. Probe once per (device, dtype).
    """
    key = (device, dtype)
    if key not in _MIXED_MM_OK:
        try:
            a = torch.ones(16, 16, dtype=dtype, device=device)
            c = torch.ones(16, 16, dtype=torch.float32, device=device)
            torch.addmm(c, a, a, out_dtype=torch.float32, out=c)
            ok = bool((c == 17).all())
            torch.mm(a, a, out_dtype=torch.float32, out=c)
            ok = ok and bool((c == 16).all())
        except (RuntimeError, TypeError):
            ok = False
        _MIXED_MM_OK[key] = ok
    return _MIXED_MM_OK[key]


def _mm_into(out, a, b, accumulate: bool):
    """out (+)= a @ b, accumulating in fp32 inside the GEMM; out may be fp32 with half a, b."""
    if out.dtype == a.dtype:
        if accumulate:
            out.addmm_(a, b)
        else:
            torch.mm(a, b, out=out)
    elif out.is_cuda and _mixed_mm_supported(out.device, a.dtype):
        if accumulate:
            torch.addmm(out, a, b, out_dtype=torch.float32, out=out)
        else:
            torch.mm(a, b, out_dtype=torch.float32, out=out)
    else:
        # Older torch on CUDA: one rounding of this chunk's product, then an fp32 add.
        # CPU (interpreter tests): exact fp32 products.
        prod = torch.mm(a, b) if out.is_cuda else torch.mm(a.float(), b.float())
        if accumulate:
            out.add_(prod)
        else:
            out.copy_(prod)


def _chunking(N, H, V, dtype, opts):
    rows = opts.rows_per_chunk or max(128, (_DH_ACC_BYTES // (4 * H)) // 128 * 128)
    rows = min(rows, N)
    elt = torch.finfo(dtype).bits // 8
    cols = opts.cols_per_chunk or max(256, (_DZ_BYTES // (elt * rows)) // 256 * 256)
    return rows, min(cols, V)


def _launch_dz(h, w, tgt, lse, ent, g, e, dz, col0, temperature, opts):
    n_rows, H = h.shape
    n_cols = dz.shape[1]
    blocks = _explicit_blocks(opts)
    args = (h, w, tgt, lse, ent if e is not None else lse, g, e if e is not None else g, dz,
            n_rows, n_cols, H, col0, h.stride(0), w.stride(0), dz.stride(0), 1.0 / temperature)
    flags = {"GROUP_N": 8, "EVEN_K": _even_k(H, blocks), "HAS_ENT": e is not None,
             **_dot_flags(h.dtype)}
    if blocks is None:
        grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_N"])  # noqa: E731
                             * triton.cdiv(n_cols, meta["BLOCK_V"]),)
        _dz_tuned[grid](*args, **flags)
    else:
        b = blocks[0]
        grid = (triton.cdiv(n_rows, b["BLOCK_N"]) * triton.cdiv(n_cols, b["BLOCK_V"]),)
        _dz_kernel[grid](*args, **flags, **b, **blocks[1])


def _backward(hidden, weight, tgt, lse, ent, g, e, temperature, need_h, need_w,
              fp32_dw, opts):
    N, H = hidden.shape
    V = weight.shape[0]
    rows, cols = _chunking(N, H, V, hidden.dtype, opts)
    half = hidden.dtype != torch.float32
    several_row_chunks = rows < N
    dh = torch.empty_like(hidden) if need_h else None
    dw = torch.empty_like(weight) if need_w else None
    # Where dW's row-chunk partial sums meet (see "dW precision" in the module note).
    dw_acc = dw
    if need_w and half and several_row_chunks and fp32_dw:
        dw_acc = torch.empty(V, H, dtype=torch.float32, device=weight.device)
    dh_acc = torch.empty(rows, H, dtype=torch.float32, device=hidden.device) \
        if need_h and half else None
    workspace = torch.empty(rows * cols, dtype=hidden.dtype, device=hidden.device)

    for r0 in range(0, N, rows):
        r1 = min(r0 + rows, N)
        h_rows = hidden[r0:r1]
        acc = None
        if need_h:
            acc = dh_acc[: r1 - r0] if dh_acc is not None else dh[r0:r1]
        for c0 in range(0, V, cols):
            c1 = min(c0 + cols, V)
            dz = workspace[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
            _launch_dz(h_rows, weight[c0:c1], tgt[r0:r1], lse[r0:r1], ent[r0:r1], g[r0:r1],
                       None if e is None else e[r0:r1], dz, c0, temperature, opts)
            if need_h:
                _mm_into(acc, dz, weight[c0:c1], accumulate=c0 > 0)
            if need_w:
                _mm_into(dw_acc[c0:c1], dz.t(), h_rows, accumulate=r0 > 0)
        if dh_acc is not None:
            dh[r0:r1].copy_(acc)
    if need_w and dw_acc is not dw:
        dw.copy_(dw_acc)
    return dh, dw

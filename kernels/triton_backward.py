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

dh's fp32 accumulator (and dW's fp32 buffer) take half-precision GEMMs with an fp32 output.
Which call does that depends on the torch build, so `_mixed_mm_path` probes once: addmm
with out_dtype=fp32 into the fp32 buffer (torch >= 2.8); on builds whose addmm wants C in
the operands' dtype, mm with out_dtype=fp32 into a 16 MiB fp32 scratch, added in fp32
(nothing rounded to the half dtype); without out_dtype at all (older torch), the product
is rounded to the half dtype once per vocabulary chunk, then added in fp32. The benchmark
logs the path that ran (LAST_BACKWARD).

fp16 range. dz = g ([j = t] - p) / T spans what fp16 cannot: its entries are ~|g| / (T V),
below fp16's smallest normal (6e-5) for small upstream gradients (x1e-5 cost dh 7e-3 of
relative error), and |g| / T above 65504 is inf (NaN gradients). For fp16 inputs the dz
kernel therefore multiplies each row by a power of two that brings its bound
(|g| + |e| (1/e + H)) / T into (1/2, 1] (`_fp16_row_scales`), which is exact. dh is
unscaled per row in its fp32 accumulator; dW's GEMM takes the largest inverse scale of the
row chunk as its alpha (applied in fp32 before the output is rounded) and the rows'
remaining factors (powers of two <= 1) multiply h, in a [rows, H] fp16 temporary. bf16
has fp32's exponent range and keeps the unscaled path.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .autotune import _GPU_CONFIGS, _even_k, _explicit_blocks, _fits_smem
from .triton_tiles import _dot_flags, _logits_tile

# Backward workspace budgets (bytes): the fp32 dh accumulator of one row chunk, and the dz
# block of one (row chunk x vocab chunk). Together ~128 MiB, half the 256 MiB target (plus
# at most 16 MiB of GEMM scratch, and for fp16 a 32 MiB row chunk of scaled h).
_DH_ACC_BYTES = 64 * 2**20
_DZ_BYTES = 64 * 2**20


@triton.jit
def _dz_kernel(h_ptr, w_ptr, tgt_ptr, lse_ptr, ent_ptr, g_ptr, e_ptr, scale_ptr, dz_ptr,
               n_rows, n_cols, H, col0, stride_h, stride_w, stride_dz, inv_temp,
               BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
               GROUP_N: tl.constexpr, EVEN_K: tl.constexpr, HAS_ENT: tl.constexpr,
               HAS_SCALE: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """dz[r, c] = dL/dl for rows [0, n_rows) of the chunk and vocabulary col0 + c, times
    scale[r] if HAS_SCALE (fp16: see "fp16 range" in the module note)."""
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
    if HAS_SCALE:
        dz = dz * tl.load(scale_ptr + offs_n, mask=row_ok, other=1.0)[:, None]
    dz_ptrs = dz_ptr + offs_n[:, None].to(tl.int64) * stride_dz + offs_v[None, :]
    tl.store(dz_ptrs, dz.to(dz_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


_dz_tuned = triton.autotune(_GPU_CONFIGS, key=["H", "HAS_ENT"],
                            prune_configs_by={"early_config_prune": _fits_smem})(_dz_kernel)


# How a product of half-precision operands reaches an fp32 output (dh's accumulator; dW's
# with fp32_dw_accum), decided once per (device, dtype) by `_mixed_mm_path`:
MIXED_ADDMM = "addmm-out-dtype"  # addmm(C fp32, A, B, out_dtype=fp32): fp32 in, fp32 out
MIXED_MM = "mm-out-dtype+fp32-add"  # addmm wants C in A's dtype: mm(out_dtype=fp32) into
#                                     an fp32 scratch, then an fp32 add; nothing rounded
HALF_PRODUCT = "half-product+fp32-add"  # no out_dtype at all (torch < 2.8): each chunk's
#                                         product is rounded to the half dtype once
CPU_UPCAST = "cpu-fp32-operands"  # CPU (interpreter tests): fp32 operands, exact products
SAME_DTYPE = "same-dtype"  # the output has the operands' dtype: one GEMM, fp32 inside

# The scratch of MIXED_MM / HALF_PRODUCT / CPU_UPCAST: the product is formed this many
# bytes at a time (slices of the output's rows), then added to the fp32 output.
_MM_SCRATCH_BYTES = 16 * 2**20

_MIXED_MM_PATHS: dict = {}

# What the last backward did (the benchmark logs it): the GEMM path of dh and dW, whether
# dz was scaled per row (fp16), and the number of row and vocabulary chunks.
LAST_BACKWARD: dict = {}


def _mixed_mm_path(device, dtype) -> str:
    """How to form fp32 (+)= alpha * (half @ half) on `device`; probed once per (device,
    dtype) with the very calls `_mm_into` makes.

    torch >= 2.8 has mm/addmm(..., out_dtype=torch.float32) on CUDA; some builds insist
    that addmm's C has the operands' dtype, while mm (which has no C) takes fp32 out.
    """
    if device.type != "cuda":
        return CPU_UPCAST
    key = (device, dtype)
    if key not in _MIXED_MM_PATHS:
        _MIXED_MM_PATHS[key] = _probe_mixed_mm(device, dtype)
    return _MIXED_MM_PATHS[key]


def _probe_mixed_mm(device, dtype) -> str:
    a = torch.ones(16, 16, dtype=dtype, device=device)
    # 1 + 2^-12 and 33 + 2^-12 are fp32 values that neither half dtype holds.
    c = torch.full((16, 16), 1 + 2.0**-12, dtype=torch.float32, device=device)

    def addmm_into_fp32() -> bool:
        torch.addmm(c, a, a, out_dtype=torch.float32, beta=1.0, alpha=2.0, out=c)
        accumulated = bool((c == 33 + 2.0**-12).all())
        torch.addmm(c, a, a, out_dtype=torch.float32, beta=0.0, alpha=0.5, out=c)
        return accumulated and bool((c == 8).all())

    def mm_into_fp32() -> bool:
        torch.mm(a, a, out_dtype=torch.float32, out=c)
        return bool((c == 16).all())

    if _gives_exact_fp32(addmm_into_fp32):
        return MIXED_ADDMM
    if _gives_exact_fp32(mm_into_fp32):
        return MIXED_MM
    return HALF_PRODUCT


def _gives_exact_fp32(call) -> bool:
    """Whether this torch build runs `call` and gets the exact fp32 answer it checks. A
    build that lacks the call is a plain no, not an error: without `out_dtype` at all
    (torch < 2.8) it is a TypeError, with a C dtype it refuses a RuntimeError or
    NotImplementedError, and the caller then settles for the next path."""
    try:
        return call()
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def _mm_into(out, a, b, accumulate: bool, *, alpha: float = 1.0, path: str | None = None,
             scratch: torch.Tensor | None = None) -> str:
    """out (+)= alpha * (a @ b), accumulating in fp32 inside the GEMM; out may be fp32 with
    half a, b. Returns the path taken. `path` overrides the probe (tests); `scratch`, a
    flat buffer of at least _MM_SCRATCH_BYTES, saves the scratch paths an allocation."""
    beta = 1.0 if accumulate else 0.0
    if out.dtype == a.dtype:
        if accumulate or alpha != 1.0:
            out.addmm_(a, b, beta=beta, alpha=alpha)
        else:
            torch.mm(a, b, out=out)
        return SAME_DTYPE
    path = path or _mixed_mm_path(out.device, a.dtype)
    if path == MIXED_ADDMM:
        torch.addmm(out, a, b, out_dtype=torch.float32, beta=beta, alpha=alpha, out=out)
        return path
    if path == MIXED_MM and not accumulate and alpha == 1.0:
        torch.mm(a, b, out_dtype=torch.float32, out=out)
        return path
    # The product in slices of out's rows through a bounded scratch, then an fp32 add.
    prod_dtype = a.dtype if path == HALF_PRODUCT else torch.float32
    elt = torch.finfo(prod_dtype).bits // 8
    m, n = out.shape
    step = max(1, min(m, _MM_SCRATCH_BYTES // (elt * max(1, n))))
    if scratch is None or scratch.numel() * scratch.element_size() < step * n * elt:
        scratch = torch.empty(step * n * elt, dtype=torch.uint8, device=out.device)
    buf = scratch.view(-1)[: step * n * elt].view(prod_dtype).view(step, n)
    b_op = b.float() if path == CPU_UPCAST else b
    for i in range(0, m, step):
        j = min(i + step, m)
        prod = buf[: j - i]
        if path == MIXED_MM:
            torch.mm(a[i:j], b, out_dtype=torch.float32, out=prod)
        elif path == CPU_UPCAST:
            torch.mm(a[i:j].float(), b_op, out=prod)
        else:
            torch.mm(a[i:j], b, out=prod)
        if accumulate:
            out[i:j].add_(prod, alpha=alpha)
        else:
            torch.mul(prod, alpha, out=out[i:j])
    return path


def _chunking(N, H, V, dtype, opts):
    rows = opts.rows_per_chunk or max(128, (_DH_ACC_BYTES // (4 * H)) // 128 * 128)
    rows = min(rows, N)
    elt = torch.finfo(dtype).bits // 8
    cols = opts.cols_per_chunk or max(256, (_DZ_BYTES // (elt * rows)) // 256 * 256)
    return rows, min(cols, V)


def _fp16_row_scales(g, e, ent, temperature):
    """fp16 only: per-row powers of two `scale` with |dz[r, :]| * scale[r] <= 1, and
    which rows have a finite, non-zero bound. See "fp16 range" in the module note."""
    bound = g.abs()
    if e is not None:  # |p (log p + H)| <= p |log p| + p H <= 1/e + H
        bound = bound + e.abs() * (math.exp(-1.0) + ent)
    bound = bound / temperature
    live = (bound > 0) & torch.isfinite(bound)
    exponent = torch.floor(torch.log2(1.0 / torch.where(live, bound, 1.0)))
    return torch.exp2(exponent.clamp(-126, 126)), live


def _launch_dz(h, w, tgt, lse, ent, g, e, scale, dz, col0, temperature, opts):
    n_rows, H = h.shape
    n_cols = dz.shape[1]
    blocks = _explicit_blocks(opts)
    args = (h, w, tgt, lse, ent if e is not None else lse, g, e if e is not None else g,
            scale if scale is not None else lse, dz,
            n_rows, n_cols, H, col0, h.stride(0), w.stride(0), dz.stride(0), 1.0 / temperature)
    flags = {"GROUP_N": 8, "EVEN_K": _even_k(H, blocks), "HAS_ENT": e is not None,
             "HAS_SCALE": scale is not None, **_dot_flags(h.dtype)}
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
    mixed = (need_h and half) or dw_acc is not dw
    scratch = None
    if mixed and _mixed_mm_path(hidden.device, hidden.dtype) != MIXED_ADDMM:
        scratch = torch.empty(_MM_SCRATCH_BYTES, dtype=torch.uint8, device=hidden.device)

    # fp16: dz scaled per row into [-1, 1]; dh unscaled per row, dW by a power of two per
    # row chunk (alpha of its GEMM) and the rows' remaining factors folded into h.
    scale = unscale = None
    chunk_alpha = [1.0] * len(range(0, N, rows))
    if hidden.dtype == torch.float16:
        scale, live = _fp16_row_scales(g, e, ent, temperature)
        unscale = 1.0 / scale
        padded = torch.zeros(len(chunk_alpha) * rows, device=g.device)
        padded[:N] = torch.where(live, unscale, 0.0)
        top = padded.view(-1, rows).max(dim=1).values
        top = torch.where(top > 0, top, 1.0)
        chunk_alpha = top.tolist()  # the one host synchronisation
        # Row factor for dW: unscale / chunk max (<= 1); 0 for rows whose dz is 0, 1 for
        # rows with a NaN or inf bound (they stay NaN / inf, as in the other dtypes).
        h_factor = torch.where(live, unscale / top.repeat_interleave(rows)[:N],
                               torch.where(g.abs() + (0 if e is None else e.abs()) == 0,
                                           0.0, 1.0)).to(hidden.dtype)

    dh_path = dw_path = None
    for r0 in range(0, N, rows):
        r1 = min(r0 + rows, N)
        h_rows = hidden[r0:r1]
        alpha = chunk_alpha[r0 // rows]
        h_dw = h_rows if scale is None or not need_w else h_rows * h_factor[r0:r1, None]
        acc = None
        if need_h:
            acc = dh_acc[: r1 - r0] if dh_acc is not None else dh[r0:r1]
        for c0 in range(0, V, cols):
            c1 = min(c0 + cols, V)
            dz = workspace[: (r1 - r0) * (c1 - c0)].view(r1 - r0, c1 - c0)
            _launch_dz(h_rows, weight[c0:c1], tgt[r0:r1], lse[r0:r1], ent[r0:r1], g[r0:r1],
                       None if e is None else e[r0:r1],
                       None if scale is None else scale[r0:r1], dz, c0, temperature, opts)
            if need_h:
                dh_path = _mm_into(acc, dz, weight[c0:c1], accumulate=c0 > 0,
                                   scratch=scratch)
            if need_w:
                dw_path = _mm_into(dw_acc[c0:c1], dz.t(), h_dw, accumulate=r0 > 0,
                                   alpha=alpha, scratch=scratch)
        if need_h and unscale is not None:
            acc.mul_(unscale[r0:r1, None])
        if dh_acc is not None:
            dh[r0:r1].copy_(acc)
    if need_w and dw_acc is not dw:
        dw.copy_(dw_acc)
    LAST_BACKWARD.clear()
    LAST_BACKWARD.update(dtype=str(hidden.dtype).removeprefix("torch."), dh_mm=dh_path,
                         dw_mm=dw_path, dz_row_scaling=scale is not None,
                         row_chunks=len(chunk_alpha), vocab_chunks=len(range(0, V, cols)))
    return dh, dw

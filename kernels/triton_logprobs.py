"""Triton kernels for per-token log-probabilities and entropy, never forming N x V logits.

Design note
-----------
Shapes: hidden h [N, H], LM head W [V, H], z = (h W^T) / T. Formulas: see reference.py.

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
Saved for backward: per-row lse and entropy (fp32), besides the inputs.

Backward. The gradient w.r.t. the raw logits is
    dL/dl_j = (g ([j = t] - p_j) - e p_j (z_j - lse + H)) / T,
with g, e the per-token upstream gradients of logp and entropy (zeroed on ignored rows).
`_dz_kernel` recomputes a logits tile exactly as the forward does (same operand dtype,
fp32 accumulate, same temperature scaling), forms dL/dl in registers, applies g and e to
each row there, and stores it in the input dtype into a workspace that covers one
(row chunk x vocab chunk) block only. Two tensor-core GEMMs (cuBLAS) then consume it:
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
`fp32_dw_accum=True` (or FP32_DW_ACCUMULATION) keeps an fp32 V x H buffer instead (2 GiB
at V=128256, H=4096, far beyond the 256 MiB extra-memory budget), hence not the default.
dh is always accumulated across vocab chunks in fp32 (the bounded [rows, H] buffer).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .reference import token_logprobs_torch

__all__ = ["token_logprobs_triton", "LaunchOptions"]

# Default for `fp32_dw_accum=None` (set prefopt.kernels.triton_logprobs.FP32_DW_ACCUMULATION
# to change it process-wide). Off: an fp32 dW buffer is V x H x 4 bytes (2 GiB for a
# 128k vocabulary at H=4096), and the default path already accumulates each dW slice in
# fp32 inside its GEMM; only the few row chunks are summed in dW's dtype (see the note).
FP32_DW_ACCUMULATION = False

# Backward workspace budgets (bytes): the fp32 dh accumulator of one row chunk, and the dz
# block of one (row chunk x vocab chunk). Together ~128 MiB, half the 256 MiB target.
_DH_ACC_BYTES = 64 * 2**20
_DZ_BYTES = 64 * 2**20

# Triton decides between compiling and interpreting when a kernel is decorated, i.e. when
# this module is imported; remember which it was.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


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


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _logits_tile(h_ptr, w_ptr, offs_n, offs_v, n_rows, n_cols, H, stride_h, stride_w,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                 EVEN_K: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """fp32 [BLOCK_N, BLOCK_V] = h[offs_n] @ W[offs_v]^T, operands in the input dtype."""
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = offs_n[:, None] < n_rows
    col_ok = offs_v[None, :] < n_cols
    # int64 row offsets: V x H exceeds 2^31 elements for large vocabularies.
    h_ptrs = h_ptr + offs_n[:, None].to(tl.int64) * stride_h + offs_k[None, :]
    w_ptrs = w_ptr + offs_v[None, :].to(tl.int64) * stride_w + offs_k[:, None]
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        if EVEN_K:
            h_mask = row_ok
            w_mask = col_ok
        else:
            h_mask = row_ok & ((k0 + offs_k[None, :]) < H)
            w_mask = col_ok & ((k0 + offs_k[:, None]) < H)
        a = tl.load(h_ptrs, mask=h_mask, other=0.0)
        b = tl.load(w_ptrs, mask=w_mask, other=0.0)
        if UPCAST:
            # Interpreter only: its tl.dot multiplies bf16 operands as their raw uint16
            # bits. A bf16 x bf16 product is exact in fp32, so upcasting first gives the
            # same fp32-accumulated result the tensor cores compute.
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        h_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    return acc


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


# ------------------------------------------------------------------ launch configuration


def _cfg(bn, bv, bk, warps, stages):
    return triton.Config({"BLOCK_N": bn, "BLOCK_V": bv, "BLOCK_K": bk},
                         num_warps=warps, num_stages=stages)


# Hopper-oriented: 128-row blocks feed wgmma well; 256-wide vocabulary tiles halve the
# h re-reads but double the epilogue's registers, so both widths are tried.
_GPU_CONFIGS = [
    _cfg(128, 256, 64, 8, 3),
    _cfg(128, 128, 64, 8, 4),
    _cfg(128, 128, 64, 4, 4),
    _cfg(128, 128, 32, 4, 4),
    _cfg(64, 128, 64, 4, 4),
    _cfg(64, 64, 32, 4, 3),  # fp32 inputs (no tensor cores with "ieee"): fewest spills
]
_GPU_NOMINAL_BLOCK_N = 128
_SMEM_BUDGET = 200 * 1024  # H100 has 227 KiB per block; leave room for the epilogue


def _fits_smem(configs, named_args, **_):
    elt = named_args["h_ptr"].element_size()
    keep = [c for c in configs if c.num_stages * (c.kwargs["BLOCK_N"] + c.kwargs["BLOCK_V"])
            * c.kwargs["BLOCK_K"] * elt <= _SMEM_BUDGET]
    return keep or configs[-1:]


# Small blocks for the interpreter: its run time scales with the number of tile steps.
_INTERPRET_BLOCKS = {"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_K": 16}

_fwd_tuned = triton.autotune(_GPU_CONFIGS, key=["H", "V", "WITH_ENT"],
                             prune_configs_by={"early_config_prune": _fits_smem})(_fwd_kernel)
_dz_tuned = triton.autotune(_GPU_CONFIGS, key=["H", "HAS_ENT"],
                            prune_configs_by={"early_config_prune": _fits_smem})(_dz_kernel)


def _explicit_blocks(opts: LaunchOptions):
    """Block sizes to launch with, or None to let the autotuner choose."""
    given = {"BLOCK_N": opts.block_n, "BLOCK_V": opts.block_v, "BLOCK_K": opts.block_k}
    if all(v is None for v in given.values()) and not INTERPRETED:
        return None
    blocks = {k: (v if v is not None else (_INTERPRET_BLOCKS[k] if INTERPRETED else
                                           _GPU_CONFIGS[1].kwargs[k]))
              for k, v in given.items()}
    extra = {}
    if not INTERPRETED:
        extra = {"num_warps": opts.num_warps or 4, "num_stages": opts.num_stages or 3}
    return blocks, extra


def _even_k(H, blocks):
    if blocks is None:  # autotuned: every config's BLOCK_K must divide H
        return all(H % c.kwargs["BLOCK_K"] == 0 for c in _GPU_CONFIGS)
    return H % blocks[0]["BLOCK_K"] == 0


def _dot_flags(dtype):
    return {"DOT_PRECISION": _dot_precision(dtype), "UPCAST": INTERPRETED}


def _dot_precision(dtype):
    # fp32 inputs: true fp32 products ("ieee"); Triton's default would be TF32 (~1e-3).
    return "ieee" if dtype == torch.float32 else "tf32"


def _n_splits(n_rows, V, block_n, block_v, device, opts):
    if opts.n_splits is not None:
        return max(1, opts.n_splits)
    if INTERPRETED:
        return 2  # exercises the merge of splits while keeping the program count small
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = triton.cdiv(n_rows, block_n)
    # ~8 programs per SM: enough waves that the last, partial one costs little.
    return max(1, min(triton.cdiv(V, block_v), triton.cdiv(8 * sms, row_blocks)))


# ------------------------------------------------------------------------------ forward


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


# ----------------------------------------------------------------------------- backward


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

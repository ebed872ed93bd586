"""The logits tile both Triton kernels compute, and the flags that fix how it is computed.

Shapes: hidden h [N, H], LM head W [V, H], z = (h W^T) / T. Formulas: see reference.py.
`_logits_tile` is the one piece of Triton code the forward (triton_forward.py) and the
backward (triton_backward.py) share: the backward recomputes each tile exactly as the
forward did (same operand dtype, fp32 accumulate), so both must get it from here, with
the same flags (`_dot_flags`).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Triton decides between compiling and interpreting when a kernel is decorated, i.e. when
# this module (the first of the kernel modules) is imported; remember which it was.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


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


def _dot_flags(dtype):
    return {"DOT_PRECISION": _dot_precision(dtype), "UPCAST": INTERPRETED}


def _dot_precision(dtype):
    # fp32 inputs: true fp32 products ("ieee"); Triton's default would be TF32 (~1e-3).
    return "ieee" if dtype == torch.float32 else "tf32"

"""Launch configuration of the Triton kernels: the tuning tables and the policy around them.

The autotuner's config table (`_GPU_CONFIGS`) and its shared-memory filter (`_fits_smem`),
which triton_forward.py and triton_backward.py wrap their kernels with; the block sizes
used when the autotuner is bypassed (`_explicit_blocks`: LaunchOptions overrides, and
always under the interpreter); whether H needs no K masking (`_even_k`); and the forward's
vocabulary split count (`_n_splits`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton

from .triton_tiles import INTERPRETED

if TYPE_CHECKING:
    from .triton_logprobs import LaunchOptions


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
# The forward picks its split count before the autotuner picks BLOCK_N; it assumes the
# 128-row blocks that most of the table above uses.
_GPU_NOMINAL_BLOCK_N = 128
_SMEM_BUDGET = 200 * 1024  # H100 has 227 KiB per block; leave room for the epilogue


# Autotuner pruning: a config's shared memory is num_stages pipelined copies of one h tile
# (BLOCK_N x BLOCK_K) and one W tile (BLOCK_V x BLOCK_K) in the input dtype. If none fits,
# keep the last (the table's smallest) rather than nothing.
def _fits_smem(configs, named_args, **_):
    elt = named_args["h_ptr"].element_size()
    keep = [c for c in configs if c.num_stages * (c.kwargs["BLOCK_N"] + c.kwargs["BLOCK_V"])
            * c.kwargs["BLOCK_K"] * elt <= _SMEM_BUDGET]
    return keep or configs[-1:]


# Small blocks for the interpreter: its run time scales with the number of tile steps.
_INTERPRET_BLOCKS = {"BLOCK_N": 16, "BLOCK_V": 32, "BLOCK_K": 16}


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


def _n_splits(n_rows, V, block_n, block_v, device, opts):
    if opts.n_splits is not None:
        return max(1, opts.n_splits)
    if INTERPRETED:
        return 2  # exercises the merge of splits while keeping the program count small
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    row_blocks = triton.cdiv(n_rows, block_n)
    # ~8 programs per SM: enough waves that the last, partial one costs little.
    return max(1, min(triton.cdiv(V, block_v), triton.cdiv(8 * sms, row_blocks)))

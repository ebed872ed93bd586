"""The flags of the shared logits tile (kernels/triton_tiles.py), on the CPU.

The tile itself is exercised through both kernels in test_triton_interpret.py and
test_triton_gpu.py. What the interpreter cannot show is the dot precision: its tl.dot is
a numpy fp32 matmul whatever the flag, so fp32 inputs computed in TF32 (~1e-3) on a GPU
would pass every CPU test but this one.
"""

from __future__ import annotations

import pytest
import torch

from prefopt.kernels import triton_tiles


def test_fp32_inputs_get_true_fp32_products():
    # Triton's default for fp32 operands would be TF32.
    assert triton_tiles._dot_flags(torch.float32)["DOT_PRECISION"] == "ieee"


@pytest.mark.parametrize("interpreted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_operands_are_upcast_under_the_interpreter_only(monkeypatch, interpreted, dtype):
    # The interpreter's tl.dot would multiply bf16 operands as their raw bits; compiled
    # kernels must keep half operands for the tensor cores.
    monkeypatch.setattr(triton_tiles, "INTERPRETED", interpreted)
    assert triton_tiles._dot_flags(dtype)["UPCAST"] is interpreted

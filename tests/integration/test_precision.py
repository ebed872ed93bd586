"""prefopt-train in bf16: every objective for two steps under Lightning's bf16-mixed and
bf16-true on the CPU, and bf16-mixed on a GPU with log-probs through the Triton kernels
(logprob_impl=auto picks them on CUDA). Half precision changes dtypes under the code's
feet: autocast casts a linear layer's output to bf16, and bf16-true makes bf16 the default
dtype of new tensors; fp32 buffers must still be fp32."""

import math

import pytest
import torch

from prefopt import registry
from prefopt.objective import OnlineObjective

OBJECTIVES = sorted(registry.discover())
ON_GPU = [pytest.mark.gpu,
          pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CASES = [pytest.param("cpu", precision, id=f"cpu-{precision}")
         for precision in ("bf16-mixed", "bf16-true")]
CASES.append(pytest.param("gpu", "bf16-mixed", id="gpu-bf16-mixed", marks=ON_GPU))


@pytest.mark.parametrize("accelerator, precision", CASES)
@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_objective_trains_in_bf16(compose, fast_overrides, name, accelerator,
                                        precision, tmp_path):
    from prefopt.kernels import triton_unavailable_reason
    from prefopt.training.train import train

    if accelerator == "gpu":
        assert triton_unavailable_reason(torch.device("cuda")) is None  # so auto is Triton
    cfg = compose(f"objective={name}", *fast_overrides, f"trainer.accelerator={accelerator}",
                  f"trainer.precision={precision}")
    result = train(cfg)
    online = issubclass(registry.load(name), OnlineObjective)
    assert math.isfinite(result["end"]["val/reward/mean" if online else "val/loss"])
    assert (tmp_path / "run" / "policy" / "config.json").exists()


@pytest.mark.parametrize("name", ["dpo", "ppo"])
def test_fused_adamw_with_clipping_under_bf16_mixed(compose, fast_overrides, name):
    """What a GPU run does by default (fused AdamW, bf16-mixed, clipping at 1.0), forced on
    the CPU: Lightning alone refuses to clip for a fused optimizer under mixed precision."""
    from prefopt.training.train import train

    cfg = compose(f"objective={name}", *fast_overrides, "trainer.accelerator=cpu",
                  "trainer.precision=bf16-mixed", "optimizer.fused=true",
                  "trainer.gradient_clip_val=1.0")
    result = train(cfg)
    online = issubclass(registry.load(name), OnlineObjective)
    assert math.isfinite(result["end"]["val/reward/mean" if online else "val/loss"])

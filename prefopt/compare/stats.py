"""Means over seeds and their 95% confidence intervals.

A comparison trains each (objective, setting) with a few seeds, so n is small (2 to 5):
the normal quantile 1.96 would make the intervals too narrow. The interval is Student's t:

    mean ± t_{0.975, n-1} · s / √n,    s² = Σ (x_i − mean)² / (n − 1)

which assumes the seeds' results are independent draws from a normal distribution; it
says how much the result moves with the seed (data order and initialisation), not how far
it is from the result with infinitely many samples of one trained policy. With one seed
there is no interval (None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# t_{0.975, df}: the two-sided 95% quantiles of Student's t, df = 1..30 (any statistics
# table); beyond 30 the normal quantile is within 2% of them.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.960


def t975(df: int) -> float:
    """Two-sided 95% quantile of Student's t with `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"Student's t needs df >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else _Z975


def mean_ci(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95% t interval) of `values`; half-width None for one
    value. NaN values are not dropped: a NaN makes both NaN, so it shows."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci of no values")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    variance = math.fsum((x - mean) ** 2 for x in values) / (n - 1)
    return mean, t975(n - 1) * math.sqrt(variance) / math.sqrt(n)

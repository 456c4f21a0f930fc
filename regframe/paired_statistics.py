"""Confidence interval of paired differences, as every benchmark table reports them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats


def paired_interval(differences: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided Student-t interval at ``level``.

    ``(mean, low, high)``; the bounds are NaN for fewer than two differences (no spread to estimate).
    """
    if not differences:
        raise ValueError("paired_interval: no differences")
    if not 0.0 < level < 1.0:
        raise ValueError(f"paired_interval: level must lie in (0, 1), got {level}")
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, math.nan, math.nan
    quantile = stats.t.ppf(0.5 + level / 2.0, len(differences) - 1)
    half = quantile * statistics.stdev(differences) / math.sqrt(len(differences))
    return mean, mean - half, mean + half

"""Confidence interval of paired differences, and the mean over defined values, as every benchmark table reports them."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

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


def finite_mean(values: Iterable[float | None]) -> float:
    """Mean of the values that are defined (not None, not NaN or infinite); NaN when none is (e.g. the
    Dice of pairs without a shared label)."""
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(kept) if kept else math.nan

import math

import pytest
from scipy.stats import ttest_1samp

from regframe.paired_statistics import finite_mean, paired_interval


def test_known_interval_of_three_differences():
    # mean 2, sd 1, t(0.975, 2) = 4.3027: half-width 4.3027 / sqrt(3) = 2.4841
    mean, low, high = paired_interval([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert low == pytest.approx(2.0 - 2.48414, abs=1e-4)
    assert high == pytest.approx(2.0 + 2.48414, abs=1e-4)


def test_agrees_with_scipys_one_sample_t_interval():
    differences = [0.3, -0.1, 0.25, 0.4, 0.05, 0.12, -0.02]
    reference = ttest_1samp(differences, 0.0).confidence_interval(0.9)
    _, low, high = paired_interval(differences, level=0.9)
    assert (low, high) == pytest.approx(tuple(reference))


def test_one_difference_has_no_interval_and_bad_input_raises():
    mean, low, high = paired_interval([0.5])
    assert mean == 0.5 and math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="no differences"):
        paired_interval([])
    with pytest.raises(ValueError, match="level"):
        paired_interval([1.0, 2.0], level=95)


def test_finite_mean_skips_undefined_values():
    assert finite_mean([0.5, math.nan, None, 0.7, math.inf]) == pytest.approx(0.6)
    assert math.isnan(finite_mean([None, math.nan]))

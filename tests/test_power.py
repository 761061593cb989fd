"""The power analysis: each sample size gives the power it promises, checked by simulating the tests it
stands for (Mann–Whitney AUCs with DeLong's sd)."""

import numpy as np
import pytest
import scipy.stats

from ppt_core.uncertainty import power


def test_required_sample_size_gives_the_power_it_promises():
    auc = 0.7
    n = power.required_sample_size(auc)
    shift = np.sqrt(2) * scipy.stats.norm.ppf(auc)  # binormal scores with this AUC

    def simulated(n_each, reps=2000):
        rng = np.random.default_rng(0)
        members, nonmembers = rng.normal(shift, 1, (reps, n_each)), rng.normal(0, 1, (reps, n_each))
        p = scipy.stats.mannwhitneyu(members, nonmembers, alternative="greater", axis=1).pvalue
        return float(np.mean(p < 0.05))

    assert 0.72 <= simulated(n) <= 0.88
    assert simulated(max(n // 2, 2)) < 0.7
    assert power.required_sample_size(0.6) > n > power.required_sample_size(0.9)
    assert power.required_sample_size(0.5) == np.inf and power.required_sample_size(0.4) == np.inf
    with pytest.raises(ValueError, match="power"):
        power.required_sample_size(0.7, power=1.5)


def test_null_support_sample_size_gives_the_power_it_promises():
    """An arm that leaks nothing: how often does the upper end of its 95% ΔAUC interval (AUC + 1.96 sd, the sd
    estimated from the draw as DeLong's) fall at or below 0.05? ~80% at the size the function gives, ~40% at 200."""
    margin = power.MINIMAL_AUC_EFFECT
    n = power.null_support_sample_size(margin)

    def supported(n_each, reps=400):
        rng = np.random.default_rng(1)
        members, nonmembers = rng.normal(0, 1, (reps, n_each)), rng.normal(0, 1, (reps, n_each))
        ranks = scipy.stats.rankdata(np.c_[members, nonmembers], axis=1)
        above = (ranks[:, :n_each] - scipy.stats.rankdata(members, axis=1)) / n_each  # non-members below each member
        below = 1 - (ranks[:, n_each:] - scipy.stats.rankdata(nonmembers, axis=1)) / n_each
        auc = above.mean(axis=1)
        sd = np.sqrt(above.var(axis=1, ddof=1) / n_each + below.var(axis=1, ddof=1) / n_each)
        return float(np.mean(auc - 0.5 + scipy.stats.norm.ppf(0.975) * sd <= margin))

    assert n == 524
    assert 0.75 <= supported(n) <= 0.86
    assert 0.3 <= supported(200) <= 0.5
    # The chance it states beside each ΔAUC is the simulated one, at the quick profile's 50 a side too
    for n_each in (50, 200, n):
        assert power.null_exclusion_power(n_each, margin) == pytest.approx(supported(n_each), abs=0.05)
    assert power.null_exclusion_power(n - 1, margin) < 0.8 <= power.null_exclusion_power(n, margin)
    assert power.null_support_sample_size(0.1) < n < power.null_support_sample_size(0.02)
    with pytest.raises(ValueError, match="margin"):
        power.null_support_sample_size(0.0)


def test_a_difference_of_means_is_detected_as_often_as_promised():
    """At the records a side `difference_sample_size` gives, the two-sample t test (scipy's noncentral t) detects
    the difference with about 80% power; `detectable_difference` is its inverse; nothing detects a difference
    that is not above 0."""
    sd_members, sd_heldout, difference = 0.12, 0.08, 0.05
    n = power.difference_sample_size(difference, sd_members, sd_heldout)
    assert power.detectable_difference(sd_members, sd_heldout, n) <= difference
    assert power.detectable_difference(sd_members, sd_heldout, n - 1) > difference

    def t_test_power(n_each):
        se = np.sqrt((sd_members**2 + sd_heldout**2) / n_each)
        df = 2 * n_each - 2
        critical = scipy.stats.t.ppf(0.975, df)
        return float(scipy.stats.nct.sf(critical, df, difference / se) + scipy.stats.nct.cdf(-critical, df,
                                                                                            difference / se))

    assert t_test_power(n) == pytest.approx(0.8, abs=0.02) and t_test_power(n - 1) < 0.8 + 0.01
    assert power.difference_sample_size(0.0, 0.1, 0.1) == power.difference_sample_size(-0.1, 0.1, 0.1) == np.inf
    with pytest.raises(ValueError, match="n must be"):
        power.detectable_difference(0.1, 0.1, 0)

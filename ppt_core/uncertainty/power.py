"""How many records a membership test needs, and what a run of a given size can show: the power analysis
beside every membership number of the study (ppt_core.study.verdicts' leak table, notebook 06's tables, results.md).

Under the null (an arm that leaks nothing), the AUC over n members and n non-members has the Mann–Whitney sd
sqrt((2n+1)/(12 n²)); under an effect, Hanley & McNeil's (1982). From them: the members a test needs to detect
an AUC (`required_sample_size`), the chance that an arm leaking nothing reads "no leak above a margin"
(`null_exclusion_power`), and the members at which that chance reaches a power (`null_support_sample_size`).
For a difference of means (the extraction attack's BERTScore and perplexity, members − held-out): the smallest
difference a run detects (`detectable_difference`) and the records a side a difference needs
(`difference_sample_size`).
"""

from __future__ import annotations

import math

import scipy.stats

MINIMAL_AUC_EFFECT = 0.05  # the smallest membership ΔAUC worth calling a leak (AUC 0.55: a weak attack)


def _smallest_n(holds) -> int:
    """The smallest n >= 1 for which holds(n), for a condition that, once true, stays true as n grows."""
    high = 1
    while not holds(high):
        high *= 2
    low = high // 2  # holds(low) is False (or low == 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if holds(middle) else (middle, high)
    return high


def _null_sd(n: int) -> float:
    """The sd of an AUC over n members and n non-members whose scores are alike (Mann–Whitney's null)."""
    return math.sqrt((2 * n + 1) / (12 * n * n))


def _check_levels(alpha: float, power: float) -> None:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1) (got alpha={alpha}, power={power})")


def required_sample_size(auc: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Members (= non-members) a one-sided test of AUC > 0.5 at level `alpha` needs to detect `auc` with
    `power`: the smallest n with z_(1-α)·sd0(n) + z_power·sd1(n) <= auc - 0.5, where sd0 is the Mann–Whitney
    null sd, sqrt((2n+1)/(12 n²)), and sd1 Hanley & McNeil's (1982) sd at `auc`. inf when auc <= 0.5."""
    _check_levels(alpha, power)
    if not 0 <= auc <= 1:
        raise ValueError(f"auc must lie in [0, 1] (got {auc})")
    if auc <= 0.5:
        return math.inf
    z_alpha, z_power = scipy.stats.norm.ppf(1 - alpha), scipy.stats.norm.ppf(power)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)

    def detects(n: int) -> bool:
        alt_var = (auc * (1 - auc) + (n - 1) * (q1 - auc**2) + (n - 1) * (q2 - auc**2)) / (n * n)
        return z_alpha * _null_sd(n) + z_power * math.sqrt(max(alt_var, 0.0)) <= auc - 0.5

    return _smallest_n(detects)


def null_exclusion_power(n: int, margin: float = MINIMAL_AUC_EFFECT, alpha: float = 0.05) -> float:
    """The chance that an arm which leaks nothing (true ΔAUC 0), attacked on n members and n non-members, reads
    "no leak above `margin`": the upper end of its two-sided (1 - alpha) ΔAUC interval at or below `margin`,
    Φ(margin / sd0(n) − z_(1-α/2)), sd0 the Mann–Whitney null sd. About 14% at 50 per side, 40% at 200: at such
    sizes an arm's interval reaching past the margin says nothing against its privacy."""
    _check_levels(alpha, 0.5)
    if margin <= 0 or n < 1:
        raise ValueError(f"margin must be > 0 and n >= 1 (got margin={margin}, n={n})")
    return float(scipy.stats.norm.cdf(margin / _null_sd(n) - scipy.stats.norm.ppf(1 - alpha / 2)))


def null_support_sample_size(margin: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Members (= non-members) an *absolute* "no leak above `margin`" claim needs: the smallest n at which an
    arm that leaks nothing reads it with probability `power` (null_exclusion_power). 524 for margin 0.05; at
    200 per side such a claim holds only about 40% of the time when it is true."""
    _check_levels(alpha, power)
    if margin <= 0:
        raise ValueError(f"margin must be > 0 (got {margin})")
    return _smallest_n(lambda n: null_exclusion_power(n, margin, alpha) >= power)


# --- a difference of means (the extraction attack's members − held-out) ------------------------------------------

def detectable_difference(sd_members: float, sd_heldout: float, n: int, alpha: float = 0.05,
                          power: float = 0.8) -> float:
    """The smallest true members − held-out difference of means that n records a side detect with `power` (the
    two-sided (1 - alpha) interval excludes 0): (z_(1-α/2) + z_power)·sqrt((s₁² + s₂²) / n), the normal
    approximation of the two-sample t test."""
    _check_levels(alpha, power)
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    z = scipy.stats.norm.ppf(1 - alpha / 2) + scipy.stats.norm.ppf(power)
    return float(z * math.sqrt((sd_members**2 + sd_heldout**2) / n))


def difference_sample_size(difference: float, sd_members: float, sd_heldout: float, alpha: float = 0.05,
                           power: float = 0.8) -> float:
    """Records a side at which a true members − held-out difference of means `difference` is detected with
    `power` (the inverse of `detectable_difference`); inf when it is not above 0 (nothing to detect)."""
    _check_levels(alpha, power)
    if difference <= 0:
        return math.inf
    return _smallest_n(lambda n: detectable_difference(sd_members, sd_heldout, n, alpha, power) <= difference)

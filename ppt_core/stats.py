"""Uncertainty: percentile bootstrap intervals over records for every headline number."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def bootstrap_interval(statistic: Callable[..., float], groups: Sequence[np.ndarray], *, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(*groups), each group resampled with replacement
    on its own (e.g. members and non-members separately). Rows of a 2-D group stay together."""
    rng = np.random.default_rng(seed)
    groups = [np.asarray(g) for g in groups]
    values = []
    for _ in range(n_boot):
        values.append(statistic(*(g[rng.integers(0, len(g), len(g))] for g in groups)))
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def estimate(statistic: Callable[..., float], groups: Sequence[np.ndarray], *, n_boot: int = 1000,
             seed: int = 0) -> dict:
    """{"value", "low", "high"}: the statistic on the data and its 95% bootstrap interval."""
    value = statistic(*(np.asarray(g) for g in groups))
    low, high = bootstrap_interval(statistic, groups, n_boot=n_boot, seed=seed)
    return {"value": float(value), "low": low, "high": high}


def clopper_pearson(successes: int, trials: int, *, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval of a binomial proportion: 0 of 16 gives [0, 0.206]."""
    import scipy.stats

    if trials < 1:
        raise ValueError(f"a proportion needs at least one trial (got {trials})")
    alpha = 1 - level
    low = 0.0 if successes == 0 else float(scipy.stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(scipy.stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high

"""Uncertainty: bootstrap intervals over records for every headline number, paired intervals for
every comparison, and exact intervals for proportions.

- `estimate` resamples each group on its own (members and non-members separately): one number's interval.
- `paired_estimate` resamples the *same* records for every arm compared, so what the records have in
  common (a hard note is hard for every model) cancels, and only the difference between arms varies.
  Over seeds too: records are labelled by the run (seed) they come from, and a run-level resample
  comes first (a two-stage bootstrap), so a claim resting on several seeds carries their spread.
- `within_runs`: a statistic that only means something inside one run (an AUC: scores of different
  seeds' models are not comparable) computed per run and averaged, for the paired bootstrap over seeds.
- `clopper_pearson`: the exact binomial interval, which never collapses to a point at 0 or n hits.
- `mean_interval`: a Student-t interval for a handful of repeated measurements (timing rounds, one
  number per seed), where a percentile bootstrap of 3 numbers would cover far less than it claims.
- `perplexity_of_rows`: the statistic every perplexity interval resamples, from per-record rows.
- `format_interval`: how an estimate reads in a table or a verdict, "v [low, high]".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import scipy.stats


def bootstrap_interval(statistic: Callable[..., float], groups: Sequence[np.ndarray], *, n_boot: int = 1000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(*groups), each group resampled with replacement
    on its own (e.g. members and non-members separately). Rows of a 2-D group stay together."""
    rng = np.random.default_rng(seed)
    groups = [np.asarray(g) for g in groups]
    values = []
    for _ in range(n_boot):
        values.append(statistic(*(g[rng.integers(0, len(g), len(g))] for g in groups)))
    return _percentiles(values, level)


def estimate(statistic: Callable[..., float], groups: Sequence[np.ndarray], *, n_boot: int = 1000,
             seed: int = 0) -> dict:
    """{"value", "low", "high"}: the statistic on the data and its 95% bootstrap interval."""
    value = statistic(*(np.asarray(g) for g in groups))
    low, high = bootstrap_interval(statistic, groups, n_boot=n_boot, seed=seed)
    return {"value": float(value), "low": low, "high": high}


def _percentiles(values, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(np.asarray(values, dtype=float), [tail, 100 - tail])
    return float(low), float(high)


def paired_indices(rng: np.random.Generator, n: int, *, strata: np.ndarray | None = None,
                   runs: np.ndarray | None = None) -> np.ndarray:
    """One paired resample of record indices 0..n-1: runs drawn with replacement first (when there are
    several), then records with replacement within each drawn run and stratum, each keeping its size."""
    strata = np.zeros(n, dtype=int) if strata is None else np.asarray(strata)
    runs = np.zeros(n, dtype=int) if runs is None else np.asarray(runs)
    if len(strata) != n or len(runs) != n:
        raise ValueError(f"strata and runs must label every one of the {n} records "
                         f"(got {len(strata)} and {len(runs)} labels)")
    run_ids = np.unique(runs)
    drawn = rng.choice(run_ids, len(run_ids), replace=True) if len(run_ids) > 1 else run_ids
    chosen = []
    for run in drawn:
        for stratum in np.unique(strata[runs == run]):
            pool = np.flatnonzero((runs == run) & (strata == stratum))
            chosen.append(pool[rng.integers(0, len(pool), len(pool))])
    return np.concatenate(chosen)


def paired_estimate(statistic: Callable[..., float], samples: Sequence[np.ndarray], *,
                    strata: np.ndarray | None = None, runs: np.ndarray | None = None, n_boot: int = 1000,
                    seed: int = 0, level: float = 0.95) -> dict:
    """{"value", "low", "high", "seeds"}: statistic(*samples) and its paired percentile bootstrap interval.

    Every sample is indexed by the same records along its first axis (e.g. one arm's per-record rows
    each); one shared draw of records resamples them all (see paired_indices: within `strata`, e.g.
    members and non-members, and after a draw of `runs`, the seed each record's measurement comes from).
    "seeds" is the number of runs the interval rests on.

    Over a few runs a percentile bootstrap cannot reach past the runs' own range: with three seeds whose spread
    is three times the within-seed error it covers about 82% of the time, not 95%. So with several runs the
    interval is the union of the two-stage bootstrap's and a Student-t interval (n_runs - 1 degrees of freedom)
    over the statistic computed on each run alone (tests/test_stats.py simulates the coverage of both).
    """
    samples = [np.asarray(s) for s in samples]
    n = len(samples[0])
    if n == 0 or any(len(s) != n for s in samples):
        raise ValueError(f"paired samples must hold the same records, at least one (got lengths "
                         f"{[len(s) for s in samples]})")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        index = paired_indices(rng, n, strata=strata, runs=runs)
        values.append(statistic(*(s[index] for s in samples)))
    low, high = _percentiles(values, level)
    run_ids = np.unique(runs) if runs is not None else np.zeros(1)
    if len(run_ids) > 1:
        per_run = [statistic(*(s[np.asarray(runs) == run] for s in samples)) for run in run_ids]
        over_runs = mean_interval(per_run, level)
        low, high = min(low, over_runs["low"]), max(high, over_runs["high"])
    return {"value": float(statistic(*samples)), "low": low, "high": high, "seeds": len(run_ids)}


def within_runs(statistic: Callable[..., float]) -> Callable[..., float]:
    """statistic(runs, *samples): `statistic` on each run's records alone, averaged over the runs weighted by
    their records (a run the two-stage bootstrap drew twice weighs twice). Pass the run labels as the first
    paired sample, so they are resampled with the records."""
    def pooled(runs, *samples):
        runs = np.asarray(runs)
        labels, counts = np.unique(runs, return_counts=True)
        values = [statistic(*(s[runs == label] for s in samples)) for label in labels]
        return float(np.average(values, weights=counts))

    return pooled


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval of a binomial proportion: 0 of 16 gives [0, 0.206]."""
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1 (got {successes} of {trials})")
    alpha = 1 - level
    low = 0.0 if successes == 0 else scipy.stats.beta.ppf(alpha / 2, successes, trials - successes + 1)
    high = 1.0 if successes == trials else scipy.stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
    return float(low), float(high)


def proportion(successes: int, trials: int, level: float = 0.95) -> dict:
    """{"value", "low", "high", "successes", "trials"}: a share with its exact interval."""
    low, high = clopper_pearson(successes, trials, level)
    return {"value": successes / trials, "low": low, "high": high, "successes": int(successes), "trials": int(trials)}


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """{"value", "low", "high", "n"}: the mean of a few repeated measurements and its Student-t interval
    (low = high = NaN for fewer than two)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return {"value": mean, "low": float("nan"), "high": float("nan"), "n": len(values)}
    half = scipy.stats.t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return {"value": mean, "low": float(mean - half), "high": float(mean + half), "n": len(values)}


def perplexity_of_rows(rows: np.ndarray) -> float:
    """Token-weighted perplexity of per-record rows [summed log-probability (nats), scored tokens]
    (evaluation.record_logprob_rows): exp(-total log-probability / total tokens)."""
    return float(np.exp(-rows[:, 0].sum() / rows[:, 1].sum()))


def format_interval(estimate, digits: int = 3) -> str:
    """"v [low, high]" of a {"value", "low", "high"} (or a plain number); "–" for nothing."""
    if estimate is None:
        return "–"
    if not isinstance(estimate, Mapping):
        estimate = {"value": estimate}
    value, low, high = (estimate.get(k) for k in ("value", "low", "high"))
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    text = "∞" if np.isinf(value) else f"{value:.{digits}g}"
    if low is not None and high is not None and not (np.isnan(low) or np.isnan(high)):
        text += f" [{low:.{digits}g}, {high:.{digits}g}]"
    return text

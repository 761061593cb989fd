"""The study in one table: a row per arm, each headline number with its 95% interval.

Reads results.json (deterministic numbers) and timings.json (speed) of one run. Over several seeds
(`load_study`) the table is each seed's table pooled (`pooled_table`: perplexity on the log scale with
diverged seeds flagged, shares from the pooled counts, audit bounds as the smallest seed's, the rest a
Student-t interval over seeds), and the verdicts read the seeds' records pooled (pooling.pool_records).
The table's Markdown, results.md and the README's block are ppt_core.study.report's;
its figures are ppt_core.study.figures'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ppt_core.machine.timing import SPEED_BATCH
from ppt_core.run import arms, artifacts, record_files
from ppt_core.study import pooling, verdicts
from ppt_core.uncertainty import stats


def _get(tree, *keys, default=None):
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    return tree


def _interval(estimate) -> tuple[float, float, float]:
    """(value, low, high) of a stats estimate dict; a plain number has no interval, a missing one is NaN."""
    if isinstance(estimate, dict):
        return tuple(np.nan if estimate.get(k) is None else float(estimate[k]) for k in ("value", "low", "high"))
    return (np.nan if estimate is None else float(estimate)), np.nan, np.nan


def _canaries(arm_attacks: dict) -> dict:
    """Of the canaries inserted most often: their repetitions and number, how many gain more over the start on
    their secret than every reference canary, the rank test's p-value (verdicts.canary_rank_test), and their
    exposure interval in bits (lowest low to highest high; descriptive)."""
    canaries = _get(arm_attacks, "canaries", default={}) or {}
    inserted = [row for row in canaries.get("rows", []) if row["repetitions"] > 0]
    if not inserted:
        return {"canary_repetitions": np.nan, "canaries_highest": np.nan, "canaries_above_null": np.nan,
                "canary_p_value": np.nan, "exposure_highest_low": np.nan, "exposure_highest_high": np.nan}
    highest = max(row["repetitions"] for row in inserted)
    top = [row for row in inserted if row["repetitions"] == highest]
    test = verdicts.canary_rank_test(canaries)
    return {"canary_repetitions": highest, "canaries_highest": len(top),
            "canaries_above_null": _get(canaries, "by_repetitions", str(highest), "above_reference_band",
                                        default=np.nan),
            "canary_p_value": test["p_value"] if test else np.nan,
            "exposure_highest_low": min(row["exposure_low"] for row in top),
            "exposure_highest_high": max(row["exposure_high"] for row in top)}


def _canary_extraction(arm_attacks: dict) -> dict | None:
    """Of every inserted canary, the share whose secret greedy decoding from its prefix writes out verbatim
    (exact extraction, Carlini et al. 2019), with its exact interval; None for an arm without canaries. A
    secret is one of 10**secret_digits codes: a model that never saw it writes it by chance almost never."""
    rows = [row for row in (_get(arm_attacks, "canaries", "rows", default=None) or []) if row["repetitions"] > 0]
    if not rows or any(row.get("greedy_extracted") is None for row in rows):
        return None
    return stats.proportion(sum(bool(row["greedy_extracted"]) for row in rows), len(rows))


def summary_table(params: dict, results: dict, timings: dict) -> pd.DataFrame:
    """One row per arm: blocks kept, parameters (M), claimed ε (inf = non-private), held-out perplexity,
    prefill throughput (tokens/s) and speedup over base, membership AUC of the judged signal (calibrated by
    the start; loss for base and pruned-noft) and its ΔAUC vs the start, of the highest-repetition canaries
    how many gain more than every reference canary and the rank test's p-value (and their exposure in bits,
    descriptive), audit ε lower bounds (one run, f-DP), the share of members' extraction attempts reproducing
    the exact suffix, of synthetic records leaking training-only PII, and of inserted canaries whose secret
    greedy decoding writes out (exact intervals, and whether the twin shows the attack can fire:
    with_positive_controls); intervals in *_low / *_high."""
    base_speed = _get(timings, "utility", "base", SPEED_BATCH, "prefill_tokens_per_s")
    rows = []
    for arm in arms.arm_names(params):
        utility = _get(results, "utility", arm, default={})
        attacks = _get(results, "attacks", arm, default={}) or {}
        epsilon = _get(results, "training", arm, "epsilon")
        speed = _get(timings, "utility", arm, SPEED_BATCH, "prefill_tokens_per_s", default=np.nan)
        signal = verdicts.membership_signal(attacks)
        row = {
            "arm": arm,
            "blocks": _get(results, "pruning", "pruned_depth" if arms.parse(arm).pruned
                           else "original_depth", default=np.nan),
            "parameters_M": _get(utility, "parameters", default=np.nan) / 1e6,
            "epsilon": epsilon if epsilon is not None else np.inf,
            "prefill_tokens_per_s": speed,
            "speedup": speed / base_speed if base_speed else np.nan,
            "membership_signal": signal if attacks else None,
            **_canaries(attacks),
            "audit_epsilon_one_run": _get(attacks, "audit", "epsilon_lower_one_run", default=np.nan),
            "audit_epsilon_fdp": _get(attacks, "audit", "epsilon_lower_fdp", default=np.nan),
        }
        synthetic = _get(results, "synthetic", arm, default={}) or {}
        extraction = _get(attacks, "extraction", default={}) or {}
        for column, estimate in (
            ("perplexity", _get(utility, "heldout_perplexity")),
            ("membership_auc", _get(attacks, "membership", "signals", signal, "auc")),
            ("delta_auc", verdicts.membership_delta(attacks) if attacks else None),
            ("extraction_hits", _get(extraction, "exact_suffix_rate", "members")),
            ("synthetic_pii_leak", _get(synthetic, "pii_leak_share")),
            ("canary_extraction", _canary_extraction(attacks)),
        ):
            row[column], row[f"{column}_low"], row[f"{column}_high"] = _interval(estimate)
            if column in COUNTED_SHARES:  # the count behind the share: seeds pool hits and trials
                row[f"{column}_trials"] = estimate["trials"] if estimate else np.nan
        rows.append(row)
    return with_positive_controls(pd.DataFrame(rows).set_index("arm"))


def with_positive_controls(table: pd.DataFrame) -> pd.DataFrame:
    """The table with `<share>_positive_control` for each counted share (COUNTED_SHARES): True where the arm's
    non-private twin (itself, for a non-private arm), the arm that memorises, reads at least one hit, so the
    attack has shown it can fire; False where the twin reads none (a 0 on a DP arm is then no evidence of
    privacy); NaN for the untrained arms and where the share was not measured."""
    table = table.copy()
    for column in (c for c in COUNTED_SHARES if c in table.columns):
        controlled = []
        for arm in table.index:
            parsed = arms.parse(arm)
            twin = (parsed.twin or arm) if parsed.trained else None
            hits = table.loc[twin, column] if twin in table.index else np.nan
            controlled.append(np.nan if np.isnan(hits) or np.isnan(table.loc[arm, column]) else bool(hits > 0))
        table[f"{column}_positive_control"] = pd.Series(controlled, index=table.index, dtype=object)
    return table


# How each seed-varying number pools over seeds (pooled_table):
LOG_SCALE = ("perplexity",)  # geometric mean, Student-t interval on the log: a perplexity interval stays above 0
# Hits and trials summed, exact interval on the sums
COUNTED_SHARES = ("extraction_hits", "synthetic_pii_leak", "canary_extraction")
LOWER_BOUNDS = ("audit_epsilon_one_run", "audit_epsilon_fdp")  # the smallest of the seeds', each seed's listed
# What a quantity can be: a Student-t interval over a few seeds can cross it (an AUC of 0.99, 0.97 and 0.80 reads
# [0.69, 1.2]); the interval is cut to it, which keeps its coverage (the truth is inside the range).
RANGES = {"membership_auc": (0.0, 1.0), "delta_auc": (-1.0, 1.0)}
DIVERGED_FACTOR = 10.0  # a seed's perplexity above this many times the arm's median over seeds: diverged


def _log_scale_interval(values: np.ndarray) -> dict:
    """The geometric mean of positive values and the exp of a Student-t interval on their logs."""
    interval = stats.mean_interval(np.log(values))
    return {key: float(np.exp(interval[key])) for key in ("value", "low", "high")}


def _diverged(perplexities: pd.Series) -> list:
    """The seeds (index labels) whose perplexity is above DIVERGED_FACTOR times the arm's median over seeds."""
    measured = perplexities.dropna()
    if len(measured) < 3:  # a median of two is their mean: no seed can be told apart from the other
        return []
    return [seed for seed, value in measured.items() if value > DIVERGED_FACTOR * measured.median()]


def pooled_table(tables: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Several seeds' summary tables (one per seed, the same arms) as one row per arm:

    - perplexity: the geometric mean over the seeds with a Student-t 95% interval on log perplexity (i.e. on the
      mean log-loss per token), so the interval cannot reach below zero; a seed whose perplexity is above
      DIVERGED_FACTOR times the arm's median is diverged: left out and named in `diverged_seeds`, never averaged;
    - shares (COUNTED_SHARES): the seeds' hits and trials summed, with the exact (Clopper–Pearson) interval of
      the pooled count (0 of 24 is [0, 0.142], not "0 [0, 0]");
    - audit ε lower bounds (LOWER_BOUNDS): the smallest of the seeds' (the least of valid 95% lower bounds is
      one for every seed's model; a mean of lower bounds is not a lower bound), each seed's in `<column>_seeds`;
    - any other number with an interval per seed: the mean over seeds with a Student-t 95% interval
      (stats.mean_interval: honest for a handful of seeds, wide for two), cut to the quantity's RANGES (an AUC
      interval never passes 1); an interval without a value (canary
      exposure) the envelope of the seeds'; any other number the mean; a label the first seed's.
    Column `seeds`: how many seeds measured the arm's perplexity (diverged ones included).
    """
    frames = dict(tables)
    # Whether an attack fires on the twin is read from the pooled shares (with_positive_controls), not averaged
    columns = [c for c in next(iter(frames.values())).columns if not c.endswith("_positive_control")]
    added = ["diverged_seeds"] + [f"{c}_seeds" for c in LOWER_BOUNDS if c in columns]
    rows = []
    for arm in next(iter(frames.values())).index:
        per_seed = pd.DataFrame({seed: frame.loc[arm] for seed, frame in frames.items() if arm in frame.index}).T
        row = {"arm": arm, "diverged_seeds": ""}
        for column in columns:
            values = per_seed[column]
            numbers = pd.to_numeric(values, errors="coerce")
            if column.endswith(("_low", "_high", "_trials")) and column.rsplit("_", 1)[0] in columns:
                continue  # written with its value below
            if column in LOG_SCALE:
                diverged = _diverged(numbers)
                kept = numbers.drop(diverged).dropna().to_numpy(dtype=float)
                interval = _log_scale_interval(kept) if len(kept) else {"value": np.nan, "low": np.nan, "high": np.nan}
                row["diverged_seeds"] = ", ".join(f"{seed} ({numbers[seed]:.3g})" for seed in diverged)
            elif column in COUNTED_SHARES and f"{column}_trials" in columns:
                trials = pd.to_numeric(per_seed[f"{column}_trials"], errors="coerce")
                both = numbers.notna() & trials.notna() & (trials > 0)
                hits = int(np.round(numbers[both] * trials[both]).sum())
                interval = stats.proportion(hits, int(trials[both].sum())) if both.any() else {
                    "value": np.nan, "low": np.nan, "high": np.nan}
                row[f"{column}_trials"] = int(trials[both].sum()) if both.any() else np.nan
            elif column in LOWER_BOUNDS:
                row[column] = numbers.min()  # NaN only where no seed has a bound
                row[f"{column}_seeds"] = ", ".join("–" if np.isnan(v) else f"{v:.3g}" for v in numbers)
                continue
            elif f"{column}_low" in columns:
                interval = stats.mean_interval(numbers.dropna().to_numpy(dtype=float))
                if column in RANGES:
                    lowest, highest = RANGES[column]
                    interval = dict(interval, low=max(interval["low"], lowest), high=min(interval["high"], highest))
            elif column.endswith("_low"):
                row[column] = numbers.min()
                continue
            elif column.endswith("_high"):
                row[column] = numbers.max()
                continue
            elif numbers.notna().any() or values.isna().all():
                row[column] = numbers.mean()
                continue
            else:
                row[column] = values.iloc[0]
                continue
            row[column], row[f"{column}_low"], row[f"{column}_high"] = (
                interval["value"], interval["low"], interval["high"])
        row["seeds"] = int(pd.to_numeric(per_seed["perplexity"], errors="coerce").notna().sum())
        rows.append(row)
    return with_positive_controls(pd.DataFrame(rows).set_index("arm")[columns + added + ["seeds"]])


@dataclasses.dataclass
class Study:
    """What notebook 07 reads: the arms' table, and the results, timings and per-record arrays the verdicts
    read (one run's own, or several seeds' pooled), the seeds, and each notebook's wall time (summed over
    seeds)."""

    table: pd.DataFrame
    results: dict
    timings: dict
    records: dict
    seeds: list[int]
    notebook_seconds: dict
    seed_tables: dict = dataclasses.field(default_factory=dict)  # each seed's own table, with several seeds
    seed_results: dict = dataclasses.field(default_factory=dict)  # each seed's own results.json (one seed: the run's)


def load_study(params: dict) -> Study:
    """The run's study: with one seed, this run's files as they are; with several, each seed's run
    (runs/<run>/seed-<s>/) pooled: the table by pooled_table, the records, attacks and timings by
    pooling.pool_records, pool_attacks and pool_timings."""
    runs = artifacts.seed_runs(params)
    results = {seed: artifacts.read_results(paths) for seed, paths in runs.items()}
    timings = {seed: artifacts.read_timings(paths) for seed, paths in runs.items()}
    records = {seed: record_files.load_records(paths) for seed, paths in runs.items()}
    seeds = list(runs)
    if len(seeds) == 1:
        seed = seeds[0]
        return Study(summary_table(params, results[seed], timings[seed]), results[seed], timings[seed],
                     records[seed], seeds, timings[seed].get("notebooks", {}), seed_results=results)
    missing = [str(paths.results) for paths in runs.values() if not paths.results.exists()]
    if missing:
        raise FileNotFoundError(f"no results for seed run(s) {', '.join(missing)}: run notebooks 00-06 for "
                                "every seed first (python run_all.py --seeds ...)")
    pooled_records = pooling.pool_records(records)
    pooled_results = {
        "attacks": pooling.pool_attacks({s: r.get("attacks") or {} for s, r in results.items()},
                                         pooled_records["attacks"], n_boot=params["n_bootstrap"], seed=params["seed"]),
        "group_privacy": _largest(*(r.get("group_privacy") for r in results.values())),
        "implementation_audit": _by_seed({s: r.get("implementation_audit") for s, r in results.items()}),
    }
    seconds: dict = {}
    for timing in [*timings.values(), artifacts.read_timings(artifacts.run_paths(params))]:
        for notebook, value in timing.get("notebooks", {}).items():
            seconds[notebook] = seconds.get(notebook, 0.0) + value
    seed_tables = {seed: summary_table(params, results[seed], timings[seed]) for seed in seeds}
    table = with_pooled_rank_tests(pooled_table(seed_tables), pooled_results["attacks"])
    return Study(table, pooled_results, pooling.pool_timings(timings), pooled_records, seeds,
                 seconds, seed_tables, results)


def with_pooled_rank_tests(table: pd.DataFrame, pooled_attacks: Mapping) -> pd.DataFrame:
    """The pooled table with each arm's canary p-value from one rank test on every seed's canaries together
    (pooling.pool_attacks' rows, verdicts.canary_rank_test), the test the verdicts read: a mean of the seeds'
    p-values is no p-value."""
    table = table.copy()
    for arm in table.index:
        test = verdicts.canary_rank_test(_get(pooled_attacks, arm, "canaries"))
        table.loc[arm, "canary_p_value"] = test["p_value"] if test else np.nan
    return table


def _by_seed(audits: dict) -> dict | None:
    """The seeds' implementation audits as one record: each arm and control once per seed, named with it."""
    merged: dict = {}
    for seed, audit in audits.items():
        for arm, record in (audit or {}).items():
            if arm == "controls":
                merged.setdefault("controls", {}).update({f"{row} (seed {seed})": r for row, r in record.items()})
            else:
                merged[f"{arm} (seed {seed})"] = record
    return merged or None


def _largest(*tables):
    """Element-wise the largest number of equally shaped nested dicts (the text of the first): the seeds'
    group-privacy ε (each an upper bound, and N differs by seed) as one upper bound for all."""
    tables = [t for t in tables if t]
    if not tables:
        return None
    if isinstance(tables[0], dict):
        return {key: _largest(*(t.get(key) for t in tables)) for key in tables[0]}
    numbers = [t for t in tables if isinstance(t, (int, float))]
    return max(numbers) if len(numbers) == len(tables) else tables[0]


TIMING_COLUMNS = ["prefill_tokens_per_s", "speedup"]  # wall-clock: kept out of results.json


def results_record(table: pd.DataFrame, claims: list[verdicts.Verdict], seeds: list[int]) -> dict:
    """results.json["summary"]: the table's deterministic rows and the claims (and the seeds, when several)."""
    record = {"table": deterministic_rows(table), "claims": verdicts.claim_records(claims)}
    return dict(record, seeds=list(seeds)) if len(seeds) > 1 else record


def deterministic_rows(table: pd.DataFrame) -> list[dict]:
    """The table without its wall-clock columns, as records for results.json (floats rounded, NaN/inf -> null)."""
    return artifacts.rounded(table.drop(columns=TIMING_COLUMNS).reset_index().to_dict(orient="records"))

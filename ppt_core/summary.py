"""The study in one table: a row per arm, each headline number with its 95% interval.

Reads results.json (deterministic numbers) and timings.json (speed) of one run. Over several seeds
(`load_study`) the table is each seed's table pooled: per arm the mean over seeds with a Student-t 95%
interval over seeds (`pooled_table`), and the verdicts read the seeds' records pooled
(pooling.pool_records). The table's Markdown, results.md and the README's block are ppt_core.report's;
its figures are ppt_core.figures'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pandas as pd

from ppt_core import arms, artifacts, pooling, record_files, stats, verdicts
from ppt_core.timing import SPEED_BATCH


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


def _share(value, trials) -> dict | None:
    """A rounded share of `trials` back to its count of hits, with the exact (Clopper–Pearson) interval."""
    if value is None or not trials:
        return None
    return stats.proportion(int(round(value * trials)), int(trials))


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


def summary_table(params: dict, results: dict, timings: dict) -> pd.DataFrame:
    """One row per arm: blocks kept, parameters (M), claimed ε (inf = non-private), held-out perplexity,
    prefill throughput (tokens/s) and speedup over base, membership AUC of the judged signal (calibrated by
    the start; loss for base and pruned-noft) and its ΔAUC vs the start, of the highest-repetition canaries
    how many gain more than every reference canary and the rank test's p-value (and their exposure in bits,
    descriptive), audit ε lower bounds (one run, f-DP), the share
    of members' extraction attempts reproducing the exact suffix, and of synthetic records leaking
    training-only PII (exact intervals); intervals in *_low / *_high."""
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
            ("extraction_hits", _share(_get(extraction, "exact_suffix_rate", "members"),
                                       _get(extraction, "records", "members"))),
            ("synthetic_pii_leak", _share(_get(synthetic, "pii_leak_share", "value"), synthetic.get("records"))),
        ):
            row[column], row[f"{column}_low"], row[f"{column}_high"] = _interval(estimate)
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")


def pooled_table(tables: Mapping[int, pd.DataFrame]) -> pd.DataFrame:
    """Several seeds' summary tables (one per seed, the same arms) as one: per arm, every number that has an
    interval per seed (X with X_low, X_high) becomes the mean over seeds with a Student-t 95% interval over
    seeds (stats.mean_interval: honest for a handful of seeds, wide for two); an interval without a value
    (canary exposure) the envelope of the seeds'; any other number the mean; a label the
    first seed's. Column `seeds`: how many seeds measured the arm's perplexity."""
    frames = list(tables.values())
    columns = list(frames[0].columns)
    rows = []
    for arm in frames[0].index:
        per_seed = pd.DataFrame([frame.loc[arm] for frame in frames if arm in frame.index])
        row = {"arm": arm}
        for column in columns:
            values = per_seed[column]
            if column.endswith(("_low", "_high")) and column.rsplit("_", 1)[0] in columns:
                continue  # written with its value below
            if f"{column}_low" in columns:
                measured = pd.to_numeric(values, errors="coerce").dropna()
                interval = stats.mean_interval(measured.to_numpy(dtype=float))
                row[column], row[f"{column}_low"], row[f"{column}_high"] = (
                    interval["value"], interval["low"], interval["high"])
            elif column.endswith("_low"):
                row[column] = pd.to_numeric(values, errors="coerce").min()
            elif column.endswith("_high"):
                row[column] = pd.to_numeric(values, errors="coerce").max()
            elif pd.to_numeric(values, errors="coerce").notna().any() or values.isna().all():
                row[column] = pd.to_numeric(values, errors="coerce").mean()
            else:
                row[column] = values.iloc[0]
        row["seeds"] = int(pd.to_numeric(per_seed["perplexity"], errors="coerce").notna().sum())
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")[columns + ["seeds"]]


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
                     records[seed], seeds, timings[seed].get("notebooks", {}))
    missing = [str(paths.results) for paths in runs.values() if not paths.results.exists()]
    if missing:
        raise FileNotFoundError(f"no results for seed run(s) {', '.join(missing)}: run notebooks 00-06 for "
                                "every seed first (python run_all.py --seeds ...)")
    pooled_records = pooling.pool_records(records)
    pooled_results = {
        "attacks": pooling.pool_attacks({s: r.get("attacks") or {} for s, r in results.items()},
                                         pooled_records["attacks"], n_boot=params["n_bootstrap"], seed=params["seed"]),
        "group_privacy": _largest(*(r.get("group_privacy") for r in results.values())),
    }
    seconds: dict = {}
    for timing in [*timings.values(), artifacts.read_timings(artifacts.run_paths(params))]:
        for notebook, value in timing.get("notebooks", {}).items():
            seconds[notebook] = seconds.get(notebook, 0.0) + value
    table = pooled_table({seed: summary_table(params, results[seed], timings[seed]) for seed in seeds})
    return Study(table, pooled_results, pooling.pool_timings(timings), pooled_records, seeds, seconds)


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

"""The study in one table: a row per arm, each headline number with its 95% interval, and the
paper's claims with the verdicts of ppt_core.verdicts (the only place a claim is decided).

Reads results.json (deterministic numbers) and timings.json (speed) of one run; results.md carries the
claims table of verdicts.paper_claims beside the arms' table. Over several seeds (`load_study`) the table
is each seed's table pooled: per arm the mean over seeds with a Student-t 95% interval over seeds
(`pooled_table`), and the verdicts read the seeds' records pooled (verdicts.pool_records).
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ppt_core import arms, artifacts, profiles, stats, verdicts
from ppt_core.verdicts import SPEED_BATCH


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
    """Exposure interval (bits) of the highest-repetition canaries (lowest low to highest high), their
    repetitions, and the reference band."""
    canaries = _get(arm_attacks, "canaries", default={}) or {}
    inserted = [row for row in canaries.get("rows", []) if row["repetitions"] > 0]
    band = canaries.get("reference_band") or [np.nan, np.nan]
    if not inserted:
        return {"exposure_highest_low": np.nan, "exposure_highest_high": np.nan, "canary_repetitions": np.nan,
                "reference_band_low": band[0], "reference_band_high": band[1]}
    highest = max(row["repetitions"] for row in inserted)
    top = [row for row in inserted if row["repetitions"] == highest]
    return {"exposure_highest_low": min(row["exposure_low"] for row in top),
            "exposure_highest_high": max(row["exposure_high"] for row in top), "canary_repetitions": highest,
            "reference_band_low": band[0], "reference_band_high": band[1]}


def summary_table(params: dict, results: dict, timings: dict) -> pd.DataFrame:
    """One row per arm: blocks kept, parameters (M), claimed ε (inf = non-private), held-out perplexity,
    prefill throughput (tokens/s) and speedup over base, membership AUC of the judged signal (calibrated by
    the start; loss for base and pruned-noft) and its ΔAUC vs the start, exposure (bits) of the
    highest-repetition canaries against the reference band, audit ε lower bounds (one run, f-DP), the share
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
    (canary exposure, reference band) the envelope of the seeds'; any other number the mean; a label the
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
    verdicts.pool_records, pool_attacks and pool_timings."""
    runs = artifacts.seed_runs(params)
    results = {seed: artifacts.read_results(paths) for seed, paths in runs.items()}
    timings = {seed: artifacts.read_timings(paths) for seed, paths in runs.items()}
    records = {seed: verdicts.load_records(paths) for seed, paths in runs.items()}
    seeds = list(runs)
    if len(seeds) == 1:
        seed = seeds[0]
        return Study(summary_table(params, results[seed], timings[seed]), results[seed], timings[seed],
                     records[seed], seeds, timings[seed].get("notebooks", {}))
    missing = [str(paths.results) for paths in runs.values() if not paths.results.exists()]
    if missing:
        raise FileNotFoundError(f"no results for seed run(s) {', '.join(missing)}: run notebooks 00-06 for "
                                "every seed first (python run_all.py --seeds ...)")
    pooled_records = verdicts.pool_records(records)
    pooled_results = {
        "attacks": verdicts.pool_attacks({s: r.get("attacks") or {} for s, r in results.items()},
                                         pooled_records["attacks"], n_boot=params["n_bootstrap"], seed=params["seed"]),
        "group_privacy": _largest(*(r.get("group_privacy") for r in results.values())),
    }
    seconds: dict = {}
    for timing in [*timings.values(), artifacts.read_timings(artifacts.run_paths(params))]:
        for notebook, value in timing.get("notebooks", {}).items():
            seconds[notebook] = seconds.get(notebook, 0.0) + value
    table = pooled_table({seed: summary_table(params, results[seed], timings[seed]) for seed in seeds})
    return Study(table, pooled_results, verdicts.pool_timings(timings), pooled_records, seeds, seconds)


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


def _fmt(value, low=np.nan, high=np.nan, digits=3) -> str:
    return verdicts.format_interval({"value": value, "low": low, "high": high}, digits)


def _exposure(r) -> str:
    if np.isnan(r.exposure_highest_low):
        return "–"
    low, high = r.exposure_highest_low, r.exposure_highest_high
    value = f"{low:.3g}" if low == high else f"[{low:.3g}, {high:.3g}]"
    return f"{value} at {int(r.canary_repetitions)}× ([{r.reference_band_low:.3g}, {r.reference_band_high:.3g}])"


def markdown_table(table: pd.DataFrame) -> str:
    """The summary table as Markdown, intervals in brackets (95%: bootstrap over records, exact for shares)."""
    header = ("| arm | blocks | params (M) | ε | held-out perplexity | prefill tok/s (speedup) | membership AUC "
              "| ΔAUC vs start | canary exposure, highest reps (reference band) | audit ε ≥ (one run / f-DP) "
              "| extraction exact-suffix hits | synthetic PII leak |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for arm, r in table.iterrows():
        auc = _fmt(r.membership_auc, r.membership_auc_low, r.membership_auc_high, 2)
        lines.append("| " + " | ".join([
            f"`{arm}`", _fmt(r.blocks), _fmt(r.parameters_M), _fmt(r.epsilon),
            _fmt(r.perplexity, r.perplexity_low, r.perplexity_high),
            f"{_fmt(r.prefill_tokens_per_s, digits=4)} ({_fmt(r.speedup)}×)",
            f"{auc} ({r.membership_signal})" if r.membership_signal else auc,
            _fmt(r.delta_auc, r.delta_auc_low, r.delta_auc_high, 2),
            _exposure(r),
            f"{_fmt(r.audit_epsilon_one_run)} / {_fmt(r.audit_epsilon_fdp)}",
            _fmt(r.extraction_hits, r.extraction_hits_low, r.extraction_hits_high, 2),
            _fmt(r.synthetic_pii_leak, r.synthetic_pii_leak_low, r.synthetic_pii_leak_high, 2),
        ]) + " |")
    return "\n".join(lines)


def commit() -> str:
    """The short git commit of the code that ran, with "+changes" when the code differs from it."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=artifacts.REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        # figures/ and the README's results are this run's own outputs, not changes to the code that made them.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!figures",
                                ":!README.md"], cwd=artifacts.REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return out + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def guarantee_markdown(params: dict, group_privacy: dict | None) -> str:
    """What the DP arms' guarantee covers and what it does not, from the accountant's numbers (notebook 03's
    group-privacy and composition table, results.json["group_privacy"])."""
    if not group_privacy:
        return ""
    rows = []
    for row, values in group_privacy.items():
        sizes = sorted((int(k[2:]), v) for k, v in values.items() if k.startswith("k="))
        rows.append(f"| {row} | " + " | ".join(_fmt(v) for _, v in sizes) + f" | {values.get('accountant', '')} |")
    header = "| ε at δ = " + f"{params['delta']:g} | " + " | ".join(f"k = {k}" for k, _ in sizes) + " | accountant |"
    secure = ("off: the Poisson draws and the noise follow the public seed, so this is a reproducible study, "
              "not a release" if not params.get("secure_mode") else "on: cryptographic randomness")
    return "\n".join([
        "**What the guarantee covers.** Each DP arm is (ε, δ)-DP for one training record — a note, one canary "
        "copy or one audit canary — with the ε of the table above. A secret held by k records (a canary "
        "inserted k times, a patient with k notes) is protected only at the group ε below, and releasing "
        "several DP arms trained on the same records composes (last row). Each value is an upper bound from "
        f"the accountant (notebook 03). `secure_mode` is {secure}.",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
        *rows,
    ])


def results_markdown(params: dict, table: pd.DataFrame, claims: list[verdicts.Verdict],
                     notebook_seconds: dict, group_privacy: dict | None = None, seeds: list[int] | None = None,
                     estimate: str = "") -> str:
    """figures/results.md: the table, the claims with their verdicts, what the guarantee covers, and where
    and when it was produced (over several `seeds`: the table's intervals are over seeds, and say so);
    `estimate`: a line of projected costs (cost.estimate_markdown), if any."""
    total = sum(notebook_seconds.values())
    times = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in sorted(notebook_seconds.items()))
    seeds = list(seeds or [params["seed"]])
    over = ("Intervals: 95%, bootstrap over records; exact (Clopper–Pearson) for shares." if len(seeds) == 1 else
            f"Over {len(seeds)} seeds ({', '.join(map(str, seeds))}): each number is the mean of the seeds' and its "
            "interval a 95% Student-t interval over the seeds (wide for few seeds); exposure and reference band: "
            "the range over every seed's canaries; audit ε: the mean of the seeds' lower bounds. The verdicts pool "
            "the seeds' records (a bootstrap over seeds, then records).")
    return "\n".join([
        f"Profile `{params['profile']}` (model `{params['model']}`), commit `{commit()}`, "
        f"produced {datetime.date.today().isoformat()} by `run_all.py`"
        + (f", {len(seeds)} seeds." if len(seeds) > 1 else "."),
        "",
        markdown_table(table),
        "",
        over + " ε = ∞: non-private; "
        "audit ε: empirical lower bounds (one-run audit), never above the claimed ε. Speed: prefill of a batch "
        "of 8 on the machine that produced this run. Membership AUC: the attack calibrated by the arm's "
        "starting model (`reference`), the plain loss attack for the untrained arms. Exposure in bits; the "
        "reference band is the range of canaries never inserted.",
        "",
        verdicts.claims_markdown(claims),
        "",
        guarantee_markdown(params, group_privacy),
        "",
        (f"Notebook wall time{' summed over the seeds' if len(seeds) > 1 else ''}: {times} "
         f"(total {total / 60:.1f} min).") if notebook_seconds else "",
        *([""] + [estimate] if estimate else []),
    ]) + "\n"


def readme_markers(run_name: str = "quick") -> tuple[str, str]:
    """The README's markers around a committed run's results: `results` for the default profile's run,
    `results-<run>` for another committed run (the paper profile's)."""
    name = "results" if run_name == profiles.DEFAULT_PROFILE else f"results-{run_name}"
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def update_readme(results_md: str, readme: Path | None = None, run_name: str = profiles.DEFAULT_PROFILE) -> bool:
    """Replace the README's results section of `run_name` (between its markers) with results.md; True if it
    changed."""
    readme = readme or artifacts.REPO_ROOT / "README.md"
    start, end = readme_markers(run_name)
    text = readme.read_text()
    if start not in text or end not in text:
        return False
    new = re.sub(f"{re.escape(start)}.*?{re.escape(end)}", lambda _: f"{start}\n{results_md}{end}", text, flags=re.S)
    if new != text:
        artifacts.write_text(readme, new)
    return new != text


TIMING_COLUMNS = ["prefill_tokens_per_s", "speedup"]  # wall-clock: kept out of results.json


def results_record(table: pd.DataFrame, claims: list[verdicts.Verdict], seeds: list[int]) -> dict:
    """results.json["summary"]: the table's deterministic rows and the claims (and the seeds, when several)."""
    record = {"table": deterministic_rows(table), "claims": verdicts.claim_records(claims)}
    return dict(record, seeds=list(seeds)) if len(seeds) > 1 else record


def deterministic_rows(table: pd.DataFrame) -> list[dict]:
    """The table without its wall-clock columns, as records for results.json (floats rounded, NaN/inf -> null)."""
    return artifacts.rounded(table.drop(columns=TIMING_COLUMNS).reset_index().to_dict(orient="records"))


def privacy_utility_speed_figure(table: pd.DataFrame):
    """Two panels: held-out perplexity against membership AUC (calibrated; privacy), and against speedup (speed)."""
    import matplotlib.pyplot as plt

    from ppt_core.plots import arm_color

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for arm, r in table.iterrows():
        color, marker = arm_color(arm), "s" if arms.parse(arm).pruned else "o"
        yerr = [[r.perplexity - r.perplexity_low], [r.perplexity_high - r.perplexity]] \
            if not np.isnan(r.perplexity_low) else None
        xerr = [[r.membership_auc - r.membership_auc_low], [r.membership_auc_high - r.membership_auc]] \
            if not np.isnan(r.membership_auc_low) else None
        left.errorbar(r.membership_auc, r.perplexity, xerr=xerr, yerr=yerr, fmt=marker, color=color,
                      capsize=3, ms=8, label=arm)
        right.errorbar(r.speedup, r.perplexity, yerr=yerr, fmt=marker, color=color, capsize=3, ms=8, label=arm)
    left.axvline(0.5, color="k", lw=0.8, ls="--")
    left.set(xlabel="membership AUC, calibrated by the starting model (0.5 = no leakage)",
             ylabel="held-out perplexity (log scale)", yscale="log", title="Utility vs privacy")
    right.axvline(1.0, color="k", lw=0.8, ls="--")
    right.set(xlabel="prefill speedup over base (×)", title="Utility vs speed")
    right.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def frontier_figure(table: pd.DataFrame):
    """The privacy–utility–speed frontier. Left: held-out perplexity against the claimed ε of each fine-tuned
    arm (∞ for the non-private ones, drawn right of the largest ε), one line per family with its intervals
    (over seeds, or records for one seed), `base` and `pruned-noft` as reference lines, the pruned family's
    measured speedup in its legend. Right: the audit's ε lower bound against the claimed ε; a sound
    accountant keeps every point on or below the diagonal (the shaded side is impossible)."""
    import matplotlib
    import matplotlib.pyplot as plt

    from ppt_core.plots import arm_color

    trained = [arm for arm in table.index if arms.parse(arm).trained]
    finite = [table.loc[a, "epsilon"] for a in trained if np.isfinite(table.loc[a, "epsilon"])]
    largest = max(finite) if finite else 1.0
    infinity = largest * 3  # where the non-private arms stand on the log ε axis
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for family in arms.FAMILIES:
        members = sorted((a for a in trained if arms.parse(a).family == family),
                         key=lambda a: infinity if not np.isfinite(table.loc[a, "epsilon"]) else table.loc[a, "epsilon"])
        if not members:
            continue
        rows = table.loc[members]
        x = np.where(np.isfinite(rows.epsilon), rows.epsilon, infinity)
        yerr = np.vstack([rows.perplexity - rows.perplexity_low, rows.perplexity_high - rows.perplexity])
        start = "pruned-noft" if family == "pruned" else "base"
        speedup = table.loc[start, "speedup"] if start in table.index else np.nan
        label = f"{family} (speedup {speedup:.3g}×)" if family == "pruned" and np.isfinite(speedup) else family
        left.errorbar(x, rows.perplexity, yerr=np.nan_to_num(yerr), fmt="-s" if family == "pruned" else "-o",
                      color=arm_color(f"{family}-nodp"), capsize=3, ms=7, label=label)
    for reference, style in (("base", "--"), ("pruned-noft", ":")):
        if reference in table.index and np.isfinite(table.loc[reference, "perplexity"]):
            left.axhline(table.loc[reference, "perplexity"], color=arm_color(reference), ls=style, lw=1.2,
                         label=f"{reference} (not fine-tuned)")
    ticks = sorted(set(finite)) + [infinity]
    left.set(xscale="log", yscale="log", xlabel="claimed ε (accountant; ∞ = non-private)",
             ylabel="held-out perplexity (log scale)", title="Utility vs privacy budget")
    left.set_xticks(ticks, [f"{t:.2g}" for t in ticks[:-1]] + ["∞"])
    left.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the arms' ε are ticks
    left.legend(loc="best", fontsize="small")

    private = [a for a in trained if arms.parse(a).private and np.isfinite(table.loc[a, "epsilon"])]
    top = max([largest] + [table.loc[a, column] for a in private
                           for column in ("audit_epsilon_one_run", "audit_epsilon_fdp")
                           if np.isfinite(table.loc[a, column])]) * 1.1
    right.fill_between([0, top], [0, top], [top, top], color="#d62728", alpha=0.08,
                       label="impossible: audit above the claim")
    right.plot([0, top], [0, top], color="k", lw=0.8, ls="--", label="audit = claimed ε")
    for arm in private:
        for column, marker in (("audit_epsilon_one_run", "o"), ("audit_epsilon_fdp", "^")):
            right.plot(table.loc[arm, "epsilon"], table.loc[arm, column], marker, color=arm_color(arm), ms=8,
                       label=f"{arm} ({'one run' if marker == 'o' else 'f-DP'})")
    right.set(xlim=(0, top), ylim=(0, top), xlabel="claimed ε (accountant)", ylabel="audited ε lower bound",
              title="Audit vs claim")
    right.legend(loc="upper left", fontsize="x-small")
    fig.tight_layout()
    return fig

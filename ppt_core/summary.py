"""The study in one table: a row per arm, each headline number with its 95% interval, and the
paper's claims checked against our numbers.

Reads results.json (deterministic numbers) and timings.json (speed) of one run. Each claim is marked
reproduced or not by an explicit criterion written here, never by hand.
"""

from __future__ import annotations

import datetime
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from ppt_core import arms, artifacts

SPEED_BATCH = "batch8"  # prefill throughput of the summary: a small server batch


def _get(tree, *keys, default=None):
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    return tree


def _interval(estimate) -> tuple[float, float, float]:
    """(value, low, high) of a stats.estimate dict; a plain number has no interval."""
    if isinstance(estimate, dict):
        return estimate["value"], estimate.get("low", np.nan), estimate.get("high", np.nan)
    return (np.nan if estimate is None else float(estimate)), np.nan, np.nan


def summary_table(params: dict, results: dict, timings: dict) -> pd.DataFrame:
    """One row per arm: blocks kept, parameters (M), ε (inf = non-private), held-out perplexity,
    prefill throughput (tokens/s) and speedup over base, membership AUC (loss attack), mean canary
    exposure (bits) at the highest repetition count, extraction BERTScore gap (members minus held-out),
    and the share of synthetic records leaking training-only PII; intervals in *_low / *_high."""
    base_speed = _get(timings, "utility", "base", SPEED_BATCH, "prefill_tokens_per_s")
    rows = []
    for arm in arms.arm_names(params):
        utility, attacks = _get(results, "utility", arm, default={}), _get(results, "attacks", arm, default={})
        epsilon = _get(results, "training", arm, "epsilon")
        speed = _get(timings, "utility", arm, SPEED_BATCH, "prefill_tokens_per_s", default=np.nan)
        row = {
            "arm": arm,
            "blocks": _get(results, "pruning", "pruned_depth" if arms.parse(arm).pruned
                           else "original_depth", default=np.nan),
            "parameters_M": _get(utility, "parameters", default=np.nan) / 1e6,
            "epsilon": epsilon if epsilon is not None else np.inf,
            "prefill_tokens_per_s": speed,
            "speedup": speed / base_speed if base_speed else np.nan,
            "exposure_highest": _get(attacks, "canaries", "exposure_at_highest", default=np.nan),
            "exposure_reference": _get(attacks, "canaries", "exposure_reference", default=np.nan),
        }
        for column, estimate in (
            ("perplexity", _get(utility, "heldout_perplexity")),
            ("membership_auc", _get(attacks, "membership", "loss", "auc")),
            ("extraction_bertscore_gap", _get(attacks, "extraction", "bertscore_f1", "members_minus_heldout")),
            ("synthetic_pii_leak", _get(results, "synthetic", arm, "pii_leak_share")),
        ):
            row[column], row[f"{column}_low"], row[f"{column}_high"] = _interval(estimate)
        rows.append(row)
    return pd.DataFrame(rows).set_index("arm")


def _fmt(value, low=np.nan, high=np.nan, digits=3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if np.isinf(value):
        return "∞"
    text = f"{value:.{digits}g}"
    if not (np.isnan(low) or np.isnan(high)):
        text += f" [{low:.{digits}g}, {high:.{digits}g}]"
    return text


def markdown_table(table: pd.DataFrame) -> str:
    """The summary table as Markdown, intervals in brackets (95% bootstrap over records)."""
    header = ("| arm | blocks | params (M) | ε | held-out perplexity | prefill tok/s (speedup) | membership AUC "
              "| canary exposure, highest reps (reference) | extraction BERTScore gap | synthetic PII leak |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for arm, r in table.iterrows():
        lines.append("| " + " | ".join([
            f"`{arm}`", _fmt(r.blocks), _fmt(r.parameters_M), _fmt(r.epsilon),
            _fmt(r.perplexity, r.perplexity_low, r.perplexity_high),
            f"{_fmt(r.prefill_tokens_per_s, digits=4)} ({_fmt(r.speedup)}×)",
            _fmt(r.membership_auc, r.membership_auc_low, r.membership_auc_high),
            f"{_fmt(r.exposure_highest)} ({_fmt(r.exposure_reference)})",
            _fmt(r.extraction_bertscore_gap, r.extraction_bertscore_gap_low, r.extraction_bertscore_gap_high),
            _fmt(r.synthetic_pii_leak, r.synthetic_pii_leak_low, r.synthetic_pii_leak_high),
        ]) + " |")
    return "\n".join(lines)


def paper_claims(params: dict, table: pd.DataFrame, results: dict) -> list[dict]:
    """The paper's claims, each with the criterion we test it by, our evidence and a verdict."""
    def row(arm):
        return table.loc[arm] if arm in table.index else None

    claims = []
    base, pruned = row("base"), row("pruned-noft")
    at_target = {strategy: levels.get(str(params["n_remove"]))
                 for strategy, levels in _get(results, "pruning", "perplexity", default={}).items()}
    at_target = {strategy: value for strategy, value in at_target.items() if value is not None}
    if at_target:
        winner = min(at_target, key=at_target.get)
        claims.append(dict(
            claim="Pairwise cosine similarity finds the blocks to remove",
            criterion=f"with {params['n_remove']} blocks removed, `pairwise` has the lowest zero-shot held-out "
                      "perplexity of the strategies compared",
            evidence=", ".join(f"{s} {v:.3g}" for s, v in sorted(at_target.items(), key=lambda kv: kv[1])),
            holds=winner == "pairwise"))
    if base is not None and pruned is not None:
        claims.append(dict(
            claim="Structural pruning reduces size without compromising performance",
            criterion="pruned model before healing within 10% of the base model's held-out perplexity",
            evidence=f"perplexity {pruned.perplexity:.3g} pruned vs {base.perplexity:.3g} base",
            holds=bool(pruned.perplexity <= 1.1 * base.perplexity)))
        claims.append(dict(
            claim="Pruning reduces inference time",
            criterion="prefill throughput of the pruned model above the base model's (same run, same machine)",
            evidence=f"speedup {pruned.speedup:.2f}× with {int(pruned.blocks)} of {int(base.blocks)} blocks",
            holds=bool(pruned.speedup > 1.0)))
    dp_arms = [a for a in table.index if "-dp" in a]
    healed = [a for a in dp_arms if table.loc[a].perplexity_high < min(base.perplexity, pruned.perplexity)] \
        if base is not None and pruned is not None else []
    claims.append(dict(
        claim="LoRA fine-tuning under DP-SGD heals the pruned model",
        criterion="every DP arm's perplexity interval lies below both the base and the unhealed pruned model",
        evidence=", ".join(f"{a}: {table.loc[a].perplexity:.3g}" for a in dp_arms) or "no DP arm",
        holds=bool(dp_arms) and len(healed) == len(dp_arms)))
    pairs = [(a, a.split("-dp")[0] + "-nodp") for a in dp_arms if a.split("-dp")[0] + "-nodp" in table.index]
    claims.append(dict(
        claim="DP mitigates memorisation",
        criterion="the non-private arm memorises (canary exposure > 1 bit above never-inserted canaries), each DP "
                  "arm's exposure is below its non-private twin's, and its membership-AUC interval contains 0.5",
        evidence="; ".join(f"{dp}: exposure {table.loc[dp].exposure_highest:.3g} vs {nodp} {table.loc[nodp].exposure_highest:.3g}, "
                           f"AUC {table.loc[dp].membership_auc:.3g}" for dp, nodp in pairs) or "no pair",
        holds=bool(pairs) and all(
            table.loc[nodp].exposure_highest > table.loc[nodp].exposure_reference + 1  # memorisation to mitigate
            and table.loc[dp].exposure_highest < table.loc[nodp].exposure_highest
            and table.loc[dp].membership_auc_low <= 0.5 <= table.loc[dp].membership_auc_high for dp, nodp in pairs)))
    if "pruned-nodp" in table.index and "full-nodp" in table.index:
        p, f = table.loc["pruned-nodp"], table.loc["full-nodp"]
        claims.append(dict(
            claim="Pruning complements privacy (a pruned model memorises less)",
            criterion="non-private pruned arm: lower canary exposure and lower membership AUC than the non-private full arm",
            evidence=f"exposure {p.exposure_highest:.3g} vs {f.exposure_highest:.3g}; AUC {p.membership_auc:.3g} vs {f.membership_auc:.3g}",
            holds=bool(p.exposure_highest < f.exposure_highest and p.membership_auc < f.membership_auc)))
    return claims


def claims_markdown(claims: list[dict]) -> str:
    lines = ["| paper's claim | our criterion | our numbers | reproduced? |", "|---|---|---|---|"]
    for c in claims:
        lines.append(f"| {c['claim']} | {c['criterion']} | {c['evidence']} | {'yes' if c['holds'] else '**no**'} |")
    return "\n".join(lines)


def _commit() -> str:
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


def results_markdown(params: dict, table: pd.DataFrame, claims: list[dict], notebook_seconds: dict) -> str:
    """figures/results.md: the table, the claims, and where and when it was produced."""
    total = sum(notebook_seconds.values())
    times = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in sorted(notebook_seconds.items()))
    return "\n".join([
        f"Profile `{params['profile']}` (model `{params['model']}`), commit `{_commit()}`, "
        f"produced {datetime.date.today().isoformat()} by `run_all.py`.",
        "",
        markdown_table(table),
        "",
        "Intervals: 95% bootstrap over records. ε = ∞: non-private. Speed: prefill of a batch of 8 on the "
        "machine that produced this run; exposure in bits (reference: canaries never inserted).",
        "",
        claims_markdown(claims),
        "",
        f"Notebook wall time: {times} (total {total / 60:.1f} min)." if notebook_seconds else "",
    ]) + "\n"


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(results_md: str, readme: Path | None = None) -> bool:
    """Replace the README's results section (between its markers) with results.md; True if it changed."""
    readme = readme or artifacts.REPO_ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    new = re.sub(f"{re.escape(README_START)}.*?{re.escape(README_END)}",
                 lambda _: f"{README_START}\n{results_md}{README_END}", text, flags=re.S)
    if new != text:
        artifacts.write_text(readme, new)
    return new != text


TIMING_COLUMNS = ["prefill_tokens_per_s", "speedup"]  # wall-clock: kept out of results.json


def deterministic_rows(table: pd.DataFrame) -> list[dict]:
    """The table without its wall-clock columns, as records for results.json (floats rounded, NaN/inf -> null)."""
    return artifacts.rounded(table.drop(columns=TIMING_COLUMNS).reset_index().to_dict(orient="records"))


def privacy_utility_speed_figure(table: pd.DataFrame):
    """Two panels: held-out perplexity against membership AUC (privacy), and against speedup (speed)."""
    import matplotlib.pyplot as plt

    from ppt_core.plots import arm_color

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for arm, r in table.iterrows():
        color, marker = arm_color(arm), "o" if arm.startswith(("full", "base")) else "s"
        yerr = [[r.perplexity - r.perplexity_low], [r.perplexity_high - r.perplexity]] \
            if not np.isnan(r.perplexity_low) else None
        xerr = [[r.membership_auc - r.membership_auc_low], [r.membership_auc_high - r.membership_auc]] \
            if not np.isnan(r.membership_auc_low) else None
        left.errorbar(r.membership_auc, r.perplexity, xerr=xerr, yerr=yerr, fmt=marker, color=color,
                      capsize=3, ms=8, label=arm)
        right.errorbar(r.speedup, r.perplexity, yerr=yerr, fmt=marker, color=color, capsize=3, ms=8, label=arm)
    left.axvline(0.5, color="k", lw=0.8, ls="--")
    left.set(xlabel="membership AUC, loss attack (0.5 = no leakage)", ylabel="held-out perplexity (log scale)",
             yscale="log", title="Utility vs privacy")
    right.axvline(1.0, color="k", lw=0.8, ls="--")
    right.set(xlabel="prefill speedup over base (×)", title="Utility vs speed")
    right.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig

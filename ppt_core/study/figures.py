"""The study's figures, one function per figure, in the order the notebooks draw them: each takes numbers
a stage already computed (its results, details or table) and returns a matplotlib figure in the style
of ppt_core.study.plots, which saves it (`plots.save`). Nothing here computes a number the study reports.
"""

from __future__ import annotations

import zlib

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ppt_core.leakage import audit
from ppt_core.machine.timing import SPEED_BATCH, SPEED_BATCH_SIZE, batch_key
from ppt_core.run import arms
from ppt_core.study.plots import arm_color


# --- 00 data --------------------------------------------------------------------------------------------
def note_token_lengths(lengths: dict[str, np.ndarray], max_length: int):
    """Histogram of tokens per note, one per split (data.note_token_lengths), with the scoring length."""
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for split, values in lengths.items():
        ax.hist(values, bins=30, alpha=0.55, label=split)
    ax.axvline(max_length, color="k", ls="--", lw=1, label="max_length")
    ax.set(xlabel="tokens per note", ylabel="notes", title="Token length of the notes")
    ax.legend()
    return fig


# --- 01 layer similarity --------------------------------------------------------------------------------
def similarity_heatmap(similarity: np.ndarray):
    """The (L+1) x (L+1) cosine similarity of the hidden states at every pair of block boundaries."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6.8, 5.6))
    sns.heatmap(similarity, ax=ax, cmap="viridis", vmin=min(0.0, similarity.min()), vmax=1.0, square=True,
                cbar_kws={"label": "cosine similarity"})
    ax.set(xlabel="boundary j (0 = embeddings, l = output of block l-1)", ylabel="boundary i",
           title="Pairwise similarity of the hidden states")
    return fig


def block_redundancy(redundancy: np.ndarray, marked, strategy: str):
    """S[l, l+1] per block, the blocks `strategy` removes in red; the axis zooms in on the top, and each bar
    it cuts carries its value at the bottom."""
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    depth = len(redundancy)
    ax.bar(range(depth), redundancy, color=["#d62728" if block in marked else "#7f7f7f" for block in range(depth)])
    bottom = max(0.0, np.quantile(redundancy, 0.1) - 0.02)  # zoom in; the few lowest bars are cut
    ax.set_ylim(bottom, 1.0)
    for block in np.flatnonzero(redundancy < bottom):
        ax.annotate(f"{redundancy[block]:.2f}", (block, bottom), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set(xlabel="block l", ylabel="S[l, l+1]",
           title=f"Block redundancy; red: the {len(marked)} blocks {strategy} removes")
    return fig


# --- 02 pruning -----------------------------------------------------------------------------------------
def pruning_perplexity(sweep: pd.DataFrame, depth: int):
    """Zero-shot held-out perplexity against blocks removed, one line per strategy (pruning.sweep's records)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for strategy, group in sweep.groupby("strategy", sort=False):
        ax.plot(group["n_removed"], group["perplexity"], marker="o", label=strategy)
    ax.set_yscale("log")
    ax.set(xlabel="blocks removed", ylabel="held-out perplexity (log scale)",
           title=f"Zero-shot perplexity after pruning ({depth} blocks)")
    ax.legend()
    return fig


def pruning_speed(speed: pd.DataFrame):
    """Measured prefill speedup against blocks removed, beside the ideal FLOP ratio (flops.pruning_speed's table)."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(speed["blocks removed"], speed["ideal speedup"], "k--", label="ideal (FLOP ratio)")
    ax.plot(speed["blocks removed"], speed["measured speedup"], marker="o", label="measured prefill")
    ax.set(xlabel="blocks removed", ylabel="speedup over the full model",
           title=f"Inference speed after pruning (CPU, batch {SPEED_BATCH_SIZE})")
    ax.legend()
    return fig


# --- 03 fine-tuning -------------------------------------------------------------------------------------
def training_heldout_loss(results: dict):
    """The held-out loss curve of every fine-tuned arm (launch.train_arms' results): the one curve a DP arm
    publishes."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, result in results.items():
        steps, losses = zip(*result.heldout_losses)
        ax.plot(steps, losses, marker="o", ms=4, lw=1.5, color=arm_color(arm), label=arm)
    ax.set(xlabel="optimizer step", ylabel="held-out loss (nats / token)", title="Held-out loss during training")
    ax.legend()
    return fig


def training_loss(results: dict):
    """The training loss per step of the non-private arms only: a DP arm's is a noiseless statistic of its
    training records and is never drawn."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, result in results.items():
        if not result.private:
            steps = [s + 1 for s, loss in enumerate(result.losses) if loss is not None]
            ax.plot(steps, [loss for loss in result.losses if loss is not None], marker="o", ms=3, lw=1.5,
                    color=arm_color(arm), label=arm)
    ax.set(xlabel="optimizer step", ylabel="training loss (nats / token)",
           title="Training loss (non-private arms only)")
    ax.legend()
    return fig


def training_epsilon(results: dict, delta: float, accountant: str):
    """The epsilon each DP arm has spent after each step (its own accountant, named where it is not `accountant`:
    a dose arm's rdp), against its target (dashed)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for arm, result in results.items():
        if result.private:
            curve = result.epsilon_curve()
            label = arm if result.accountant == accountant else f"{arm} ({result.accountant})"
            ax.plot([s for s, _ in curve], [e for _, e in curve], marker="o", ms=3, color=arm_color(arm), label=label)
            ax.axhline(arms.parse(arm).epsilon, color=arm_color(arm), ls="--", lw=1)
    targets = [arms.parse(arm).epsilon for arm, result in results.items() if result.private]
    if targets and max(targets) > 100 * min(targets):  # a dose arm far above the claims: every curve readable
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylim(bottom=0)
    ax.set(xlabel="optimizer step", ylabel="ε spent", title=f"Privacy spent (δ = {delta:g}, {accountant} accountant)")
    ax.legend()
    return fig


# --- 04 utility and speed -------------------------------------------------------------------------------
def utility_and_speed(results: dict, timings: dict):
    """Three bar panels over the arms, in the order of `results` (utility.measure_arms' results and timings):
    held-out perplexity with its interval, prefill throughput at timing.SPEED_BATCH_SIZE, and generation
    latency at batch 1."""
    arm_names = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colors = [arm_color(arm) for arm in arm_names]
    ppl = [results[arm]["heldout_perplexity"] for arm in arm_names]
    axes[0].bar(arm_names, [p["value"] for p in ppl], color=colors,
                yerr=[[p["value"] - p["low"] for p in ppl], [p["high"] - p["value"] for p in ppl]], capsize=3)
    axes[0].set(ylabel="held-out perplexity", title="Utility (lower is better)")
    axes[1].bar(arm_names, [timings[arm][SPEED_BATCH]["prefill_tokens_per_s"] for arm in arm_names], color=colors)
    axes[1].set(ylabel="tokens / s", title=f"Prefill throughput, batch {SPEED_BATCH_SIZE}")
    axes[2].bar(arm_names, [timings[arm][batch_key(1)]["generation_ms_per_token"] for arm in arm_names], color=colors)
    axes[2].set(ylabel="ms / new token", title="Generation latency, batch 1")
    for ax in axes:
        ax.tick_params(axis="x", rotation=40)
    fig.tight_layout()
    return fig


# --- 05 synthetic data ----------------------------------------------------------------------------------
def synthetic_nearest_record(rows: dict[str, list[dict]]):
    """Each synthetic record (generation.synthetic_report's rows, by arm) at its best BERTScore to a held-out
    note (x) and to a training note (y); above the diagonal it is closer to train."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for arm, arm_rows in rows.items():
        frame = pd.DataFrame(arm_rows)
        ax.scatter(frame["best_bertscore_heldout"], frame["best_bertscore_train"], s=16, alpha=0.7,
                   color=arm_color(arm), label=arm)
    low, high = ax.get_xlim()
    ax.plot([low, high], [low, high], "k--", lw=1)
    ax.set(xlabel="BERTScore F1 to nearest held-out note", ylabel="BERTScore F1 to nearest training note",
           title="Synthetic records: closer to train or to held-out?")
    ax.legend(fontsize=8)
    return fig


# --- 06 attacks -----------------------------------------------------------------------------------------
def membership_roc(results: dict, details: dict):
    """ROC curves (log-log) of the loss and reference signals of every arm (attacks.attack_arms' results and
    details), the axes stopping at 1/n, below which this many records resolve no rate."""
    first = next(iter(results.values()))["membership"]
    n_members, n_nonmembers = first["members"], first["nonmembers"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, signal in zip(axes, ("loss", "reference")):
        for name in details:
            if signal in details[name]["roc"]:
                fpr, tpr = details[name]["roc"][signal]
                auc = results[name]["membership"]["signals"][signal]["auc"]["value"]
                ax.plot(fpr, tpr, color=arm_color(name), label=f"{name} ({auc:.2f})")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set(xscale="log", yscale="log", xlim=(1 / n_nonmembers, 1), ylim=(1 / n_members, 1.05),
               xlabel="false-positive rate", title=f"ROC, {signal} signal (log-log)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("true-positive rate")
    return fig


def _jitter(canary_id: str) -> float:
    """A canary's horizontal jitter factor, the same in every process and every arm's panel (seeded by a
    checksum of its id: Python's str hash is salted per process)."""
    return float(np.exp(np.random.default_rng(zlib.crc32(canary_id.encode())).uniform(-0.15, 0.15)))


def canary_exposure(results: dict):
    """One panel per fine-tuned arm: each inserted canary's exposure (bits) against its repetitions, a dot when
    exact and a bar when an interval, over the band the never-inserted reference canaries reach. Descriptive:
    past the rank cap every canary reads the same interval, so the verdicts rank secret gains instead
    (verdicts.canary_rank_test; the counts above that null are attacks.canary_table's)."""
    trained_names = [name for name in results if arms.parse(name).trained]
    fig, axes = plt.subplots(1, len(trained_names), figsize=(3.6 * len(trained_names), 3.8), sharey=True,
                             squeeze=False)
    for ax, name in zip(axes[0], trained_names):
        canaries = results[name]["canaries"]
        low, high = canaries["reference_band"]
        ax.axhspan(low, high, color="0.85", label="reference canaries")
        for row in canaries["rows"]:
            if row["repetitions"] == 0:
                continue
            x = row["repetitions"] * _jitter(row["id"])
            if row["method"] == "exact":
                ax.plot(x, row["exposure_low"], "o", color=arm_color(name), ms=6)
            else:
                ax.vlines(x, row["exposure_low"], row["exposure_high"], color=arm_color(name), lw=3, alpha=0.6)
        ax.set(xscale="log", xlabel="repetitions in train", title=name,
               ylim=(0, np.log2(canaries["secret_space"]) + 0.5))
    axes[0][0].set_ylabel("exposure (bits)")
    axes[0][0].legend(fontsize=8, loc="upper left")
    return fig


# --- 07 summary -----------------------------------------------------------------------------------------
def audit_over_training(results: dict):
    """Per fine-tuned arm of results["attacks"], the audit's ε lower bounds after every expected pass (solid:
    f-DP, the one the verdicts read; dotted: one-run) and, for a DP arm, the accountant's ε after those steps
    (dashed): a non-private arm's bounds climb, a DP arm's stay under its own dashed line. The grey lines are the
    audit's ceiling (audit.ceiling): no claim above them could be refuted by these canaries."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ceiling = audit.ceiling_of(results)
    _ceiling_lines(ax, ceiling)
    bounds, claims = [], []
    for arm, attacks in results.items():
        points = (attacks.get("audit") or {}).get("over_training") or []
        if not points:
            continue
        passes = [p["passes"] for p in points]
        color = arm_color(arm)
        ax.plot(passes, [p["epsilon_lower_fdp"] for p in points], marker="o", color=color, label=arm)
        ax.plot(passes, [p["epsilon_lower_one_run"] for p in points], ls=":", color=color)
        bounds += [p[key] for p in points for key in ("epsilon_lower_fdp", "epsilon_lower_one_run")]
        if points[0]["claimed_epsilon"] is not None:
            ax.plot(passes, [p["claimed_epsilon"] for p in points], ls="--", color=color, lw=1)
            claims += [p["claimed_epsilon"] for p in points]
    ax.set_ylim(0, _top(bounds + ([ceiling["fdp"]] if ceiling else []), claims))
    ax.set(xlabel="expected passes over the training records", ylabel="ε",
           title="Audit over training: lower bounds (solid f-DP, dotted one-run), claimed ε (dashed)")
    ax.legend(fontsize=8)
    return fig


def privacy_utility_speed(table: pd.DataFrame):
    """Two panels: held-out perplexity against membership AUC (privacy; each arm's judged signal, named in the
    legend: calibrated by the start for the fine-tuned arms, the plain loss for base and pruned-noft), and
    against speedup (speed)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for arm, r in table.iterrows():
        color, marker = arm_color(arm), "s" if arms.parse(arm).pruned else "o"
        yerr = [[r.perplexity - r.perplexity_low], [r.perplexity_high - r.perplexity]] \
            if not np.isnan(r.perplexity_low) else None
        xerr = [[r.membership_auc - r.membership_auc_low], [r.membership_auc_high - r.membership_auc]] \
            if not np.isnan(r.membership_auc_low) else None
        signal = f" ({r.membership_signal})" if isinstance(r.membership_signal, str) else ""
        left.errorbar(r.membership_auc, r.perplexity, xerr=xerr, yerr=yerr, fmt=marker, color=color,
                      capsize=3, ms=8, label=arm + signal)
        right.errorbar(r.speedup, r.perplexity, yerr=yerr, fmt=marker, color=color, capsize=3, ms=8, label=arm)
    left.axvline(0.5, color="k", lw=0.8, ls="--")
    left.legend(loc="best", fontsize="x-small")
    left.set(xlabel="membership AUC (0.5 = no leakage; each arm's attack in the legend)",
             ylabel="held-out perplexity (log scale)", yscale="log", title="Utility vs privacy")
    right.axvline(1.0, color="k", lw=0.8, ls="--")
    right.set(xlabel="prefill speedup over base (×)", title="Utility vs speed")
    right.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def _ceiling_lines(ax, most: dict | None) -> None:
    """The audit's ceiling (audit.ceiling_of) as two grey lines: the most its m canaries can show."""
    if most is None:
        return
    ax.axhline(most["fdp"], color="0.5", lw=1, ls="-.",
               label=f"ceiling of {most['m']} audit canaries: f-DP {most['fdp']:.2f}")
    ax.axhline(most["one_run"], color="0.5", lw=1, ls=":", label=f"ceiling, one run {most['one_run']:.2f}")


def _infinity(largest: float) -> float:
    """Where the non-private arms (ε = ∞) stand on a log ε axis: a decade right of the largest ε, so that a
    dose arm's tick and ∞'s stay apart."""
    return largest * 10


def _top(bounds: list[float], claims: list[float]) -> float:
    """The top of an audit axis: above the bounds and the ceiling (at least 1), and the claims a bound could
    reach (up to twice them); a claim far above (a dose arm's) runs off the top."""
    reach = max(bounds + [1.0])
    return max([reach] + [c for c in claims if c <= 2 * reach]) * 1.15


def _audit_panel(ax, table: pd.DataFrame, trained: list[str], largest: float, seed_tables: dict,
                 ceiling: dict | None = None, implementation: dict | None = None) -> None:
    """The audits' lower bounds against the claimed ε: the DP arms at their ε under the diagonal, the
    non-private ones at "∞" (right of the largest ε, where nothing is claimed); one point per seed; the black-box
    audit's `ceiling` (audit.ceiling_of): a claim above it could not be refuted by its canaries; and, where given,
    the white-box implementation audit of each claimed DP arm (notebook 03's `implementation_audit` record, one
    entry per arm and seed) with its own ceiling. Colour says the family, the marker the audit."""
    tables = list(seed_tables.values()) or [table]
    infinity = _infinity(largest)
    points = []  # (x, bound, family, kind)
    for arm in trained:
        x = table.loc[arm, "epsilon"] if np.isfinite(table.loc[arm, "epsilon"]) else infinity
        for column, kind in (("audit_epsilon_one_run", "one run"), ("audit_epsilon_fdp", "f-DP")):
            points += [(x, t.loc[arm, column], arms.parse(arm).family, kind) for t in tables
                       if arm in t.index and column in t.columns and np.isfinite(t.loc[arm, column])]
    white_box = [(key.split(" (seed ")[0], record) for key, record in (implementation or {}).items()
                 if key != "controls" and key.split(" (seed ")[0] in table.index]
    points += [(table.loc[arm, "epsilon"], record["epsilon_lower"], arms.parse(arm).family, "white-box")
               for arm, record in white_box]
    white_ceiling = max((record["ceiling"] for _, record in white_box), default=None)
    # Up to the bounds, the ceilings and the claims a bound could reach (a claim far above the ceiling runs off the top)
    claims = [p[0] for p in points if p[0] != infinity]
    top = _top([p[1] for p in points] + ([ceiling["fdp"]] if ceiling else []) + [white_ceiling or 0.0], claims)
    _ceiling_lines(ax, ceiling)
    if white_ceiling is not None:
        ax.axhline(white_ceiling, color="0.3", lw=1, ls=(0, (5, 1)),
                   label=f"ceiling of the implementation audit: {white_ceiling:.3g}")
    diagonal = np.r_[np.linspace(0, 1, 20), np.geomspace(1, max(largest, 1.0), 60)[1:]]  # straight on no axis
    ax.fill_between(diagonal, diagonal, np.full_like(diagonal, top), color="#d62728", alpha=0.08,
                    label="impossible for a DP arm: audit above its claim")
    ax.plot(diagonal, diagonal, color="k", lw=0.8, ls="--", label="audit = claimed ε")
    labelled = set()
    markers = {"one run": "o", "f-DP": "^", "white-box": "D"}
    for x, bound, family, kind in points:
        label = f"{family}: {'black-box, ' if kind != 'white-box' else ''}{kind}"
        ax.plot(x, bound, markers[kind], color=arm_color(f"{family}-nodp"), ms=8 if len(tables) == 1 else 6,
                alpha=0.75, label=None if label in labelled else label)
        labelled.add(label)
    ticks = sorted(set(claims) | {largest})
    ax.set_xscale("symlog", linthresh=1.0)  # claims from below 1 to the hundreds, and ∞, on one axis
    ax.set_xticks(ticks + [infinity], [f"{t:.3g}" for t in ticks] + ["∞"])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set(xlim=(0, infinity * 1.5), ylim=(0, top), xlabel="claimed ε (accountant; ∞ = non-private)",
           ylabel="audited ε lower bound",
           title="Audit vs claim" + (f" ({len(tables)} seeds)" if len(tables) > 1 else ""))


LEAK_READINGS = (("delta_auc", "membership ΔAUC vs start", "-"),
                 ("canary_extraction", "canary secrets extracted (share)", ":"))


def _leak_panel(ax, table: pd.DataFrame, trained: list[str], largest: float) -> None:
    """What each black-box attack reads against the claimed ε, per family with its intervals: the calibrated
    membership gain (ΔAUC over the starting model) and the share of canary secrets written out greedily; 0 is no
    leak. A DP arm's reading climbs towards its twin's (at ∞) as ε grows, where the attack can see it."""
    infinity = _infinity(largest)
    for column, reading, style in (r for r in LEAK_READINGS if r[0] in table.columns):
        for family in arms.FAMILIES:
            members = [a for a in trained if arms.parse(a).family == family and np.isfinite(table.loc[a, column])]
            if not members:
                continue
            rows = table.loc[sorted(members, key=lambda a: min(table.loc[a, "epsilon"], infinity))]
            x = np.minimum(rows.epsilon.to_numpy(), infinity)
            yerr = np.vstack([rows[column] - rows[f"{column}_low"], rows[f"{column}_high"] - rows[column]])
            ax.errorbar(x, rows[column], yerr=np.nan_to_num(yerr), fmt="s" if family == "pruned" else "o", ls=style,
                        color=arm_color(f"{family}-nodp"), capsize=3, ms=6, label=f"{family}: {reading}")
    ax.axhline(0.0, color="k", lw=0.8)
    finite = sorted({table.loc[a, "epsilon"] for a in trained if np.isfinite(table.loc[a, "epsilon"])})
    ax.set(xscale="log", xlabel="claimed ε (accountant; ∞ = non-private)", ylabel="what the attack reads (0: no leak)",
           title="Leak vs privacy budget")
    ax.set_xticks(finite + [infinity], [f"{t:.3g}" for t in finite] + ["∞"])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def frontier(table: pd.DataFrame, seed_tables: dict | None = None, ceiling: dict | None = None,
             implementation: dict | None = None):
    """The privacy–utility–speed frontier. Left: held-out perplexity against the claimed ε of each fine-tuned
    arm (∞ for the non-private ones, drawn right of the largest ε), one line per family with its intervals
    (over seeds, or records for one seed), `base` and `pruned-noft` as reference lines, the pruned family's
    measured speedup in its legend. Middle: what the black-box attacks read against ε (`_leak_panel`). Right:
    the audits' ε lower bounds against the claimed ε for every trained arm (each seed's, from `seed_tables`,
    where there are several): a sound accountant keeps every DP arm on or below the diagonal (the shaded side is
    impossible), and the non-private twins, at ∞, show that the audit can find a leak where there is one;
    `ceiling` (audit.ceiling_of) draws the most the black-box audit can show, and `implementation` (notebook
    03's implementation audit record) adds the white-box audit of each claimed DP arm with its ceiling."""
    trained = [arm for arm in table.index if arms.parse(arm).trained]
    finite = [table.loc[a, "epsilon"] for a in trained if np.isfinite(table.loc[a, "epsilon"])]
    largest = max(finite) if finite else 1.0
    infinity = _infinity(largest)
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.6))
    for family in arms.FAMILIES:
        members = sorted((a for a in trained if arms.parse(a).family == family),
                         key=lambda a: table.loc[a, "epsilon"] if np.isfinite(table.loc[a, "epsilon"]) else infinity)
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
    left.set_xticks(ticks, [f"{t:.3g}" for t in ticks[:-1]] + ["∞"])
    left.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the arms' ε are ticks
    left.legend(loc="best", fontsize="small")

    _leak_panel(middle, table, trained, largest)
    middle.legend(loc="upper left", fontsize="x-small")
    _audit_panel(right, table, trained, largest, seed_tables or {}, ceiling, implementation)
    right.legend(loc="upper left", fontsize="x-small")
    fig.tight_layout()
    return fig

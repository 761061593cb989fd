"""The study's verdicts: each claim of the paper is *supported*, *contradicted* or *inconclusive*,
decided here and nowhere else, from paired intervals, never from point comparisons.

Why paired: every arm is scored on the same records, and most of a record's score is the record
(a long, odd note is hard for every model). Resampling the same records for both arms cancels that
part, so a difference too small to see between two separate intervals can still be resolved.

How an interval decides (`side`): a claim names a threshold and a side of it. The 95% interval
wholly on the claimed side supports it, wholly on the other side contradicts it, and an interval
containing the threshold is inconclusive. A claim of *no effect* (DP leaves nothing to detect) is
never supported by absence alone: only an interval that excludes every effect above a stated
minimal effect supports it, and a detected effect contradicts it.

Where the numbers come from (one run; `seeds` says how many seeds a verdict rests on):
- per-record arrays    held-out rows of every strategy (02) and arm (04); membership scores, audit scores
                       and canary secret gains of every arm (06): ppt_core.run.record_files, which writes and reads them
- timings.json         utility[arm][timing.SPEED_BATCH]["prefill_seconds_per_round"], interleaved rounds (04)
- results.json         attacks[arm]: membership, canaries, audit summaries (06)

The privacy claims rest on measures that keep their power when the non-private arms memorise strongly
(membership AUCs near 1, canary ranks past the cap): whether an arm leaks, from three pre-registered tests
(`leak`); whether DP mitigates and whether pruning complements privacy, from the audit memorisation gain,
paired per audit canary (`mitigates_memorisation`, `complements_privacy`). Neither is an absolute "nothing
leaks" claim: what one would cost in members is `power.null_support_sample_size`, shown in `leak_table`.

Over several seeds, ppt_core.study.pooling labels each seed's records by their seed; every paired interval
then resamples seeds, then records within each drawn seed (stats.paired_indices), and an AUC is computed
within each seed and averaged (`paired_membership`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from ppt_core.machine import timing
from ppt_core.run import arms, record_files
from ppt_core.run.record_files import RUN_LABELS
from ppt_core.uncertainty import stats
from ppt_core.uncertainty.power import (
    MINIMAL_AUC_EFFECT,
    null_exclusion_power,
    null_support_sample_size,
    required_sample_size,
)
from ppt_core.uncertainty.roc import roc_auc
from ppt_core.uncertainty.stats import format_interval

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
OUTCOMES = (SUPPORTED, CONTRADICTED, INCONCLUSIVE)

PERFORMANCE_MARGIN = 0.10  # "without compromising performance": perplexity at most 10% above the reference
CANARY_ALPHA = 0.05  # level of the canary rank test (most-repeated canaries' secret gains vs the references')
MIN_REFERENCE_CANARIES = 20  # the null of the canary test: with 20, one canary above them all has p = 1/21 < 0.05
MIN_PAIRED_RECORDS = 5  # fewer paired records (or canaries) than this give no interval worth deciding on
MIN_TIMING_ROUNDS = 2  # a Student-t interval needs two rounds at least
CALIBRATED_SIGNAL, UNCALIBRATED_SIGNAL = "reference", "loss"  # reference: the score is calibrated by the start
WALL_CLOCK_CLAIMS = ("speedup",)  # verdicts resting on timings: timings.json, never results.json


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One decision: its outcome, the numbers it rests on (intervals in brackets), how many seeds they
    pool, and for a paper claim its key, wording and criterion; `parts` are the per-arm decisions a
    claim combines."""

    outcome: str
    evidence: str
    seeds: int = 1
    key: str = ""
    claim: str = ""
    criterion: str = ""
    parts: tuple[Verdict, ...] = ()

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES} (got {self.outcome!r})")


# --- deciding from an interval ------------------------------------------------------------------------
def side(interval: Mapping, threshold: float, claimed: str) -> str:
    """SUPPORTED if the interval ({"low", "high"}) lies wholly on the `claimed` side ("above" or "below")
    of `threshold`, CONTRADICTED if wholly on the other side, else INCONCLUSIVE (also for no interval)."""
    if claimed not in ("above", "below"):
        raise ValueError(f"claimed must be 'above' or 'below' (got {claimed!r})")
    low, high = interval.get("low"), interval.get("high")
    if low is None or high is None or np.isnan(low) or np.isnan(high):
        return INCONCLUSIVE
    above, below = low > threshold, high < threshold
    if above or below:
        return SUPPORTED if above == (claimed == "above") else CONTRADICTED
    return INCONCLUSIVE


def combine(outcomes: Sequence[str]) -> str:
    """A conjunction of decisions: CONTRADICTED if any is, SUPPORTED if all are (and there is one),
    else INCONCLUSIVE."""
    outcomes = list(outcomes)
    if CONTRADICTED in outcomes:
        return CONTRADICTED
    return SUPPORTED if outcomes and all(o == SUPPORTED for o in outcomes) else INCONCLUSIVE


def _missing(what: str) -> Verdict:
    return Verdict(INCONCLUSIVE, f"not measured: {what}")


# --- held-out perplexity, paired ----------------------------------------------------------------------
def perplexity_ratio(numerator: np.ndarray, denominator: np.ndarray, *, runs: np.ndarray | None = None,
                     n_boot: int = 1000, seed: int = 0) -> dict:
    """Perplexity of one arm over another's on the same records (rows [sum log-prob, tokens]), with the
    paired bootstrap interval: exp of the token-weighted log-loss difference."""
    numerator, denominator = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if numerator.shape != denominator.shape:
        raise ValueError(f"paired rows must cover the same records (got shapes {numerator.shape} and "
                         f"{denominator.shape})")
    return stats.paired_estimate(
        lambda a, b: stats.perplexity_of_rows(a) / stats.perplexity_of_rows(b), [numerator, denominator],
        runs=runs, n_boot=n_boot, seed=seed)


def _too_few(rows: np.ndarray) -> bool:
    return len(rows) < MIN_PAIRED_RECORDS


def pairwise_best(rows_by_strategy: Mapping[str, np.ndarray], *, reference: str = "pairwise",
                  runs: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0) -> Verdict:
    """Is `reference` the best strategy? Its perplexity over the next best strategy's (the lowest of the
    others that removed different blocks), paired per record: interval below 1 supports, above 1 contradicts."""
    if reference not in rows_by_strategy:
        return _missing(f"strategy {reference!r} was not scored at the target")
    ours = np.asarray(rows_by_strategy[reference], dtype=float)
    same = sorted(s for s, r in rows_by_strategy.items() if s != reference and np.array_equal(r, ours))
    others = {s: np.asarray(r, dtype=float) for s, r in rows_by_strategy.items() if s != reference and s not in same}
    note = f"; {', '.join(same)} removed the same blocks" if same else ""
    if not others:
        return Verdict(INCONCLUSIVE, f"no other strategy removed different blocks{note}")
    if _too_few(ours):
        return Verdict(INCONCLUSIVE, f"{len(ours)} held-out records: too few to pair")
    perplexity = {s: stats.perplexity_of_rows(r) for s, r in others.items()}
    rival = min(perplexity, key=perplexity.get)
    ratio = perplexity_ratio(ours, others[rival], runs=runs, n_boot=n_boot, seed=seed)
    ranking = ", ".join(f"{s} {p:.3g}" for s, p in sorted(
        {**perplexity, reference: stats.perplexity_of_rows(ours)}.items(), key=lambda kv: kv[1]))
    return Verdict(side(ratio, 1.0, "below"),
                   f"perplexity ratio {reference} / {rival} {format_interval(ratio)} ({ranking}{note})",
                   seeds=ratio["seeds"])


def keeps_performance(base_rows: np.ndarray, pruned_rows: np.ndarray, *, margin: float = PERFORMANCE_MARGIN,
                      runs: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0) -> Verdict:
    """Is the pruned model's perplexity within `margin` of the base's? Their paired ratio: interval below
    1 + margin supports, above contradicts."""
    if _too_few(np.asarray(base_rows)):
        return Verdict(INCONCLUSIVE, f"{len(base_rows)} held-out records: too few to pair")
    ratio = perplexity_ratio(pruned_rows, base_rows, runs=runs, n_boot=n_boot, seed=seed)
    return Verdict(side(ratio, 1 + margin, "below"), f"perplexity ratio pruned / base {format_interval(ratio)}",
                   seeds=ratio["seeds"])


def recovered_fraction(start_rows: np.ndarray, healed_rows: np.ndarray, reference_rows: np.ndarray, *,
                       runs: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """(perplexity of start - of healed) / (of start - of reference), paired over the same records: the share
    of the way from the unhealed pruned model to the full model fine-tuned alike that healing covers."""
    def fraction(start, healed, reference):
        s, h, r = (stats.perplexity_of_rows(x) for x in (start, healed, reference))
        return (s - h) / (s - r) if s != r else np.nan

    samples = [np.asarray(x, dtype=float) for x in (start_rows, healed_rows, reference_rows)]
    return stats.paired_estimate(fraction, samples, runs=runs, n_boot=n_boot, seed=seed)


def heals(rows_by_arm: Mapping[str, np.ndarray], *, margin: float = PERFORMANCE_MARGIN,
          runs: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0) -> Verdict:
    """Does DP-LoRA heal the pruned model? Per pruned DP arm, paired: perplexity ratio to `pruned-noft`
    below 1 (it improves) and to `base` below 1 + margin (it gets back); both must hold. The recovered
    fraction against the full DP arm of the same ε is reported beside them."""
    missing = [a for a in ("base", "pruned-noft") if a not in rows_by_arm]
    healed = sorted(a for a in rows_by_arm if arms.parse(a).pruned and arms.parse(a).private)
    if missing or not healed:
        return _missing(f"held-out rows of {', '.join(missing) or 'a pruned DP arm'}")
    if _too_few(np.asarray(rows_by_arm["base"])):
        return Verdict(INCONCLUSIVE, f"{len(rows_by_arm['base'])} held-out records: too few to pair")
    boot = dict(runs=runs, n_boot=n_boot, seed=seed)
    parts = []
    for arm in healed:
        improves = perplexity_ratio(rows_by_arm[arm], rows_by_arm["pruned-noft"], **boot)
        back = perplexity_ratio(rows_by_arm[arm], rows_by_arm["base"], **boot)
        full = arms.trained_name("full", arms.parse(arm).epsilon)
        fraction = (format_interval(recovered_fraction(rows_by_arm["pruned-noft"], rows_by_arm[arm], rows_by_arm[full],
                                                       **boot), 2) if full in rows_by_arm else f"– (no {full})")
        parts.append(Verdict(
            combine([side(improves, 1.0, "below"), side(back, 1 + margin, "below")]),
            f"{arm}: perplexity ratio to pruned-noft {format_interval(improves)}, to base {format_interval(back)}, "
            f"recovered fraction vs {full} {fraction}", seeds=improves["seeds"]))
    return _conjunction(parts)


def _conjunction(parts: list[Verdict]) -> Verdict:
    return Verdict(combine([p.outcome for p in parts]), "; ".join(p.evidence for p in parts),
                   seeds=min(p.seeds for p in parts), parts=tuple(parts))


# --- speed --------------------------------------------------------------------------------------------
def speedup(base_seconds: Sequence[float], pruned_seconds: Sequence[float], ideal: float | None = None) -> Verdict:
    """Does pruning speed up inference? Per interleaved timing round, base seconds / pruned seconds; their
    geometric mean with a Student-t interval on the log ratios (a bootstrap of a few rounds under-covers):
    above 1 supports, below 1 contradicts. The evidence gives the interval's width and, where known, the
    `ideal` speedup (the FLOP ratio of the same prefill) it reads against."""
    base, pruned = np.asarray(base_seconds, dtype=float), np.asarray(pruned_seconds, dtype=float)
    if len(base) != len(pruned):
        raise ValueError(f"timing rounds must pair up (got {len(base)} base and {len(pruned)} pruned)")
    if len(base) < MIN_TIMING_ROUNDS:
        return Verdict(INCONCLUSIVE, f"{len(base)} timing round(s): no interval (raise timing_rounds)")
    log_ratio = stats.mean_interval(np.log(base / pruned))
    ratio = {key: float(np.exp(log_ratio[key])) for key in ("value", "low", "high")}
    flop_ratio = f"; FLOP ratio {ideal:.3g}" if ideal is not None else ""
    return Verdict(side(ratio, 1.0, "above"), f"prefill speedup {format_interval(ratio)}× over "
                   f"{len(base)} interleaved rounds (interval width {ratio['high'] - ratio['low']:.3g}"
                   f"{flop_ratio})")


# --- privacy: leak, mitigation, pruning ---------------------------------------------------------------
def membership_signal(arm_attacks: Mapping) -> str:
    """The membership signal an arm is judged on: the reference-calibrated one where the arm has it
    (fine-tuned arms), else the loss."""
    signals = arm_attacks.get("membership", {}).get("signals", {})
    return CALIBRATED_SIGNAL if CALIBRATED_SIGNAL in signals else UNCALIBRATED_SIGNAL


def membership_delta(arm_attacks: Mapping) -> dict | None:
    """The judged signal's ΔAUC against the arm's start (for the calibrated signal, whose start scores every
    record alike, AUC - 0.5 when the delta is not given); None if not measured."""
    signal = arm_attacks.get("membership", {}).get("signals", {}).get(membership_signal(arm_attacks))
    if not signal:
        return None
    if "delta_auc_vs_start" in signal:
        return signal["delta_auc_vs_start"]
    if membership_signal(arm_attacks) == CALIBRATED_SIGNAL and "auc" in signal:
        return {key: signal["auc"][key] - 0.5 for key in ("value", "low", "high")}
    return None


def canary_rank_test(canaries: Mapping | None, *, n_boot: int = 1000, seed: int = 0) -> dict | None:
    """The canary test of a leak, on results["attacks"][arm]["canaries"] (one run's, or several seeds' rows
    pooled): the secret gains (nats over the starting model) of the canaries inserted most often against the
    gains of the reference canaries, which were never inserted and so are the null.

    {"repetitions", "inserted", "reference" (canaries in each group), "p_value": one-sided Mann–Whitney U
    (inserted gains larger), "auc": P(an inserted canary gains more than a reference one) with its 95%
    bootstrap interval, each group resampled on its own (no interval, low and high None, when a group has
    fewer than MIN_PAIRED_RECORDS canaries: the p-value alone decides then)}; None unless every row has its
    secret gain and both groups are there. Over several seeds every seed's canaries are taken together: each
    seed brings the same numbers of inserted and of reference canaries, so a seed's offset shifts both groups
    alike and the test stays valid (conservative, as a stratified sample is less variable than the test
    assumes)."""
    rows = (canaries or {}).get("rows", [])
    if not rows or any(row.get("secret_gain") is None for row in rows):
        return None
    highest = max(row["repetitions"] for row in rows)
    inserted = np.array([row["secret_gain"] for row in rows if row["repetitions"] == highest > 0], dtype=float)
    reference = np.array([row["secret_gain"] for row in rows if row["repetitions"] == 0], dtype=float)
    if not len(inserted) or not len(reference):
        return None
    few = min(len(inserted), len(reference)) < MIN_PAIRED_RECORDS  # a bootstrap of 2 canaries is no interval
    auc = ({"value": roc_auc(inserted, reference), "low": None, "high": None} if few
           else stats.estimate(roc_auc, [inserted, reference], n_boot=n_boot, seed=seed))
    return {"repetitions": highest, "inserted": len(inserted), "reference": len(reference),
            "p_value": float(scipy.stats.mannwhitneyu(inserted, reference, alternative="greater").pvalue), "auc": auc}


def _canary_test(canaries: Mapping | None) -> tuple[str | None, str]:
    """("detected" | "excluded" | None, evidence) of canary_rank_test: detected when its p-value is below
    CANARY_ALPHA; excluded in the membership test's sense, when the interval of the canaries' AUC excludes
    every effect above the minimal one (upper end at most 0.5 + MINIMAL_AUC_EFFECT: an attacker ranking canaries
    by their secret gain tells the inserted ones from never-inserted ones no better than a weak membership
    attack); None otherwise, and with fewer than MIN_REFERENCE_CANARIES reference canaries (too small a null)."""
    test = canary_rank_test(canaries)
    if test is None:
        return None, "canary secret gains not measured"
    if test["reference"] < MIN_REFERENCE_CANARIES:
        return None, (f"canaries not measured: {test['reference']} reference canaries, fewer than the "
                      f"{MIN_REFERENCE_CANARIES} the rank test needs (raise n_reference_canaries)")
    auc = format_interval(test["auc"], 2) + ("" if test["auc"]["high"] is not None else
                                             f" (no interval over {test['inserted']} canaries)")
    text = (f"secret gain of the {test['inserted']} canaries inserted {test['repetitions']}× vs {test['reference']} "
            f"reference canaries: Mann–Whitney p = {test['p_value']:.2g}, AUC {auc}")
    if test["p_value"] < CANARY_ALPHA:
        return "detected", text
    if test["auc"]["high"] is not None and test["auc"]["high"] <= 0.5 + MINIMAL_AUC_EFFECT:
        return "excluded", text
    return None, text


def _membership_test(arm_attacks: Mapping) -> tuple[str | None, str]:
    delta = membership_delta(arm_attacks)
    if delta is None:
        return None, "membership not measured"
    text = f"{membership_signal(arm_attacks)} ΔAUC vs start {format_interval(delta, 2)}"
    if delta["low"] > 0:
        return "detected", text
    if delta["high"] <= MINIMAL_AUC_EFFECT:
        return "excluded", text
    return None, text


def leak(arm_attacks: Mapping | None) -> Verdict:
    """Was a leak detected on this arm? Three pre-registered tests, each at its own level:
    - membership: the judged ΔAUC vs the start, 95% interval above 0 (one-sided 2.5%) detects, below
      MINIMAL_AUC_EFFECT excludes;
    - canaries (_canary_test): the rank test of the most-repeated canaries' secret gains against the reference
      canaries', p < CANARY_ALPHA detects, an AUC interval below 0.5 + MINIMAL_AUC_EFFECT excludes;
    - audit: the f-DP ε lower bound (95%) above 0 detects. The one-run bound is shown beside it but does not
      decide (the larger of two bounds, each at 5%, would be wrong about 10% of the time).
    SUPPORTED (leak detected) if any test detects: on an arm that leaks nothing, at most 2.5% + 5% + 5% =
    12.5% of the time. CONTRADICTED (no leak larger than the minimal effect) only if membership and canaries
    both exclude; else INCONCLUSIVE."""
    if not arm_attacks:
        return _missing("attacks")
    membership, membership_text = _membership_test(arm_attacks)
    canaries, canary_text = _canary_test(arm_attacks.get("canaries"))
    audit = arm_attacks.get("audit") or {}
    fdp, one_run = audit.get("epsilon_lower_fdp"), audit.get("epsilon_lower_one_run")
    evidence = [membership_text, canary_text]
    if fdp is not None or one_run is not None:
        claimed = audit.get("claimed_epsilon")
        evidence.append(f"audit ε ≥ {format_interval(fdp)} (f-DP; one-run {format_interval(one_run)})"
                        + (f", claimed {claimed:.3g}" if claimed is not None else ""))
    if "detected" in (membership, canaries) or (fdp is not None and fdp > 0):
        outcome = SUPPORTED
    elif membership == canaries == "excluded":
        outcome = CONTRADICTED
    else:
        outcome = INCONCLUSIVE
    return Verdict(outcome, "; ".join(evidence))


def _membership_samples(records: Mapping[str, np.ndarray], names: Sequence[str], signal: str):
    """(is_member, scores of each arm, seed labels or None) over members then non-members."""
    is_member = np.r_[np.ones(len(records[f"{names[0]}/members/{signal}"]), dtype=int),
                      np.zeros(len(records[f"{names[0]}/nonmembers/{signal}"]), dtype=int)]
    scores = [np.concatenate([records[f"{name}/members/{signal}"], records[f"{name}/nonmembers/{signal}"]])
              for name in names]
    labelled = f"members/{RUN_LABELS}" in records
    runs = np.r_[records[f"members/{RUN_LABELS}"], records[f"nonmembers/{RUN_LABELS}"]] if labelled else None
    return is_member, scores, runs


def paired_membership(statistic, records: Mapping[str, np.ndarray], names: Sequence[str], signal: str, *,
                      n_boot: int, seed: int) -> dict:
    """statistic(is_member, *scores of `names`) on attack records (attacks/records.npz's arrays, one run's or
    several seeds' pooled), members and non-members each resampled once for every arm; over several seeds
    computed within each seed and averaged (stats.within_runs)."""
    is_member, scores, runs = _membership_samples(records, names, signal)
    if runs is None:
        return stats.paired_estimate(statistic, [is_member, *scores], strata=is_member, n_boot=n_boot, seed=seed)
    return stats.paired_estimate(stats.within_runs(statistic), [runs, is_member, *scores], strata=is_member,
                                 runs=runs, n_boot=n_boot, seed=seed)


def membership_auc_difference(records: Mapping[str, np.ndarray], arm: str, other: str, *,
                              signal: str = CALIBRATED_SIGNAL, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUC of `arm` minus AUC of `other` on the same members and non-members (attacks/records.npz),
    members and non-members each resampled once for both arms."""
    def difference(member, a, b):
        member = member == 1
        return roc_auc(a[member], a[~member]) - roc_auc(b[member], b[~member])

    return paired_membership(difference, records, [arm, other], signal, n_boot=n_boot, seed=seed)


def audit_memorisation_gain(included: np.ndarray, scores: np.ndarray) -> float:
    """Mean audit score (nats: the arm's log-likelihood gain over its start on an audit canary's random words)
    of the included audit canaries minus that of the excluded ones: what training on a canary added beyond
    what training on the others taught about canaries of its form."""
    included = np.asarray(included, dtype=bool)
    return float(np.mean(scores[included]) - np.mean(scores[~included]))


def audit_gain_difference(records: Mapping[str, np.ndarray] | None, arm: str, other: str, *, n_boot: int = 1000,
                          seed: int = 0) -> dict | None:
    """audit_memorisation_gain of `arm` minus `other` on the same audit canaries and coin flips
    (attacks/records.npz), paired per canary: included and excluded canaries resampled as strata (after the
    seeds, when pooled). With "included" and "excluded" (counts); None unless both arms' audit scores are
    there, with at least MIN_PAIRED_RECORDS canaries on each side."""
    keys = ("audit/included", f"{arm}/audit/scores", f"{other}/audit/scores")
    if not records or any(key not in records for key in keys):
        return None
    included = np.asarray(records["audit/included"], dtype=bool)
    if min(included.sum(), (~included).sum()) < MIN_PAIRED_RECORDS:
        return None

    def difference(included, a, b):
        return audit_memorisation_gain(included, a) - audit_memorisation_gain(included, b)

    samples = [included, records[f"{arm}/audit/scores"], records[f"{other}/audit/scores"]]
    estimate = stats.paired_estimate(difference, samples, strata=included.astype(int),
                                     runs=records.get(f"audit/{RUN_LABELS}"), n_boot=n_boot, seed=seed)
    return dict(estimate, included=int(included.sum()), excluded=int((~included).sum()))


def secret_gain_difference(records: Mapping[str, np.ndarray] | None, arm: str, other: str, *, n_boot: int = 1000,
                           seed: int = 0) -> dict | None:
    """Mean secret gain (nats, each arm's over its own start) of `arm` minus `other` over the inserted canaries,
    paired per canary, with "canaries" (their number); None unless both arms' gains are there, on at least
    MIN_PAIRED_RECORDS inserted canaries."""
    keys = ("canaries/repetitions", f"{arm}/canaries/secret_gain", f"{other}/canaries/secret_gain")
    if not records or any(key not in records for key in keys):
        return None
    inserted = np.asarray(records["canaries/repetitions"]) > 0
    if inserted.sum() < MIN_PAIRED_RECORDS:
        return None
    diff = (records[f"{arm}/canaries/secret_gain"] - records[f"{other}/canaries/secret_gain"])[inserted]
    runs = records.get(f"canaries/{RUN_LABELS}")
    return dict(stats.paired_estimate(np.mean, [diff], runs=None if runs is None else runs[inserted],
                                      n_boot=n_boot, seed=seed), canaries=int(inserted.sum()))


def _audit_gain_text(gain: dict, arm: str, other: str) -> str:
    return (f"audit memorisation gain {arm} − {other} {format_interval(gain)} nats ({gain['included']} included, "
            f"{gain['excluded']} excluded audit canaries)")


def _membership_difference_text(records: Mapping[str, np.ndarray], arm: str, other: str, **boot) -> str:
    needed = [f"{name}/{group}/{CALIBRATED_SIGNAL}" for name in (arm, other) for group in ("members", "nonmembers")]
    if any(key not in records for key in needed):
        return f"calibrated membership AUC {arm} − {other} not measured"
    difference = membership_auc_difference(records, arm, other, **boot)
    return f"calibrated membership AUC {arm} − {other} {format_interval(difference, 2)}"


def mitigates_memorisation(attacks: Mapping[str, Mapping] | None, records: Mapping[str, np.ndarray] | None, *,
                           dose: Sequence[str] = (), n_boot: int = 1000, seed: int = 0) -> Verdict:
    """Does DP mitigate memorisation? Per DP arm (attacks: results["attacks"]; records: attacks/records.npz's
    arrays): its non-private twin must leak (leak SUPPORTED; else INCONCLUSIVE: nothing to mitigate); then
    the decision is the audit memorisation gain of the DP arm minus its twin's, paired per audit canary
    (audit_gain_difference; the two arms share a start, which cancels): 95% interval below 0
    supports (DP memorised less), above 0 contradicts, containing 0 is inconclusive. Beside it, not deciding:
    the calibrated membership AUC difference DP − twin on the notes, and the DP arm's own leak evidence.

    A relative claim, on purpose: "the DP arm leaks nothing above a margin" in absolute terms needs the
    members null_support_sample_size gives (524 per side for ΔAUC 0.05), more than these profiles attack.
    The `dose` arms (arms.dose_arm_names: targets far above any claim) decide nothing; their gains follow the
    decision, so the evidence reads how the gain changes with ε up to the twin."""
    if not attacks:
        return _missing("attacks")
    private = sorted(a for a in attacks if arms.parse(a).private and a not in dose)
    if not private:
        return _missing("attacks on a DP arm")
    boot = dict(n_boot=n_boot, seed=seed)
    parts = []
    for arm in private:
        twin = arms.parse(arm).twin
        twin_leak = leak(attacks.get(twin))
        if twin_leak.outcome != SUPPORTED:
            parts.append(Verdict(INCONCLUSIVE, f"{arm}: {INCONCLUSIVE}, its twin {twin} shows no leak to mitigate "
                                               f"({twin_leak.evidence})"))
            continue
        gain = audit_gain_difference(records, arm, twin, **boot)
        if gain is None:
            parts.append(Verdict(INCONCLUSIVE,
                                 f"{arm}: {INCONCLUSIVE}, not measured: audit scores of {arm} and {twin}"))
            continue
        own, outcome = leak(attacks[arm]), side(gain, 0.0, "below")
        parts.append(Verdict(outcome,  # each DP arm (each ε of each family) decided on its own, then combined
                             f"{arm}: {outcome}, {_audit_gain_text(gain, arm, twin)}; beside it: "
                             f"{_membership_difference_text(records, arm, twin, **boot)}; {arm}'s own leak test "
                             f"{own.outcome} ({own.evidence}); its twin {twin} leaks", seeds=gain["seeds"]))
    verdict = _conjunction(parts)
    beside = [_audit_gain_text(gain, arm, arms.parse(arm).twin) for arm in sorted(a for a in dose if a in attacks)
              if (gain := audit_gain_difference(records, arm, arms.parse(arm).twin, **boot)) is not None]
    if not beside:
        return verdict
    return dataclasses.replace(verdict, evidence=f"{verdict.evidence}; the dose arms, not deciding: "
                                                 + "; ".join(beside))


def complements_privacy(records: Mapping[str, np.ndarray] | None, *, pruned: str = "pruned-nodp",
                        full: str = "full-nodp", n_boot: int = 1000, seed: int = 0) -> Verdict:
    """Does a pruned model memorise less? Decided by one pre-registered measure: the audit memorisation gain
    of `pruned` minus `full`, paired per audit canary (audit_gain_difference): 95% interval below 0 supports,
    above 0 contradicts, containing 0 is inconclusive. Beside it, not deciding: the calibrated membership AUC
    difference on the notes and the mean secret-gain difference over the inserted canaries, each paired.

    Why the gain and not the AUC: when both non-private arms memorise (several passes, a large rank), both
    membership AUCs sit near 1 and their difference is pinned near 0 however much more one arm memorised; a
    gain in nats does not saturate. And not exposure: past the rank cap every canary reads the same interval."""
    gain = audit_gain_difference(records, pruned, full, n_boot=n_boot, seed=seed)
    if gain is None:
        return _missing(f"audit scores of {pruned} and {full}, with at least {MIN_PAIRED_RECORDS} included and "
                        "excluded audit canaries")
    secret = secret_gain_difference(records, pruned, full, n_boot=n_boot, seed=seed)
    secret_text = (f"secret gain {pruned} − {full} {format_interval(secret)} nats over {secret['canaries']} inserted "
                   "canaries" if secret else f"secret gain {pruned} − {full} not measured")
    beside = [_membership_difference_text(records, pruned, full, n_boot=n_boot, seed=seed), secret_text]
    return Verdict(side(gain, 0.0, "below"), f"{_audit_gain_text(gain, pruned, full)}; beside it: {'; '.join(beside)}",
                   seeds=gain["seeds"])


def leak_table(attacks: Mapping[str, Mapping]) -> pd.DataFrame:
    """Per fine-tuned arm of results["attacks"]: the leak verdict, its evidence, the members (and as many
    non-members) a membership test would need to detect the calibrated signal's observed AUC, the chance that an
    arm leaking nothing reads "no leak above MINIMAL_AUC_EFFECT" at this run's members (null_exclusion_power),
    and the members such an absolute claim would need (null_support_sample_size: the same for every
    arm, beside the members this run has)."""
    rows = {}
    for arm, arm_attacks in attacks.items():
        if arms.parse(arm).trained:
            verdict = leak(arm_attacks)
            membership = arm_attacks["membership"]
            rows[arm] = {"leak detected": verdict.outcome, "evidence": verdict.evidence,
                         "members": membership.get("members"),
                         "members needed at this AUC": required_sample_size(
                             membership["signals"][CALIBRATED_SIGNAL]["auc"]["value"]),
                         f"P(no leak reads ΔAUC ≤ {MINIMAL_AUC_EFFECT:g})": null_exclusion_power(membership["members"]),
                         f"members needed for no leak > {MINIMAL_AUC_EFFECT:g}":
                             null_support_sample_size(MINIMAL_AUC_EFFECT)}
    return pd.DataFrame(rows).T


# --- the paper's claims -------------------------------------------------------------------------------
CLAIMS = {
    "pairwise_best": "Pairwise cosine similarity finds the blocks to remove",
    "keeps_performance": "Structural pruning reduces size without compromising performance",
    "speedup": "Pruning reduces inference time",
    "heals": "LoRA fine-tuning under DP-SGD heals the pruned model",
    "mitigates_memorisation": "DP mitigates memorisation",
    "complements_privacy": "Pruning complements privacy (a pruned model memorises less)",
}


def criteria(params: dict) -> dict[str, str]:
    """The criterion of each claim, as the README states it (thresholds from this module's constants)."""
    limit = f"{1 + PERFORMANCE_MARGIN:g}"
    return {
        "pairwise_best": f"with {params['n_remove']} blocks removed, perplexity of `pairwise` over the next best "
                         "strategy's (paired per-record log-loss difference): 95% interval below 1 "
                         "(above 1: contradicted)",
        "keeps_performance": f"`pruned-noft` over `base` perplexity, paired per record: interval below {limit} "
                             f"(within {PERFORMANCE_MARGIN:.0%}; above: contradicted)",
        "speedup": f"`base` / `pruned-noft` prefill seconds per interleaved timing round (batch "
                   f"{timing.SPEED_BATCH_SIZE}): geometric mean's 95% Student-t interval above 1 "
                   "(below 1: contradicted)",
        "heals": "each `pruned-dp<ε>`, paired per record: perplexity over `pruned-noft` below 1 (improves) and over "
                 f"`base` below {limit} (gets back); recovered fraction (pruned-noft − pruned-dp) / (pruned-noft − "
                 "full-dp) shown",
        "mitigates_memorisation": "each DP arm: its non-private twin leaks (else inconclusive); then the audit "
                                  "memorisation gain (mean audit score of included minus excluded audit canaries, "
                                  "nats) of the DP arm minus its twin's, paired per audit canary: 95% interval below "
                                  "0 (above 0: contradicted; containing 0: inconclusive); the calibrated membership "
                                  "AUC difference and the DP arm's own leak test shown; each DP arm (each ε) decided "
                                  "apart, the claim supported where every one is; the dose arms' gains shown, not "
                                  "deciding",
        "complements_privacy": "audit memorisation gain (mean audit score of included minus excluded audit "
                               "canaries, nats) of `pruned-nodp` minus `full-nodp`, paired per audit canary: 95% "
                               "interval below 0 (above 0: contradicted; containing 0: inconclusive); calibrated "
                               "membership AUC and mean canary secret-gain differences shown",
    }


def paper_claims(params: dict, results: dict, timings: dict, records: Mapping[str, Mapping]) -> list[Verdict]:
    """The paper's claims, each decided by its criterion (see criteria) from one run's results.json,
    timings.json and per-record arrays (record_files.load_records), or from several seeds' pooled
    (pooling.pool_records, pool_attacks, pool_timings); a claim whose inputs are missing is INCONCLUSIVE.
    Each verdict rests on the profile's seeds, all of them."""
    boot = dict(n_boot=params["n_bootstrap"], seed=params["seed"])
    pruning = dict(records.get("pruning", {}))
    utility_rows = dict(records.get("utility", {}))
    pruning_boot = dict(boot, runs=pruning.pop(RUN_LABELS, None))
    utility_boot = dict(boot, runs=utility_rows.pop(RUN_LABELS, None))
    pruning_rows = record_files.pruning_rows(pruning, params["n_remove"])
    speed = {arm: timings.get("utility", {}).get(arm, {}).get(timing.SPEED_BATCH) or {}
             for arm in ("base", "pruned-noft")}
    seconds = {arm: s.get("prefill_seconds_per_round") for arm, s in speed.items()}
    attacks = results.get("attacks") or {}
    decided = {
        "pairwise_best": pairwise_best(pruning_rows, **pruning_boot) if pruning_rows
        else _missing("per-record sweep rows"),
        "keeps_performance": keeps_performance(utility_rows["base"], utility_rows["pruned-noft"], **utility_boot)
        if {"base", "pruned-noft"} <= set(utility_rows) else _missing("held-out rows of base and pruned-noft"),
        "speedup": speedup(seconds["base"], seconds["pruned-noft"], speed["pruned-noft"].get("ideal_speedup"))
        if all(seconds.values())
        else _missing("per-round prefill seconds"),
        "heals": heals(utility_rows, **utility_boot),
        "mitigates_memorisation": mitigates_memorisation(attacks, records.get("attacks"),
                                                         dose=arms.dose_arm_names(params), **boot),
        "complements_privacy": complements_privacy(records.get("attacks"), **boot),
    }
    stated = criteria(params)
    seeds = len(params.get("seeds") or [params["seed"]])
    return [dataclasses.replace(verdict, key=key, claim=CLAIMS[key], criterion=stated[key], seeds=seeds)
            for key, verdict in decided.items()]


def claims_markdown(claims: Sequence[Verdict]) -> str:
    """The claims table of results.md: claim | criterion | our numbers | verdict (with its seeds)."""
    lines = ["| paper's claim | our criterion | our numbers | verdict |", "|---|---|---|---|"]
    for c in claims:
        seeds = f"{c.seeds} seed" + ("s" if c.seeds != 1 else "")
        verdict = c.outcome if c.outcome == SUPPORTED else f"**{c.outcome}**"
        lines.append(f"| {c.claim} | {c.criterion} | {c.evidence} | {verdict} ({seeds}) |")
    return "\n".join(lines)


def claim_records(claims: Sequence[Verdict], *, wall_clock: bool = False) -> list[dict]:
    """{"key", "claim", "outcome", "seeds", "evidence"} of the claims that rest on no wall-clock number, for
    results.json; with wall_clock=True those that do (the speed verdict), for timings.json."""
    return [{"key": c.key, "claim": c.claim, "outcome": c.outcome, "seeds": c.seeds, "evidence": c.evidence}
            for c in claims if (c.key in WALL_CLOCK_CLAIMS) == wall_clock]

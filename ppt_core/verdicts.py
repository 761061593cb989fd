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
- per-record arrays    held-out rows of every strategy (02) and arm (04), membership scores and canary
                       exposures of every arm (06): ppt_core.record_files, which writes and reads them
- timings.json         utility[arm][timing.SPEED_BATCH]["prefill_seconds_per_round"], interleaved rounds (04)
- results.json         attacks[arm]: membership, canaries, audit summaries (06)

Over several seeds, ppt_core.pooling labels each seed's records by their seed; every paired interval
then resamples seeds, then records within each drawn seed (stats.paired_indices), and an AUC is computed
within each seed and averaged (`paired_membership`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from ppt_core import arms, record_files, stats, timing
from ppt_core.record_files import RUN_LABELS
from ppt_core.roc import roc_auc
from ppt_core.stats import format_interval

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
OUTCOMES = (SUPPORTED, CONTRADICTED, INCONCLUSIVE)

PERFORMANCE_MARGIN = 0.10  # "without compromising performance": perplexity at most 10% above the reference
MINIMAL_AUC_EFFECT = 0.05  # the smallest membership ΔAUC worth calling a leak (AUC 0.55: a weak attack)
CANARY_ALPHA = 0.05  # family-wise error of "some inserted canary is exposed" (Bonferroni over the canaries)
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
def speedup(base_seconds: Sequence[float], pruned_seconds: Sequence[float]) -> Verdict:
    """Does pruning speed up inference? Per interleaved timing round, base seconds / pruned seconds; their
    geometric mean with a Student-t interval on the log ratios (a bootstrap of a few rounds under-covers):
    above 1 supports, below 1 contradicts."""
    base, pruned = np.asarray(base_seconds, dtype=float), np.asarray(pruned_seconds, dtype=float)
    if len(base) != len(pruned):
        raise ValueError(f"timing rounds must pair up (got {len(base)} base and {len(pruned)} pruned)")
    if len(base) < MIN_TIMING_ROUNDS:
        return Verdict(INCONCLUSIVE, f"{len(base)} timing round(s): no interval (raise timing_repeats)")
    log_ratio = stats.mean_interval(np.log(base / pruned))
    ratio = {key: float(np.exp(log_ratio[key])) for key in ("value", "low", "high")}
    return Verdict(side(ratio, 1.0, "above"), f"prefill speedup {format_interval(ratio)}× over "
                   f"{len(base)} interleaved rounds")


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


def canary_threshold(canaries: Mapping) -> float:
    """Exposure (bits) above which an inserted canary counts as exposed: the top of the reference band,
    and at least log2(m / CANARY_ALPHA) for m inserted canaries. A secret the model never saw has
    P(exposure >= x) = 2^-x (its rank is uniform), so this bounds the chance that any of the m is
    called exposed by luck at CANARY_ALPHA, which the band of a few reference canaries cannot."""
    inserted = [row for row in canaries.get("rows", []) if row["repetitions"] > 0]
    band_top = canaries.get("reference_band", [0.0, 0.0])[1]
    return max(float(band_top), math.log2(max(len(inserted), 1) / CANARY_ALPHA))


def _canary_test(canaries: Mapping | None) -> tuple[str | None, str]:
    """("detected" | "excluded" | None, evidence): some inserted canary's exposure interval above the
    threshold, every one below it, or neither."""
    inserted = [row for row in (canaries or {}).get("rows", []) if row["repetitions"] > 0]
    if not inserted:
        return None, "canaries not measured"
    threshold = canary_threshold(canaries)
    top = max(inserted, key=lambda row: (row["repetitions"], row["exposure_high"]))
    text = (f"highest-repetition canary ({top['repetitions']}×) exposure "
            f"{_exposure_text(top['exposure_low'], top['exposure_high'])} bits, exposed above {threshold:.3g}")
    exposed = [row for row in inserted if row["exposure_low"] > threshold]
    if exposed:
        return "detected", text + f" ({len(exposed)} of {len(inserted)} canaries)"
    if all(row["exposure_high"] <= threshold for row in inserted):
        return "excluded", text + f" (none of {len(inserted)})"
    return None, text + " (an interval straddles it)"


def _exposure_text(low: float, high: float) -> str:
    return f"{low:.3g}" if low == high else f"[{low:.3g}, {high:.3g}]"


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
    """Was a leak detected on this arm? SUPPORTED (leak detected) if the judged membership ΔAUC interval
    lies above 0, or some inserted canary is exposed (canary_threshold), or an audit ε lower bound is
    above 0. CONTRADICTED (no leak larger than the minimal effect) only if the ΔAUC interval lies below
    MINIMAL_AUC_EFFECT and every inserted canary lies below the threshold; else INCONCLUSIVE."""
    if not arm_attacks:
        return _missing("attacks")
    membership, membership_text = _membership_test(arm_attacks)
    canaries, canary_text = _canary_test(arm_attacks.get("canaries"))
    audit = arm_attacks.get("audit") or {}
    bounds = [audit.get(k) for k in ("epsilon_lower_one_run", "epsilon_lower_fdp") if audit.get(k) is not None]
    evidence = [membership_text, canary_text]
    if bounds:
        claimed = audit.get("claimed_epsilon")
        evidence.append(f"audit ε ≥ {max(bounds):.3g}"
                        + (f" (claimed {claimed:.3g})" if claimed is not None else ""))
    if "detected" in (membership, canaries) or (bounds and max(bounds) > 0):
        outcome = SUPPORTED
    elif membership == canaries == "excluded":
        outcome = CONTRADICTED
    else:
        outcome = INCONCLUSIVE
    return Verdict(outcome, "; ".join(evidence))


def mitigates_memorisation(attacks: Mapping[str, Mapping] | None) -> Verdict:
    """Does DP mitigate memorisation? Per DP arm: its non-private twin must leak (else INCONCLUSIVE: nothing
    to mitigate); then the DP arm's judged ΔAUC interval below MINIMAL_AUC_EFFECT and every inserted canary
    below the threshold support, a leak detected on either contradicts."""
    if not attacks:
        return _missing("attacks")
    private = sorted(a for a in attacks if arms.parse(a).private)
    if not private:
        return _missing("attacks on a DP arm")
    parts = []
    for arm in private:
        twin = arms.parse(arm).twin
        twin_leak = leak(attacks.get(twin))
        if twin_leak.outcome != SUPPORTED:
            parts.append(Verdict(INCONCLUSIVE,
                                 f"{arm}: its twin {twin} shows no leak to mitigate ({twin_leak.evidence})"))
            continue
        tests = [_membership_test(attacks[arm]), _canary_test(attacks[arm].get("canaries"))]
        outcomes = [CONTRADICTED if found == "detected" else SUPPORTED if found == "excluded" else INCONCLUSIVE
                    for found, _ in tests]
        parts.append(Verdict(combine(outcomes), f"{arm}: {'; '.join(text for _, text in tests)} "
                                                f"(twin {twin} leaks: {twin_leak.evidence})"))
    return _conjunction(parts)


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


def exposure_difference(records: Mapping[str, np.ndarray], arm: str, other: str, *, n_boot: int = 1000,
                        seed: int = 0) -> dict | None:
    """Mean exposure (bits) of `arm` minus `other` over the inserted canaries both measure exactly, paired
    per canary; None when fewer than MIN_PAIRED_RECORDS such canaries."""
    exact = [(records[f"{name}/canaries/exposure_low"] == records[f"{name}/canaries/exposure_high"])
             for name in (arm, other)]
    keep = (np.asarray(records["canaries/repetitions"]) > 0) & exact[0] & exact[1]
    if keep.sum() < MIN_PAIRED_RECORDS:
        return None
    diff = records[f"{arm}/canaries/exposure_low"][keep] - records[f"{other}/canaries/exposure_low"][keep]
    runs = records.get(f"canaries/{RUN_LABELS}")
    return dict(stats.paired_estimate(np.mean, [diff], runs=None if runs is None else runs[keep], n_boot=n_boot,
                                      seed=seed), canaries=int(keep.sum()))


def complements_privacy(records: Mapping[str, np.ndarray] | None, *, pruned: str = "pruned-nodp",
                        full: str = "full-nodp", n_boot: int = 1000, seed: int = 0) -> Verdict:
    """Does a pruned model memorise less? `pruned` vs `full`, paired on the same records: the calibrated
    membership AUC difference and the mean exact canary-exposure difference, both below 0 support,
    either above 0 contradicts, an interval containing 0 is inconclusive."""
    needed = [f"{arm}/{group}/{CALIBRATED_SIGNAL}" for arm in (pruned, full) for group in ("members", "nonmembers")]
    if not records or any(key not in records for key in needed):
        return _missing(f"per-record attack scores of {pruned} and {full}")
    auc = membership_auc_difference(records, pruned, full, n_boot=n_boot, seed=seed)
    parts = [Verdict(side(auc, 0.0, "below"), f"calibrated AUC {pruned} − {full} {format_interval(auc, 2)}")]
    canary_keys = [f"{arm}/canaries/exposure_{end}" for arm in (pruned, full) for end in ("low", "high")]
    exposure = exposure_difference(records, pruned, full, n_boot=n_boot, seed=seed) \
        if all(key in records for key in canary_keys + ["canaries/repetitions"]) else None
    parts.append(Verdict(side(exposure, 0.0, "below"),
                         f"exact exposure {pruned} − {full} {format_interval(exposure)} bits over "
                         f"{exposure['canaries']} canaries") if exposure else
                 Verdict(INCONCLUSIVE, f"fewer than {MIN_PAIRED_RECORDS} inserted canaries measured exactly on both"))
    return _conjunction(parts)


# --- sample size --------------------------------------------------------------------------------------
def required_sample_size(auc: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Members (= non-members) a one-sided test of AUC > 0.5 at level `alpha` needs to detect `auc` with
    `power`: the smallest n with z_(1-α)·sd0(n) + z_power·sd1(n) <= auc - 0.5, where sd0 is the Mann–Whitney
    null sd, sqrt((2n+1)/(12 n²)), and sd1 Hanley & McNeil's (1982) sd at `auc`. inf when auc <= 0.5."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1) (got alpha={alpha}, power={power})")
    if not 0 <= auc <= 1:
        raise ValueError(f"auc must lie in [0, 1] (got {auc})")
    if auc <= 0.5:
        return math.inf
    z_alpha, z_power = scipy.stats.norm.ppf(1 - alpha), scipy.stats.norm.ppf(power)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)

    def detects(n: int) -> bool:
        null_var = (2 * n + 1) / (12 * n * n)
        alt_var = (auc * (1 - auc) + (n - 1) * (q1 - auc**2) + (n - 1) * (q2 - auc**2)) / (n * n)
        return z_alpha * math.sqrt(null_var) + z_power * math.sqrt(max(alt_var, 0.0)) <= auc - 0.5

    high = 1
    while not detects(high):
        high *= 2
    low = high // 2  # detects(low) is False (or low == 0)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if detects(middle) else (middle, high)
    return high


def leak_table(attacks: Mapping[str, Mapping]) -> pd.DataFrame:
    """Per fine-tuned arm of results["attacks"]: the leak verdict, its evidence, and the members (and as many
    non-members) a membership test would need to detect the calibrated signal's observed AUC."""
    rows = {}
    for arm, arm_attacks in attacks.items():
        if arms.parse(arm).trained:
            verdict = leak(arm_attacks)
            auc = arm_attacks["membership"]["signals"][CALIBRATED_SIGNAL]["auc"]["value"]
            rows[arm] = {"leak detected": verdict.outcome, "evidence": verdict.evidence,
                         "members needed at this AUC": required_sample_size(auc)}
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
        "mitigates_memorisation": "each DP arm: its non-private twin leaks (else inconclusive); the DP arm's "
                                  "calibrated membership ΔAUC vs its start below "
                                  f"{MINIMAL_AUC_EFFECT:g} and no inserted canary exposed (above the reference "
                                  f"band and log2(canaries / {CANARY_ALPHA:g}) bits); a detected leak contradicts",
        "complements_privacy": "`pruned-nodp` − `full-nodp`, paired on the same records: calibrated membership "
                               "AUC and exact canary exposure, both intervals below 0 (above 0: contradicted; "
                               "containing 0: inconclusive)",
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
    seconds = {arm: (timings.get("utility", {}).get(arm, {}).get(timing.SPEED_BATCH) or {})
               .get("prefill_seconds_per_round") for arm in ("base", "pruned-noft")}
    attacks = results.get("attacks") or {}
    decided = {
        "pairwise_best": pairwise_best(pruning_rows, **pruning_boot) if pruning_rows
        else _missing("per-record sweep rows"),
        "keeps_performance": keeps_performance(utility_rows["base"], utility_rows["pruned-noft"], **utility_boot)
        if {"base", "pruned-noft"} <= set(utility_rows) else _missing("held-out rows of base and pruned-noft"),
        "speedup": speedup(seconds["base"], seconds["pruned-noft"]) if all(seconds.values())
        else _missing("per-round prefill seconds"),
        "heals": heals(utility_rows, **utility_boot),
        "mitigates_memorisation": mitigates_memorisation(attacks),
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

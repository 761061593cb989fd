"""Several seeds as one study: each seed's per-record arrays, attack summaries and timing rounds
pooled, so that the verdicts of ppt_core.study.verdicts rest on every seed at once.

Each seed's records are concatenated and labelled by their seed (record_files.RUN_LABELS); the paired
intervals then come from the two-stage bootstrap of stats.paired_indices (seeds drawn with
replacement, then records within each drawn seed), so they carry the spread between seeds (training
noise, data draw) and not only between records. A statistic that only means something within one seed
(an AUC: scores of different seeds' models are not comparable) is computed per seed and averaged.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ppt_core.machine import timing
from ppt_core.run.record_files import ATTACK_GROUPS, RECORD_FILES, RUN_LABELS
from ppt_core.study import verdicts
from ppt_core.uncertainty.roc import roc_auc


def pool_records(records_by_seed: Mapping[int, Mapping[str, Mapping[str, np.ndarray]]]) -> dict:
    """record_files.load_records over several seeds: per stage, every array all seeds have, concatenated in
    seed order, with the seed of each record beside them: `RUN_LABELS` for the pruning and utility rows (every
    key of a stage covers the same held-out records), "<group>/runs" for each group of the attack records."""
    seeds = list(records_by_seed)
    pooled = {}
    for stage in RECORD_FILES:
        per_seed = [records_by_seed[s].get(stage, {}) for s in seeds]
        keys = sorted(set.intersection(*(set(r) for r in per_seed)))
        arrays = {key: np.concatenate([r[key] for r in per_seed]) for key in keys}

        def labels(key, per_seed=per_seed):
            return np.concatenate([np.full(len(r[key]), s) for s, r in zip(seeds, per_seed)])

        if stage == "attacks":
            arrays.update({f"{group}/{RUN_LABELS}": labels(listed) for group, listed in ATTACK_GROUPS.items()
                           if listed in arrays})
        elif keys:
            arrays[RUN_LABELS] = labels(keys[0])
        pooled[stage] = arrays
    return pooled


def pooled_membership_auc(records: Mapping[str, np.ndarray], arm: str, signal: str, *, n_boot: int = 1000,
                          seed: int = 0) -> dict:
    """The membership AUC of one arm's `signal` over pooled records (pool_records): within each seed (scores
    of different seeds' models are not comparable), averaged, with the two-stage paired bootstrap."""
    def auc(member, scores):
        return roc_auc(scores[member == 1], scores[member == 0])

    return verdicts.paired_membership(auc, records, [arm], signal, n_boot=n_boot, seed=seed)


def pool_attacks(attacks_by_seed: Mapping[int, Mapping[str, Mapping]], records: Mapping[str, np.ndarray], *,
                 n_boot: int = 1000, seed: int = 0) -> dict:
    """results["attacks"] of several seeds as one, for `leak` and `mitigates_memorisation`: per arm every seed
    measured, the judged membership signal's AUC from the pooled records (pooled_membership_auc; for the
    calibrated signal ΔAUC vs the start is AUC − 0.5, see verdicts.membership_delta), every seed's canary rows
    (distinct secrets, each with its secret gain and its rank p-value within its own seed: the canary rank test
    takes every seed's inserted and reference canaries together, see verdicts.canary_rank_test) with the
    widest exposure band, and the audit's lowest ε lower bound over the seeds (the least of valid 95% lower
    bounds is one) with the lowest of the seeds' ceilings (audit.ceiling_of)."""
    seeds = list(attacks_by_seed)
    common = set.intersection(*(set(attacks_by_seed[s] or {}) for s in seeds)) if seeds else set()
    pooled = {}
    for arm in sorted(common, key=lambda a: list(attacks_by_seed[seeds[0]]).index(a)):
        per_seed = [attacks_by_seed[s][arm] for s in seeds]
        signal = verdicts.membership_signal(per_seed[0])
        entry: dict = {}
        if f"{arm}/members/{signal}" in records:
            entry["membership"] = {"signals": {signal: {
                "auc": pooled_membership_auc(records, arm, signal, n_boot=n_boot, seed=seed)}}}
        canaries = [a.get("canaries") for a in per_seed]
        if all(canaries):
            bands = np.array([c.get("reference_band", [0.0, 0.0]) for c in canaries], dtype=float)
            entry["canaries"] = {"rows": [row for c in canaries for row in c.get("rows", [])],
                                 "reference_band": [float(bands[:, 0].min()), float(bands[:, 1].max())]}
        audits = [a.get("audit") or {} for a in per_seed]
        if all(audits):
            entry["audit"] = {key: (min(a[key] for a in audits) if all(a.get(key) is not None for a in audits)
                                    else None) for key in ("epsilon_lower_one_run", "epsilon_lower_fdp")}
            claimed = [a.get("claimed_epsilon") for a in audits if a.get("claimed_epsilon") is not None]
            entry["audit"]["claimed_epsilon"] = max(claimed) if claimed else None
            for key in ("m", "ceiling_one_run", "ceiling_fdp"):  # one audit split per seed: the least any could show
                if all(key in a for a in audits):
                    entry["audit"][key] = min(a[key] for a in audits)
        pooled[arm] = entry
    return pooled


def pool_timings(timings_by_seed: Mapping[int, Mapping]) -> dict:
    """timings.json's speed over several seeds, for `speedup`: each arm's interleaved prefill rounds of every
    seed, one after the other (and the mean throughput), where every seed timed them."""
    utility = {}
    per_seed = [t.get("utility", {}) for t in timings_by_seed.values()]
    for arm in set.intersection(*(set(u) for u in per_seed)) if per_seed else ():
        speeds = [u[arm].get(timing.SPEED_BATCH) or {} for u in per_seed]
        if all(s.get("prefill_seconds_per_round") for s in speeds):
            utility[arm] = {timing.SPEED_BATCH: {
                "prefill_seconds_per_round": [x for s in speeds for x in s["prefill_seconds_per_round"]],
                "prefill_tokens_per_s": float(np.mean([s["prefill_tokens_per_s"] for s in speeds]))}}
    return {"utility": utility}

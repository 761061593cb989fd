"""The verdicts: every claim reaches each of supported / contradicted / inconclusive on hand-built
tables, the paired bootstrap resolves what unpaired intervals cannot, exact intervals for shares,
and the sample size a membership test needs."""

import math

import numpy as np
import pytest
import scipy.stats

from ppt_core.machine.timing import SPEED_BATCH
from ppt_core.run import artifacts, profiles, record_files
from ppt_core.study import report, summary, verdicts
from ppt_core.study.verdicts import CONTRADICTED, INCONCLUSIVE, SUPPORTED
from ppt_core.uncertainty import power, stats

N = 60  # held-out records
TOKENS = 40


def rows_of(loss: np.ndarray, tokens: int = TOKENS) -> np.ndarray:
    """Per-record rows [sum log-prob, tokens] for per-token losses `loss` (nats)."""
    return np.c_[-np.asarray(loss) * tokens, np.full(len(loss), tokens)].astype(float)


@pytest.fixture
def difficulty():
    """Per-record log-loss of a reference model: records differ far more than models do."""
    return np.random.default_rng(0).uniform(1.0, 5.0, N)


def noise(scale, seed=1, n=N):
    return np.random.default_rng(seed).normal(0, scale, n)


# --- the paired bootstrap -------------------------------------------------------------------------------
def test_pairing_resolves_a_shift_that_unpaired_intervals_cannot(difficulty):
    a, b = difficulty, difficulty + 0.1 + noise(0.05)
    unpaired_a = stats.estimate(np.mean, [a], n_boot=500)
    unpaired_b = stats.estimate(np.mean, [b], n_boot=500)
    assert unpaired_a["high"] > unpaired_b["low"]  # separate intervals overlap: no decision possible
    paired = stats.paired_estimate(lambda x, y: np.mean(y - x), [a, b], n_boot=500)
    assert paired["low"] > 0.05 and paired["seeds"] == 1  # the same records resampled: the shift stands out
    # The same holds through the perplexity verdict: a 10% worse model on the same records is resolved.
    ratio = verdicts.perplexity_ratio(rows_of(b), rows_of(a), n_boot=500)
    assert ratio["low"] > 1.0


def test_side_and_combine():
    assert verdicts.side({"low": 1.1, "high": 1.3}, 1.0, "above") == SUPPORTED
    assert verdicts.side({"low": 1.1, "high": 1.3}, 1.0, "below") == CONTRADICTED
    assert verdicts.side({"low": 0.9, "high": 1.3}, 1.0, "above") == INCONCLUSIVE
    assert verdicts.side({"low": float("nan"), "high": 1.3}, 1.0, "above") == INCONCLUSIVE
    assert verdicts.combine([SUPPORTED, SUPPORTED]) == SUPPORTED
    assert verdicts.combine([SUPPORTED, INCONCLUSIVE]) == INCONCLUSIVE
    assert verdicts.combine([SUPPORTED, CONTRADICTED, INCONCLUSIVE]) == CONTRADICTED
    assert verdicts.combine([]) == INCONCLUSIVE


# --- pairwise is the best strategy ----------------------------------------------------------------------
def test_pairwise_best_reaches_every_verdict(difficulty):
    def strategies(shift, scale=0.02):
        return {"pairwise": rows_of(difficulty), "block": rows_of(difficulty + shift + noise(scale)),
                "last": rows_of(difficulty + 2.0)}

    better = verdicts.pairwise_best(strategies(0.1), n_boot=300)
    assert better.outcome == SUPPORTED and "pairwise / block" in better.evidence
    assert verdicts.pairwise_best(strategies(-0.1), n_boot=300).outcome == CONTRADICTED
    assert verdicts.pairwise_best(strategies(0.0, scale=0.3), n_boot=300).outcome == INCONCLUSIVE


def test_pairwise_best_skips_strategies_that_removed_the_same_blocks(difficulty):
    rows = {"pairwise": rows_of(difficulty), "iterative": rows_of(difficulty),
            "random": rows_of(difficulty + 0.5 + noise(0.05))}
    verdict = verdicts.pairwise_best(rows, n_boot=200)
    assert verdict.outcome == SUPPORTED and "pairwise / random" in verdict.evidence
    assert "iterative removed the same blocks" in verdict.evidence
    alone = verdicts.pairwise_best({"pairwise": rows_of(difficulty), "iterative": rows_of(difficulty)})
    assert alone.outcome == INCONCLUSIVE


# --- pruning keeps performance --------------------------------------------------------------------------
def test_keeps_performance_reaches_every_verdict(difficulty):
    base = rows_of(difficulty)

    def pruned(factor, scale=0.01):
        return rows_of(difficulty + np.log(factor) + noise(scale))

    assert verdicts.keeps_performance(base, pruned(1.02), n_boot=300).outcome == SUPPORTED
    assert verdicts.keeps_performance(base, pruned(1.5), n_boot=300).outcome == CONTRADICTED
    assert verdicts.keeps_performance(base, pruned(1.1, scale=0.3), n_boot=300).outcome == INCONCLUSIVE
    assert verdicts.keeps_performance(base[:3], pruned(1.02)[:3]).outcome == INCONCLUSIVE  # too few records


# --- pruning speeds up inference ------------------------------------------------------------------------
def test_speedup_reaches_every_verdict():
    base = np.array([1.00, 1.03, 0.98, 1.01, 1.02])
    assert verdicts.speedup(base, base / 1.3).outcome == SUPPORTED
    assert verdicts.speedup(base, base * 1.3).outcome == CONTRADICTED
    assert verdicts.speedup(base, base * np.array([0.8, 1.25, 0.9, 1.2, 1.0])).outcome == INCONCLUSIVE
    one = verdicts.speedup([1.0], [0.5])
    assert one.outcome == INCONCLUSIVE and "1 timing round" in one.evidence  # a single round decides nothing
    with pytest.raises(ValueError, match="pair up"):
        verdicts.speedup([1.0, 1.0], [1.0])


def test_many_rounds_decide_what_three_cannot_and_the_width_is_reported():
    """A 15% speedup under 10% round-to-round noise: 3 rounds decide it in few draws, 30 in nearly all; the
    evidence gives the interval's width and the FLOP ratio it reads against."""
    rng = np.random.default_rng(0)

    def decided(rounds):
        base = 1.0 + 0.01 * rng.standard_normal(rounds)
        pruned = base / 1.15 * np.exp(0.1 * rng.standard_normal(rounds))
        return verdicts.speedup(base, pruned, ideal=1.15)

    assert np.mean([decided(3).outcome == SUPPORTED for _ in range(200)]) < 0.5
    thirty = [decided(30) for _ in range(200)]
    assert np.mean([v.outcome == SUPPORTED for v in thirty]) > 0.95
    width = float(thirty[0].evidence.split("interval width ")[1].split(";")[0])
    assert 0 < width < 0.15 and "over 30 interleaved rounds" in thirty[0].evidence
    assert "FLOP ratio 1.15" in thirty[0].evidence


# --- DP-LoRA heals the pruned model ---------------------------------------------------------------------
def test_heals_reaches_every_verdict(difficulty):
    def arms_with(healed, scale=0.01):
        return {"base": rows_of(difficulty), "pruned-noft": rows_of(difficulty + 0.5),
                "full-dp8": rows_of(difficulty - 0.3), "pruned-dp8": rows_of(difficulty + healed + noise(scale))}

    healed = verdicts.heals(arms_with(0.0), n_boot=300)
    assert healed.outcome == SUPPORTED and len(healed.parts) == 1
    assert verdicts.heals(arms_with(0.7), n_boot=300).outcome == CONTRADICTED  # worse than unhealed
    assert verdicts.heals(arms_with(0.3), n_boot=300).outcome == CONTRADICTED  # improves, but not back to base
    assert verdicts.heals(arms_with(np.log(1.1), scale=0.3), n_boot=300).outcome == INCONCLUSIVE
    assert verdicts.heals({"base": rows_of(difficulty)}).outcome == INCONCLUSIVE


def test_recovered_fraction_is_the_share_of_the_way_back(difficulty):
    start, reference = rows_of(difficulty * 0 + 3.0), rows_of(difficulty * 0 + 2.0)  # perplexity e^3 and e^2
    halfway = np.log((np.exp(3.0) + np.exp(2.0)) / 2)
    fraction = verdicts.recovered_fraction(start, rows_of(difficulty * 0 + halfway), reference, n_boot=50)
    assert fraction["value"] == pytest.approx(0.5)


# --- leaks, DP mitigation, pruning and privacy ----------------------------------------------------------
def canary_rows(shift=0.0, *, inserted=4, reference=20, repetitions=32, seed=0):
    """Canary rows of results["attacks"][arm]["canaries"]: `inserted` canaries whose secret gain (nats) is
    shifted by `shift` above that of `reference` never-inserted ones, every exposure the rank cap's [0, 12.6]
    bits (what every canary reads in the memorisation regime)."""
    rng = np.random.default_rng(seed)
    gains = np.r_[rng.normal(shift, 0.3, inserted), rng.normal(0, 0.3, reference)]
    return [{"id": f"c{i}", "repetitions": reps, "secret_gain": float(gain), "method": "beyond cap",
             "exposure_low": 0.0, "exposure_high": 12.6}
            for i, (reps, gain) in enumerate(zip([repetitions] * inserted + [0] * reference, gains))]


def arm_attacks(delta=(0.0, -0.03, 0.04), canaries=None, audit=None):
    """A hand-built results["attacks"][arm] in the contract's shape; audit: (f-DP, one-run) ε lower bounds."""
    value, low, high = delta
    summary = {
        "membership": {"members": 100, "nonmembers": 100, "signals": {"reference": {
            "auc": {"value": 0.5 + value, "low": 0.5 + low, "high": 0.5 + high},
            "delta_auc_vs_start": {"value": value, "low": low, "high": high}}}},
        "canaries": {"secret_space": 10**6, "rank_cap": 100, "rows": canary_rows() if canaries is None else canaries},
    }
    if audit is not None:
        summary["audit"] = {"m": 100, "included": 50, "claimed_epsilon": 8.0, "epsilon_lower_fdp": audit[0],
                            "epsilon_lower_one_run": audit[1], "auc": {"value": 0.5, "low": 0.4, "high": 0.6}}
    return summary


LEAKING = dict(delta=(0.3, 0.2, 0.4), canaries=canary_rows(3.0))
EXCLUDED = dict(delta=(0.0, -0.04, 0.04), canaries=canary_rows(-1.0, inserted=30, reference=30))


def test_leak_is_detected_by_any_pre_registered_test_and_never_excluded_by_absence():
    assert verdicts.leak(arm_attacks(delta=(0.2, 0.1, 0.3))).outcome == SUPPORTED  # membership
    assert verdicts.leak(arm_attacks(canaries=canary_rows(3.0))).outcome == SUPPORTED  # the canaries' gains
    assert verdicts.leak(arm_attacks(audit=(0.4, 0.0))).outcome == SUPPORTED  # the f-DP audit bound
    one_run = verdicts.leak(arm_attacks(audit=(0.0, 0.4)))
    assert one_run.outcome == INCONCLUSIVE and "one-run 0.4" in one_run.evidence  # shown, but it does not decide
    assert verdicts.leak(arm_attacks(**EXCLUDED, audit=(0.0, 0.0))).outcome == CONTRADICTED  # both exclude
    # Membership excludes, the canaries show nothing: 4 canaries cannot exclude an effect, so no "no leak".
    nothing = verdicts.leak(arm_attacks(delta=(0.0, -0.04, 0.04)))
    assert nothing.outcome == INCONCLUSIVE and "4 canaries inserted 32×" in nothing.evidence
    wide = verdicts.leak(arm_attacks(delta=(0.02, -0.15, 0.2), canaries=EXCLUDED["canaries"]))
    assert wide.outcome == INCONCLUSIVE  # nothing detected, but effects above the minimal one not excluded
    assert verdicts.leak(None).outcome == INCONCLUSIVE and "not measured" in verdicts.leak({}).evidence


def test_the_canary_verdict_does_not_move_with_the_rank_cap():
    """Past the cap every canary reads [0, 12.6] bits whatever it gained: the exposure decided "excluded" for
    every canary then. The gains decide now; the exposures can say anything."""
    for shift, found in ((3.0, "detected"), (0.0, None)):
        rows = canary_rows(shift)
        uncapped = [dict(row, exposure_high=19.9) for row in rows]
        outcomes = {verdicts._canary_test({"rows": r})[0] for r in (rows, uncapped)}
        assert outcomes == {found}


def test_canary_rank_test_holds_its_level_and_finds_a_memorised_canary():
    def p_value(shift, seed):
        return verdicts.canary_rank_test({"rows": canary_rows(shift, seed=seed)}, n_boot=10)["p_value"]

    null = [p_value(0.0, seed) for seed in range(400)]
    assert np.mean(np.less(null, verdicts.CANARY_ALPHA)) <= 0.07  # level 5%, within sampling error of 400 draws
    test = verdicts.canary_rank_test({"rows": canary_rows(1.0)})
    rows = canary_rows(1.0)
    inserted, reference = ([r["secret_gain"] for r in rows if (r["repetitions"] > 0) == kind] for kind in (True, False))
    assert test["p_value"] == pytest.approx(scipy.stats.mannwhitneyu(inserted, reference, alternative="greater").pvalue)
    assert (test["inserted"], test["reference"], test["repetitions"]) == (4, 20, 32) and test["p_value"] < 0.05
    assert verdicts.canary_rank_test({"rows": [dict(r, secret_gain=None) for r in rows]}) is None


def test_two_canaries_give_the_rank_test_a_p_value_but_no_interval():
    """A bootstrap of 2 inserted canaries printed "AUC 1 [1, 1]", a 95% interval it is not; and it could have
    excluded an effect from 2 canaries."""
    test = verdicts.canary_rank_test({"rows": canary_rows(5.0, inserted=2)})
    assert test["auc"] == {"value": 1.0, "low": None, "high": None} and test["p_value"] == pytest.approx(1 / 231)
    found, text = verdicts._canary_test({"rows": canary_rows(5.0, inserted=2)})
    assert found == "detected" and "AUC 1 (no interval over 2 canaries)" in text and "[1, 1]" not in text
    assert verdicts._canary_test({"rows": canary_rows(-5.0, inserted=2)})[0] is None  # never "excluded" from 2
    assert verdicts.canary_rank_test({"rows": canary_rows(5.0, inserted=5)})["auc"]["low"] is not None


def test_too_few_reference_canaries_leave_the_canary_test_unmeasured():
    found, text = verdicts._canary_test({"rows": canary_rows(5.0, reference=verdicts.MIN_REFERENCE_CANARIES - 1)})
    assert found is None and "raise n_reference_canaries" in text
    assert verdicts._canary_test({"rows": canary_rows(5.0)})[0] == "detected"


def attack_records(arm_effects, *, n=80, n_audit=60, n_canaries=10, scale=0.1):
    """attacks/records.npz content: the same members and non-members, audit canaries and canaries scored by
    every arm of `arm_effects` (arm -> (members' shift in the reference score, memorisation gain in nats)),
    each record's own difficulty shared by every arm. The memorisation gain lifts the included audit
    canaries' scores and the inserted canaries' secret gains over what every arm gains on all of them."""
    rng = np.random.default_rng(0)
    member, nonmember = rng.normal(0, 1, n), rng.normal(0, 1, n)
    included = np.arange(n_audit) % 2 == 0
    inserted = np.r_[np.ones(n_canaries, dtype=bool), np.zeros(2, dtype=bool)]
    audit_general, canary_general = rng.normal(1.0, 1.0, n_audit), rng.normal(0.5, 1.0, len(inserted))
    records = {"members/ids": np.array([f"m{i}" for i in range(n)]),
               "nonmembers/ids": np.array([f"h{i}" for i in range(n)]), "audit/included": included,
               "canaries/ids": np.array([f"c{i}" for i in range(len(inserted))]),
               "canaries/repetitions": np.where(inserted, 8, 0)}
    for arm, (shift, gain) in arm_effects.items():
        records[f"{arm}/members/reference"] = member + shift + rng.normal(0, scale, n)
        records[f"{arm}/nonmembers/reference"] = nonmember + rng.normal(0, scale, n)
        records[f"{arm}/audit/scores"] = audit_general + gain * included + rng.normal(0, scale, n_audit)
        records[f"{arm}/canaries/secret_gain"] = canary_general + gain * inserted + rng.normal(0, scale, len(inserted))
    return records


def test_audit_gain_difference_is_paired_per_canary_and_exact_on_the_data():
    records = attack_records({"pruned-nodp": (1.0, 2.0), "full-nodp": (1.0, 3.0)})
    difference = verdicts.audit_gain_difference(records, "pruned-nodp", "full-nodp", n_boot=200)
    included = records["audit/included"]
    gain = {arm: records[f"{arm}/audit/scores"][included].mean() - records[f"{arm}/audit/scores"][~included].mean()
            for arm in ("pruned-nodp", "full-nodp")}
    assert difference["value"] == pytest.approx(gain["pruned-nodp"] - gain["full-nodp"])
    assert (difference["included"], difference["excluded"]) == (30, 30)
    # Pairing: each canary's general gain (sd 1 nats) cancels; unpaired, the interval would be ~10x wider.
    assert difference["high"] - difference["low"] < 0.2 and difference["high"] < 0
    assert verdicts.audit_gain_difference(records, "pruned-nodp", "pruned-dp8") is None
    pooled = dict(records, **{"audit/runs": np.arange(60) % 3})
    assert verdicts.audit_gain_difference(pooled, "pruned-nodp", "full-nodp", n_boot=50)["seeds"] == 3


def test_complements_privacy_reaches_every_verdict_from_the_audit_gain():
    def decided(pruned_gain, full_gain, scale=0.1):
        return verdicts.complements_privacy(attack_records({"pruned-nodp": (2.0, pruned_gain),
                                                            "full-nodp": (2.0, full_gain)}, scale=scale), n_boot=300)

    # Both arms memorise: their membership AUCs are ~1 alike, so the AUC difference cannot tell; the gain does.
    supported = decided(2.0, 3.0)
    assert supported.outcome == SUPPORTED and "calibrated membership AUC pruned-nodp − full-nodp" in supported.evidence
    assert "secret gain pruned-nodp − full-nodp -1" in supported.evidence
    assert "over 10 inserted canaries" in supported.evidence
    assert decided(3.0, 2.0).outcome == CONTRADICTED
    assert decided(2.5, 2.5, scale=1.0).outcome == INCONCLUSIVE
    missing = verdicts.complements_privacy({})
    assert missing.outcome == INCONCLUSIVE and "not measured" in missing.evidence


def test_mitigates_memorisation_reaches_every_verdict_from_the_audit_gain():
    attacks = {"full-nodp": arm_attacks(**LEAKING), "full-dp8": arm_attacks(delta=(0.01, -0.04, 0.07))}

    def decided(dp_gain, scale=0.1, attacks=attacks):
        records = attack_records({"full-nodp": (1.0, 3.0), "full-dp8": (0.05, dp_gain)}, scale=scale)
        return verdicts.mitigates_memorisation(attacks, records, n_boot=300)

    # The DP arm's ΔAUC interval reaches 0.07: an absolute "no leak" would be inconclusive; the paired gain decides.
    supported = decided(0.2)
    assert supported.outcome == SUPPORTED and len(supported.parts) == 1
    assert "full-dp8: supported, audit memorisation gain full-dp8 − full-nodp" in supported.evidence  # per arm
    assert "full-dp8's own leak test inconclusive" in supported.evidence
    contradicted = decided(4.0)  # memorised more than its twin
    assert contradicted.outcome == CONTRADICTED and "full-dp8: contradicted, " in contradicted.evidence
    assert decided(3.0, scale=1.0).outcome == INCONCLUSIVE
    quiet = {"full-nodp": arm_attacks(), "full-dp8": arm_attacks()}
    no_twin_leak = decided(0.2, attacks=quiet)
    assert no_twin_leak.outcome == INCONCLUSIVE and "no leak to mitigate" in no_twin_leak.evidence
    unscored = verdicts.mitigates_memorisation(attacks, {}, n_boot=50)
    assert unscored.outcome == INCONCLUSIVE and "not measured" in unscored.evidence
    missing = verdicts.mitigates_memorisation({}, None)
    assert missing.outcome == INCONCLUSIVE and "not measured" in missing.evidence


def test_a_dose_arm_is_shown_beside_the_decision_and_never_decides_it():
    """A dose arm far above any claim memorises more than the claimed arm, here as much as its twin: the claim
    stays decided on the claimed arm, and the dose arm's gain follows it."""
    attacks = {"full-nodp": arm_attacks(**LEAKING), "full-dp8": arm_attacks(delta=(0.01, -0.04, 0.07)),
               "full-dp100000": arm_attacks(**LEAKING)}
    records = attack_records({"full-nodp": (1.0, 3.0), "full-dp8": (0.05, 0.2), "full-dp100000": (1.0, 3.0)},
                             scale=0.1)
    verdict = verdicts.mitigates_memorisation(attacks, records, dose=["full-dp100000"], n_boot=300)
    assert verdict.outcome == SUPPORTED and len(verdict.parts) == 1
    assert "; the dose arms, not deciding: audit memorisation gain full-dp100000 − full-nodp" in verdict.evidence
    undosed = verdicts.mitigates_memorisation(attacks, records, n_boot=300)
    assert len(undosed.parts) == 2 and undosed.outcome != SUPPORTED  # as a claim it would not hold


def test_membership_auc_difference_is_paired_and_exact_on_the_data():
    from ppt_core.uncertainty.roc import roc_auc

    records = attack_records({"pruned-nodp": (0.3, 0.0), "full-nodp": (1.5, 0.0)})
    difference = verdicts.membership_auc_difference(records, "pruned-nodp", "full-nodp", n_boot=100)
    auc = {arm: roc_auc(records[f"{arm}/members/reference"], records[f"{arm}/nonmembers/reference"])
           for arm in ("pruned-nodp", "full-nodp")}
    assert difference["value"] == pytest.approx(auc["pruned-nodp"] - auc["full-nodp"])
    assert difference["low"] <= difference["value"] <= difference["high"]


# --- sample size ----------------------------------------------------------------------------------------
# --- the claims of one run ------------------------------------------------------------------------------
def test_paper_claims_of_a_run_without_attacks_are_inconclusive_not_missing(tmp_path, difficulty):
    params = profiles.get_profile("smoke", n_bootstrap=200)
    paths = artifacts.RunPaths(tmp_path)
    n_remove = params["n_remove"]
    record_files.save_pruning(paths, [
        {"strategy": "pairwise", "n_removed": n_remove, "logprob_rows": rows_of(difficulty + 0.5)},
        {"strategy": "last", "n_removed": n_remove, "logprob_rows": rows_of(difficulty + 2.0)},
        {"strategy": "pairwise", "n_removed": 0, "logprob_rows": rows_of(difficulty)}])
    record_files.save(paths, "utility", {
        "base": rows_of(difficulty), "pruned-noft": rows_of(difficulty + 0.5 + noise(0.01)),
        "pruned-dp8": rows_of(difficulty + 0.01 + noise(0.01, seed=2)), "full-dp8": rows_of(difficulty - 0.2)})
    seconds = [1.0, 1.02, 0.99]
    timings = {"utility": {"base": {SPEED_BATCH: {"prefill_tokens_per_s": 100.0, "prefill_seconds_per_round": seconds}},
                           "pruned-noft": {SPEED_BATCH: {"prefill_tokens_per_s": 130.0,
                                                         "prefill_seconds_per_round": [s / 1.3 for s in seconds]}}}}
    claims = verdicts.paper_claims(params, {}, timings, record_files.load_records(paths))
    outcome = {c.key: c.outcome for c in claims}
    assert outcome == {"pairwise_best": SUPPORTED, "keeps_performance": CONTRADICTED, "speedup": SUPPORTED,
                       "heals": SUPPORTED, "mitigates_memorisation": INCONCLUSIVE,
                       "complements_privacy": INCONCLUSIVE}
    assert all(c.seeds == 1 and c.criterion and c.claim for c in claims)
    markdown = verdicts.claims_markdown(claims)
    assert "**contradicted** (1 seed)" in markdown and "not measured" in markdown
    assert [c["key"] for c in verdicts.claim_records(claims)] == [
        "pairwise_best", "keeps_performance", "heals", "mitigates_memorisation", "complements_privacy"]
    assert [c["key"] for c in verdicts.claim_records(claims, wall_clock=True)] == ["speedup"]


def test_summary_table_reads_the_attack_contract_with_exact_shares():
    params = profiles.get_profile("smoke")
    results = {
        "pruning": {"original_depth": 6, "pruned_depth": 4},
        "training": {"full-dp8": {"epsilon": 7.9}},
        "utility": {"base": {"parameters": 2e6, "heldout_perplexity": {"value": 30.0, "low": 28.0, "high": 32.0}}},
        "attacks": {"base": {"membership": {"signals": {"loss": {"auc": {"value": 0.52, "low": 0.4, "high": 0.64}}}}},
                    "full-nodp": dict(arm_attacks(**LEAKING),
                                      audit={"epsilon_lower_one_run": 0.7, "epsilon_lower_fdp": 0.9},
                                      extraction={"records": {"members": 16},
                                                  "exact_suffix_rate": {"members": stats.proportion(3, 16)}}),
                    "full-dp8": {"extraction": {"records": {"members": 16},
                                                "exact_suffix_rate": {"members": stats.proportion(0, 16)}}}},
        "synthetic": {"full-nodp": {"records": 16, "pii_leak_share": stats.proportion(0, 16)},
                      "full-dp8": {"records": 16, "pii_leak_share": stats.proportion(0, 16)}},
    }
    results["attacks"]["full-nodp"]["canaries"]["by_repetitions"] = {"32": {"canaries": 4, "above_reference_band": 4}}
    for i, row in enumerate(results["attacks"]["full-nodp"]["canaries"]["rows"]):  # 3 of the 4 inserted written out
        row["greedy_extracted"] = row["repetitions"] > 0 and i < 3
    table = summary.summary_table(params, results, {})
    assert table.loc["base", "membership_signal"] == "loss" and table.loc["base", "membership_auc"] == 0.52
    row = table.loc["full-nodp"]
    assert row.membership_signal == "reference" and row.delta_auc_low == pytest.approx(0.2)
    assert (row.canaries_above_null, row.canaries_highest, row.canary_repetitions) == (4, 4, 32)
    assert row.canary_p_value == pytest.approx(1 / math.comb(24, 4))  # all 4 above all 20: exact MWU
    assert row.exposure_highest_high == 12.6 and row.audit_epsilon_fdp == 0.9
    assert row.synthetic_pii_leak_high == pytest.approx(0.2059, abs=1e-4)  # 0 of 16 is not "0 [0, 0]"
    assert row.extraction_hits == pytest.approx(3 / 16) and row.extraction_hits_low > 0
    assert (row.canary_extraction, row.canary_extraction_trials) == (0.75, 4)  # of the inserted canaries only
    assert row.canary_extraction_low == pytest.approx(scipy.stats.binomtest(3, 4).proportion_ci().low)
    assert np.isnan(table.loc["full-dp8", "canary_extraction"])  # no canaries measured: no share
    assert table.loc["full-dp8", "epsilon"] == 7.9
    # The twin extracts (a positive control): the DP arm's 0 is evidence; no synthetic PII on the twin: it is not
    dp = table.loc["full-dp8"]
    assert dp.extraction_hits_positive_control is True and dp.synthetic_pii_leak_positive_control is False
    assert np.isnan(table.loc["base", "extraction_hits_positive_control"])
    markdown = report.markdown_table(table)
    assert "4 of 4 at 32× (p = 9.4e-05)" in markdown
    dp_cells = next(line for line in markdown.splitlines() if "`full-dp8`" in line).split(" | ")
    assert dp_cells[-3] == "0 [0, 0.21]" and dp_cells[-2] == "no positive control (twin full-nodp: 0)"
    twin_cells = next(line for line in markdown.splitlines() if "`full-nodp`" in line).split(" | ")
    assert twin_cells[-2] == "0 [0, 0.21] (no positive control)" and twin_cells[-1] == "0.75 [0.19, 0.99] |"
    assert "speedup" not in summary.deterministic_rows(table)[0]


# --- the rows notebooks 02 and 04 save ------------------------------------------------------------------
def test_sweep_and_utility_rows_pair_the_same_records(tiny):
    from ppt_core import pruning
    from ppt_core.stages import utility

    model, tokenizer = tiny
    texts = ["Patient admitted with chest pain.", "Discharged home on day three.", "No known allergies.",
             "Follow up in two weeks with cardiology.", "Blood pressure stable overnight."]
    depth = pruning.n_blocks(model)
    similarity = np.eye(depth + 1) + np.diag(np.linspace(0.5, 0.9, depth), 1)
    records = pruning.sweep(model, tokenizer, similarity, strategies=["pairwise", "last"], levels=[0, 1],
                            eval_texts=texts, calibration_texts=texts, max_length=32, progress=False)
    unpruned = utility.heldout_rows(model, tokenizer, texts, max_length=32, progress=False)
    for record in records:
        assert record["logprob_rows"].shape == (len(texts), 2)
        assert record["perplexity"] == pytest.approx(stats.perplexity_of_rows(record["logprob_rows"]))
        if record["n_removed"] == 0:
            np.testing.assert_allclose(record["logprob_rows"], unpruned, rtol=1e-6)
    estimate = utility.perplexity_estimate(unpruned, n_boot=50)
    assert estimate["records"] == len(texts) and estimate["low"] <= estimate["value"] <= estimate["high"]


def test_paper_claims_read_the_attack_contract_from_disk(tmp_path):
    params = profiles.get_profile("smoke", n_bootstrap=200)
    paths = artifacts.RunPaths(tmp_path)
    memorising = {"full-nodp": (1.5, 3.0), "pruned-nodp": (1.5, 2.0), "full-dp8": (0.0, 0.1), "pruned-dp8": (0.0, 0.1)}
    record_files.save(paths, "attacks", attack_records(memorising))
    records = record_files.load_records(paths)
    assert records["attacks"]["members/ids"].dtype.kind == "U" and records["pruning"] == {}
    results = {"attacks": {"full-nodp": arm_attacks(**LEAKING), "pruned-nodp": arm_attacks(**LEAKING),
                           "full-dp8": arm_attacks(), "pruned-dp8": arm_attacks()}}
    claims = {c.key: c for c in verdicts.paper_claims(params, results, {}, records)}
    assert claims["mitigates_memorisation"].outcome == SUPPORTED and claims["complements_privacy"].outcome == SUPPORTED
    assert claims["pairwise_best"].outcome == claims["speedup"].outcome == INCONCLUSIVE
    assert "audit memorisation gain" in claims["complements_privacy"].criterion
    assert all("reference band" not in c.criterion and "exposure" not in c.criterion for c in claims.values())


def test_leak_table_gives_each_fine_tuned_arm_its_verdict_and_the_members_it_would_need():
    table = verdicts.leak_table({"base": arm_attacks(), "full-nodp": arm_attacks(delta=(0.2, 0.1, 0.3)),
                                 "full-dp8": arm_attacks(delta=(0.02, -0.15, 0.2))})
    assert list(table.index) == ["full-nodp", "full-dp8"]  # base is its own start: nothing to calibrate by
    assert table.loc["full-nodp", "leak detected"] == SUPPORTED
    assert table.loc["full-dp8", "leak detected"] == INCONCLUSIVE
    assert table.loc["full-dp8", "members needed at this AUC"] == power.required_sample_size(0.52)
    assert table.loc["full-dp8", "members"] == 100
    assert table.loc["full-dp8", "members needed for no leak > 0.05"] == power.null_support_sample_size(0.05)


# --- the study layer reads without torch ----------------------------------------------------------------
def test_the_verdicts_and_the_summary_import_without_torch():
    """Deciding and reporting read saved numbers only: importing them must not load torch (seconds, and a
    machine that reads a finished run needs no accelerator stack)."""
    import subprocess
    import sys

    code = ("import sys, ppt_core.study.verdicts, ppt_core.study.summary, ppt_core.study.pooling, "
            "ppt_core.study.report, ppt_core.run.record_files, ppt_core.uncertainty.roc, ppt_core.machine.timing; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

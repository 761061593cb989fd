"""The verdicts: every claim reaches each of supported / contradicted / inconclusive on hand-built
tables, the paired bootstrap resolves what unpaired intervals cannot, exact intervals for shares,
and the sample size a membership test needs."""

import numpy as np
import pytest
import scipy.stats

from ppt_core import artifacts, profiles, record_files, report, stats, summary, verdicts
from ppt_core.timing import SPEED_BATCH
from ppt_core.verdicts import CONTRADICTED, INCONCLUSIVE, SUPPORTED

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
def arm_attacks(delta=(0.0, -0.03, 0.04), exposures=((4, 2.0, 2.0),), band=(0.5, 3.0), audit=None):
    """A hand-built results["attacks"][arm] in the contract's shape."""
    value, low, high = delta
    summary = {
        "membership": {"members": 100, "nonmembers": 100, "signals": {"reference": {
            "auc": {"value": 0.5 + value, "low": 0.5 + low, "high": 0.5 + high},
            "delta_auc_vs_start": {"value": value, "low": low, "high": high}}}},
        "canaries": {"secret_space": 10**6, "rank_cap": 10**4, "reference_band": list(band),
                     "rows": [{"id": f"c{i}", "repetitions": r, "exposure_low": lo, "exposure_high": hi,
                               "method": "exact" if lo == hi else "beyond cap"}
                              for i, (r, lo, hi) in enumerate(exposures)]
                     + [{"id": "ref", "repetitions": 0, "exposure_low": band[1], "exposure_high": band[1],
                         "method": "exact"}]},
    }
    if audit is not None:
        summary["audit"] = {"m": 100, "included": 50, "claimed_epsilon": 8.0, "epsilon_lower_one_run": audit,
                            "epsilon_lower_fdp": 0.0, "auc": {"value": 0.5, "low": 0.4, "high": 0.6}}
    return summary


def test_leak_is_detected_by_any_attack_and_never_excluded_by_absence():
    assert verdicts.leak(arm_attacks(delta=(0.2, 0.1, 0.3))).outcome == SUPPORTED  # membership
    assert verdicts.leak(arm_attacks(exposures=((16, 15.0, 15.0),))).outcome == SUPPORTED  # a canary
    assert verdicts.leak(arm_attacks(audit=0.4)).outcome == SUPPORTED  # the audit
    assert verdicts.leak(arm_attacks(audit=0.0)).outcome == CONTRADICTED  # tight interval, nothing exposed
    wide = verdicts.leak(arm_attacks(delta=(0.02, -0.15, 0.2)))
    assert wide.outcome == INCONCLUSIVE  # nothing detected, but effects above the minimal one not excluded
    straddling = verdicts.leak(arm_attacks(exposures=((16, 3.5, 19.9),)))
    assert straddling.outcome == INCONCLUSIVE  # beyond the rank cap: the interval straddles the threshold
    assert verdicts.leak(None).outcome == INCONCLUSIVE and "not measured" in verdicts.leak({}).evidence


def test_canary_threshold_guards_against_luck_over_many_canaries():
    one = arm_attacks(exposures=((4, 2.0, 2.0),), band=(0.5, 3.0))
    many = arm_attacks(exposures=tuple((4, 2.0, 2.0) for _ in range(64)), band=(0.5, 3.0))
    assert verdicts.canary_threshold(one["canaries"]) == pytest.approx(max(3.0, np.log2(1 / 0.05)))
    assert verdicts.canary_threshold(many["canaries"]) == pytest.approx(np.log2(64 / 0.05))
    # 8 bits beats the reference band, but among 64 canaries a never-seen secret gets there by luck.
    lucky = arm_attacks(exposures=((4, 8.0, 8.0),) + tuple((4, 1.0, 1.0) for _ in range(63)))
    assert verdicts.leak(lucky).outcome != SUPPORTED


def test_mitigates_memorisation_reaches_every_verdict():
    leaking = arm_attacks(delta=(0.3, 0.2, 0.4), exposures=((16, 14.0, 14.0),))
    quiet = arm_attacks(delta=(0.0, -0.04, 0.04), exposures=((16, 1.5, 1.5),))
    supported = verdicts.mitigates_memorisation({"full-nodp": leaking, "full-dp8": quiet})
    assert supported.outcome == SUPPORTED
    still = verdicts.mitigates_memorisation({"full-nodp": leaking, "full-dp8": arm_attacks(delta=(0.1, 0.02, 0.2))})
    assert still.outcome == CONTRADICTED
    no_twin_leak = verdicts.mitigates_memorisation({"full-nodp": quiet, "full-dp8": quiet})
    assert no_twin_leak.outcome == INCONCLUSIVE and "no leak to mitigate" in no_twin_leak.evidence
    wide = verdicts.mitigates_memorisation({"full-nodp": leaking, "full-dp8": arm_attacks(delta=(0.0, -0.2, 0.2))})
    assert wide.outcome == INCONCLUSIVE
    missing = verdicts.mitigates_memorisation({})
    assert missing.outcome == INCONCLUSIVE and "not measured" in missing.evidence


def attack_records(pruned_shift, full_shift, exposure_gap, *, n=80, canaries=8, scale=0.1):
    """attacks/records.npz content: the same members and non-members scored by both arms (shared
    per-record difficulty), members shifted up by each arm's leak; canary exposures per arm."""
    rng = np.random.default_rng(0)
    member, nonmember = rng.normal(0, 1, n), rng.normal(0, 1, n)
    records = {"members/ids": np.array([f"m{i}" for i in range(n)]),
               "nonmembers/ids": np.array([f"h{i}" for i in range(n)]),
               "canaries/ids": np.array([f"c{i}" for i in range(canaries + 2)]),
               "canaries/repetitions": np.r_[np.full(canaries, 4), [0, 0]]}
    full_exposure = rng.uniform(6, 12, canaries + 2)
    for arm, shift, gap in (("pruned-nodp", pruned_shift, exposure_gap), ("full-nodp", full_shift, 0.0)):
        records[f"{arm}/members/reference"] = member + shift + rng.normal(0, scale, n)
        records[f"{arm}/nonmembers/reference"] = nonmember + rng.normal(0, scale, n)
        exposure = full_exposure + gap + rng.normal(0, 0.2, canaries + 2)
        records[f"{arm}/canaries/exposure_low"] = records[f"{arm}/canaries/exposure_high"] = exposure
    return records


def test_complements_privacy_reaches_every_verdict():
    assert verdicts.complements_privacy(attack_records(0.3, 1.5, -3.0), n_boot=300).outcome == SUPPORTED
    assert verdicts.complements_privacy(attack_records(1.5, 0.3, 3.0), n_boot=300).outcome == CONTRADICTED
    same = verdicts.complements_privacy(attack_records(1.0, 1.0, 0.0, scale=0.5), n_boot=300)
    assert same.outcome == INCONCLUSIVE and len(same.parts) == 2
    mixed = verdicts.complements_privacy(attack_records(0.3, 1.5, 3.0), n_boot=300)
    assert mixed.outcome == CONTRADICTED  # less membership leakage, more canary exposure: not "memorises less"
    assert verdicts.complements_privacy({}).outcome == INCONCLUSIVE


def test_few_exact_canaries_leave_the_exposure_part_undecided():
    records = attack_records(0.3, 1.5, -3.0, canaries=3)
    verdict = verdicts.complements_privacy(records, n_boot=200)
    assert verdict.parts[1].outcome == INCONCLUSIVE and verdict.outcome == INCONCLUSIVE


def test_membership_auc_difference_is_paired_and_exact_on_the_data():
    records = attack_records(0.3, 1.5, 0.0)
    difference = verdicts.membership_auc_difference(records, "pruned-nodp", "full-nodp", n_boot=100)
    from ppt_core.roc import roc_auc

    auc = {arm: roc_auc(records[f"{arm}/members/reference"], records[f"{arm}/nonmembers/reference"])
           for arm in ("pruned-nodp", "full-nodp")}
    assert difference["value"] == pytest.approx(auc["pruned-nodp"] - auc["full-nodp"])
    assert difference["low"] <= difference["value"] <= difference["high"]


# --- sample size ----------------------------------------------------------------------------------------
def test_required_sample_size_gives_the_power_it_promises():
    auc = 0.7
    n = verdicts.required_sample_size(auc)
    shift = np.sqrt(2) * scipy.stats.norm.ppf(auc)  # binormal scores with this AUC

    def power(n_each, reps=2000):
        rng = np.random.default_rng(0)
        members, nonmembers = rng.normal(shift, 1, (reps, n_each)), rng.normal(0, 1, (reps, n_each))
        p = scipy.stats.mannwhitneyu(members, nonmembers, alternative="greater", axis=1).pvalue
        return float(np.mean(p < 0.05))

    assert 0.72 <= power(n) <= 0.88
    assert power(max(n // 2, 2)) < 0.7
    assert verdicts.required_sample_size(0.6) > n > verdicts.required_sample_size(0.9)
    assert verdicts.required_sample_size(0.5) == np.inf and verdicts.required_sample_size(0.4) == np.inf
    with pytest.raises(ValueError, match="power"):
        verdicts.required_sample_size(0.7, power=1.5)


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
                    "full-nodp": dict(arm_attacks(delta=(0.3, 0.2, 0.4), exposures=((4, 14.0, 14.0),)),
                                      audit={"epsilon_lower_one_run": 0.7, "epsilon_lower_fdp": 0.9},
                                      extraction={"records": {"members": 16}, "exact_suffix_rate": {"members": 0.0}})},
        "synthetic": {"full-nodp": {"records": 16, "pii_leak_share": {"value": 0.0, "low": 0.0, "high": 0.0}}},
    }
    table = summary.summary_table(params, results, {})
    assert table.loc["base", "membership_signal"] == "loss" and table.loc["base", "membership_auc"] == 0.52
    row = table.loc["full-nodp"]
    assert row.membership_signal == "reference" and row.delta_auc_low == pytest.approx(0.2)
    assert row.exposure_highest_low == 14.0 and row.canary_repetitions == 4 and row.audit_epsilon_fdp == 0.9
    assert row.synthetic_pii_leak_high == pytest.approx(0.2059, abs=1e-4)  # 0 of 16 is not "0 [0, 0]"
    assert row.extraction_hits_high == pytest.approx(0.2059, abs=1e-4)
    assert table.loc["full-dp8", "epsilon"] == 7.9
    markdown = report.markdown_table(table)
    assert "0 [0, 0.21]" in markdown and "14 at 4×" in markdown
    assert "speedup" not in summary.deterministic_rows(table)[0]


# --- the rows notebooks 02 and 04 save ------------------------------------------------------------------
def test_sweep_and_utility_rows_pair_the_same_records(tiny):
    from ppt_core import pruning, utility

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
    record_files.save(paths, "attacks", attack_records(0.3, 1.5, -3.0))
    records = record_files.load_records(paths)
    assert records["attacks"]["members/ids"].dtype.kind == "U" and records["pruning"] == {}
    leaking = arm_attacks(delta=(0.3, 0.2, 0.4), exposures=((16, 14.0, 14.0),))
    quiet = arm_attacks(delta=(0.0, -0.04, 0.04), exposures=((16, 1.5, 1.5),))
    results = {"attacks": {"full-nodp": leaking, "pruned-nodp": leaking, "full-dp8": quiet, "pruned-dp8": quiet}}
    outcome = {c.key: c.outcome for c in verdicts.paper_claims(params, results, {}, records)}
    assert outcome["mitigates_memorisation"] == SUPPORTED and outcome["complements_privacy"] == SUPPORTED
    assert outcome["pairwise_best"] == outcome["speedup"] == INCONCLUSIVE


def test_leak_table_gives_each_fine_tuned_arm_its_verdict_and_the_members_it_would_need():
    table = verdicts.leak_table({"base": arm_attacks(), "full-nodp": arm_attacks(delta=(0.2, 0.1, 0.3)),
                                 "full-dp8": arm_attacks(delta=(0.02, -0.15, 0.2))})
    assert list(table.index) == ["full-nodp", "full-dp8"]  # base is its own start: nothing to calibrate by
    assert table.loc["full-nodp", "leak detected"] == SUPPORTED
    assert table.loc["full-dp8", "leak detected"] == INCONCLUSIVE
    assert table.loc["full-dp8", "members needed at this AUC"] == verdicts.required_sample_size(0.52)


# --- the study layer reads without torch ----------------------------------------------------------------
def test_the_verdicts_and_the_summary_import_without_torch():
    """Deciding and reporting read saved numbers only: importing them must not load torch (seconds, and a
    machine that reads a finished run needs no accelerator stack)."""
    import subprocess
    import sys

    code = ("import sys, ppt_core.verdicts, ppt_core.summary, ppt_core.pooling, ppt_core.report, "
            "ppt_core.record_files, ppt_core.roc, ppt_core.timing; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

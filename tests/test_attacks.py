"""The attack stage: membership (reference attack included), extraction and canaries against a tiny model that
memorised a few records, and every arm calibrated by its own starting model."""

import json

import numpy as np
import pytest
import torch

from ppt_core import data
from ppt_core.data import tokens
from ppt_core.leakage import canaries, extraction, membership
from ppt_core.models import load_model
from ppt_core.run import profiles
from ppt_core.stages import attacks

MEMORISED_TOKENS = 32  # records are truncated to this many tokens, for training and scoring alike


pytestmark = pytest.mark.usefixtures("one_thread")


# --- against a model that memorised a handful of records --------------------------------------------
@pytest.fixture(scope="module")
def memorised(tmp_path_factory, one_thread):
    """A fresh tiny model fine-tuned (all weights, non-private) to near-zero loss on 4 notes and 2
    copies of one canary. training.finetune trains LoRA only, and LoRA cannot move the tiny random
    model's frozen embeddings and norms far enough for near-zero loss, so this is a plain Adam loop."""
    params = profiles.get_profile("smoke")
    splits = data.build_dataset(params, tmp_path_factory.mktemp("data"))
    model, tokenizer = load_model("tiny-random-llama", device="cpu")
    notes = [r for r in splits.train if r["kind"] == "note"][:4]
    canary = splits.inserted_canaries[0]
    batch = tokens.encode(tokenizer, [r["text"] for r in notes] + [canary["text"]] * 2, MEMORISED_TOKENS)
    torch.manual_seed(0)
    steps = 200
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return model, tokenizer, splits, notes, canary, loss.item()


def _scores(model, tokenizer, texts):
    return membership.record_scores(model, tokenizer, texts, max_length=MEMORISED_TOKENS, min_k_percent=20,
                                 progress=False)


def _signals(model, tokenizer, texts, start=None):
    scores = _scores(model, tokenizer, texts)
    return membership.membership_signals(scores, None if start is None else _scores(*start, texts))


def test_membership_auc_near_one_on_memorised_records_and_near_half_on_unseen(memorised, tiny):
    model, tokenizer, splits, notes, _, final_loss = memorised
    assert final_loss < 0.25, f"the fixture did not memorise (loss {final_loss:.3f})"
    heldout_texts, public_texts = splits.texts("heldout", kind="note")[:24], splits.texts("public", kind="note")[:24]
    members = _signals(model, tokenizer, [r["text"] for r in notes], start=tiny)
    heldout = _signals(model, tokenizer, heldout_texts, start=tiny)
    start_members = _signals(*tiny, [r["text"] for r in notes])
    start_heldout = _signals(*tiny, heldout_texts)
    summary, _ = membership.membership_inference(members, heldout, start_members, start_heldout, n_boot=50)
    for signal in ("loss", "zlib", "min_k", "reference"):
        assert summary["signals"][signal]["auc"]["value"] >= 0.95, signal
    # the starting model never saw the members: the arm's gain over it is the leak
    assert summary["signals"]["reference"]["delta_auc_vs_start"]["low"] > 0.3
    assert list(summary["signals"]["loss"]["tpr_at_fpr"]) == ["0.1"]  # 24 non-members resolve 10%, not 1%
    # Two sets the model never saw, from one distribution: no signal (AUC sd ~ 0.085 at 24 vs 24).
    public = _signals(model, tokenizer, public_texts, start=tiny)
    unseen, _ = membership.membership_inference(heldout, public, n_boot=50)
    for signal in ("loss", "zlib", "min_k", "reference"):
        assert abs(unseen["signals"][signal]["auc"]["value"] - 0.5) < 0.25, signal


def test_extraction_and_canaries_succeed_on_memorised_data_only(memorised, tiny):
    model, tokenizer, splits, notes, canary, _ = memorised
    kw = dict(prefix_tokens=8, suffix_tokens=MEMORISED_TOKENS - 9, progress=False)  # suffix stays in the trained span
    member_rows = extraction.extraction_attack(model, tokenizer, notes, **kw)
    heldout_rows = extraction.extraction_attack(model, tokenizer, splits.heldout[:4], **kw)
    assert np.mean([r["bertscore_f1"] for r in member_rows]) > np.mean([r["bertscore_f1"] for r in heldout_rows]) + 0.2
    assert np.mean([r["exact_suffix"] for r in member_rows]) >= 0.5
    assert not any(r["exact_suffix"] for r in heldout_rows)

    reference = splits.reference_canaries[0]
    inserted, never = (canaries.canary_exposure(model, tokenizer, c, rank_cap=20, n_samples=16)
                       for c in (canary, reference))
    assert inserted["method"] == "exact" and inserted["rank"] <= 2 and inserted["exposure_low"] > 18
    assert never["method"] == "beyond cap" and never["exposure_low"] <= never["exposure_high"] < 16
    band = canaries.reference_band([dict(never, repetitions=0)])
    assert inserted["exposure_low"] > band[1]
    assert canaries.canary_extraction(model, tokenizer, [canary, reference], progress=False) == [True, False]
    # The secret gain over the starting model (what the verdicts rank): large on the trained secret only.
    references = splits.reference_canaries
    gains = (canaries.canary_secret_logprobs(model, tokenizer, [canary, *references])
             - canaries.canary_secret_logprobs(*tiny, [canary, *references]))
    assert gains[0] > 10 and canaries.rank_p_value(gains[0], gains[1:]) == pytest.approx(1 / (len(references) + 1))


# --- every arm ------------------------------------------------------------------------------------
def test_bf16_attacks_read_from_stored_bf16_weights_give_autocasts_numbers(memorised, tiny, monkeypatch):
    """attack_arm scoring in bf16 reads the frozen weights from a bf16 copy (evaluation.bf16_weights): every number
    is the one autocast's per-pass casts give, and the model leaves with its float32 weights."""
    import contextlib
    import copy

    from ppt_core.scoring import evaluation

    model, tokenizer, splits, *_ = memorised
    model = copy.deepcopy(model)
    params = dict(profiles.get_profile("smoke"), bf16_scoring=True, canary_rank_cap=4)
    start_scores = attacks.score_arm(tiny[0], tiny[1], splits, params, progress=False)
    stored, _ = attacks.attack_arm(model, tokenizer, splits, params, arm="full-nodp", start_scores=start_scores,
                                   progress=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    monkeypatch.setattr(evaluation, "bf16_weights", lambda model, enabled: contextlib.nullcontext())
    cast, _ = attacks.attack_arm(model, tokenizer, splits, params, arm="full-nodp", start_scores=start_scores,
                                 progress=False)
    assert json.dumps(stored, sort_keys=True) == json.dumps(cast, sort_keys=True)


def test_attack_arms_calibrates_each_arm_by_its_own_start_wherever_it_stands(monkeypatch):
    params = profiles.get_profile("smoke")
    calls = {}
    monkeypatch.setattr(attacks.models, "load_arm", lambda params, name: (f"model of {name}", None))
    monkeypatch.setattr(attacks.arm_training, "load_sample_counts", lambda params, name: np.zeros(1))
    monkeypatch.setattr(attacks.artifacts, "read_json", lambda path: {"epsilon": 8.0})
    monkeypatch.setattr(attacks, "attack_inputs", lambda *a, **k: None)  # nothing kept, nothing read back

    def attack_arm(model, tokenizer, splits, params, *, arm, start_scores=None, **trained):
        calls[arm] = start_scores
        return {"arm": arm}, {"scores": f"scores of {arm}"}

    monkeypatch.setattr(attacks, "attack_arm", attack_arm)
    names = ["pruned-dp8", "full-nodp", "base", "pruned-noft"]  # fine-tuned arms before their starts
    summaries, details = attacks.attack_arms(params, names, None, progress=False)
    assert list(summaries) == list(details) == names
    assert calls == {"base": None, "pruned-noft": None, "full-nodp": "scores of base",
                     "pruned-dp8": "scores of pruned-noft"}
    with pytest.raises(ValueError, match="pruned-noft is not among the arms"):
        attacks.attack_arms(params, ["base", "pruned-nodp"], None, progress=False)


def test_attack_arms_scores_the_audit_canaries_only_where_no_trainers_curve_holds_them(monkeypatch):
    """The audit of an arm whose trainer scored the audit canaries after every pass reads that curve (its step 0
    is the start): scoring them again on the arm or its start would be work nothing reads."""
    params = profiles.get_profile("smoke")
    scored = {}
    monkeypatch.setattr(attacks.models, "load_arm", lambda params, name: (name, None))
    monkeypatch.setattr(attacks.arm_training, "load_sample_counts", lambda params, name: np.zeros(1))
    monkeypatch.setattr(attacks.artifacts, "read_json", lambda path: {"epsilon": None, "private": False})
    monkeypatch.setattr(attacks, "attack_inputs", lambda *a, **k: None)
    curve = {"steps": [0, 3], "passes": [0.0, 1.0], "logprobs": [[0.0], [1.0]]}
    monkeypatch.setattr(attacks.arm_training, "load_audit_curve",
                        lambda params, name: curve if name == "full-nodp" else None)

    def attack_arm(model, tokenizer, splits, params, *, arm, score_audit, **kw):
        scored[arm] = score_audit
        return {}, {"scores": {}}

    monkeypatch.setattr(attacks, "attack_arm", attack_arm)
    attacks.attack_arms(params, ["base", "pruned-noft", "full-nodp", "pruned-nodp"], None, progress=False)
    assert scored == {"base": False, "pruned-noft": True, "full-nodp": False, "pruned-nodp": True}


def test_audit_table_reads_a_non_private_claim_as_infinite():
    audit = {"m": 32, "included": 15, "epsilon_lower_one_run": 0.0, "epsilon_lower_fdp": 0.2,
             "auc": {"value": 0.61, "low": 0.42, "high": 0.79}}
    table = attacks.audit_table({"base": {}, "full-nodp": {"audit": dict(audit, claimed_epsilon=None)},
                                 "full-dp8": {"audit": dict(audit, claimed_epsilon=7.9)}})
    assert list(table.index) == ["full-nodp", "full-dp8"]
    assert table.loc["full-nodp", "claimed ε"] == np.inf and table.loc["full-dp8", "claimed ε"] == 7.9
    assert table.loc["full-dp8", "audit AUC [95%]"] == "0.61 [0.42, 0.79]"
    assert table.loc["full-dp8", "m (included)"] == "32 (15)"


def test_the_claim_after_each_pass_is_a_fresh_accountants_and_the_table_reads_it():
    from ppt_core.dp import privacy

    guarantee = {"private": True, "noise_multiplier": 0.9, "sample_rate": 0.04, "delta": 1e-5, "accountant": "prv"}
    curve = {"steps": [0, 25, 50], "passes": [0, 1, 2], "logprobs": [[0.0], [0.0], [0.0]]}
    claimed = attacks.claimed_after_steps(guarantee, curve)
    assert claimed[0] == 0.0 and claimed[2] == privacy.accountant_epsilon(0.9, 0.04, 50, 1e-5, "prv") > claimed[1] > 0
    assert attacks.claimed_after_steps(dict(guarantee, private=False), curve) is None
    assert attacks.claimed_after_steps(guarantee, None) is None
    points = [{"step": 25 * t, "passes": float(t), "claimed_epsilon": c, "epsilon_lower_one_run": 0.0,
               "epsilon_lower_fdp": 0.1 * t, "auc": 0.5} for t, c in ((1, claimed[1]), (2, claimed[2]))]
    table = attacks.audit_over_training_table({"base": {}, "full-dp8": {"audit": {"over_training": points}},
                                               "full-nodp": {"audit": {"over_training": [dict(points[0],
                                                                                             claimed_epsilon=None)]}}})
    assert list(table.index) == [("full-dp8", 1.0), ("full-dp8", 2.0), ("full-nodp", 1.0)]
    assert table.loc[("full-dp8", 2.0), "claimed ε(t)"] == claimed[2]
    assert table.loc[("full-nodp", 1.0), "claimed ε(t)"] == np.inf


# --- what notebook 06 shows -------------------------------------------------------------------------
def test_membership_tables_show_every_signal_and_no_delta_for_the_starts():
    auc = {"value": 0.61, "low": 0.52, "high": 0.7}
    delta = {"value": 0.11, "low": 0.02, "high": 0.2}
    results = {"base": {"membership": {"signals": {"loss": {"auc": auc, "tpr_at_fpr": {"0.1": 0.2}}}}},
               "full-nodp": {"membership": {"members": 200, "signals": {
                   "reference": {"auc": auc, "delta_auc_vs_start": delta, "tpr_at_fpr": {"0.1": 0.3}}},
                   "sampled_members": {"members": 150, "signals": {"reference": {"auc": auc,
                                                                                 "delta_auc_vs_start": delta}}}}}}
    table = attacks.membership_table(results)
    assert table.loc[("base", "loss"), "ΔAUC vs start [95%]"] == "–"
    assert table.loc[("full-nodp", "reference"), "AUC [95%]"] == "0.61 [0.52, 0.7]"
    assert table.loc[("full-nodp", "reference"), "TPR @ FPR 0.1"] == 0.3
    assert table.loc[("full-nodp", "reference"), "P(no leak reads ΔAUC ≤ 0.05)"] == 0.41  # at 200 a side
    sampled = attacks.sampled_members_table(results)
    assert list(sampled.index) == ["full-nodp"] and sampled.loc["full-nodp", "members drawn ≥ 1 time"] == 150


def test_canary_and_extraction_tables_read_the_summaries():
    rows = [{"id": f"c{i}", "repetitions": reps, "method": method, "rank": None, "exposure_low": low,
             "exposure_high": high, "greedy_extracted": hit, "secret_gain": gain}
            for i, (reps, method, low, high, hit, gain) in enumerate([
                (0, "exact", 2.5, 2.5, False, 0.2), (0, "exact", 1.0, 1.0, False, -0.1),
                (4, "exact", 6.0, 6.0, True, 3.0), (4, "beyond cap", 2.0, 9.0, False, 0.1)])]
    summary = canaries.canary_summary(rows, secret_space=10**6, rank_cap=100)
    table = attacks.canary_table({"full-nodp": {"canaries": summary}, "base": {}})
    assert list(table.index) == ["full-nodp"]  # an arm without canaries has no row
    assert "0 reps: above null / exact / of" not in table.columns  # the reference canaries are the null itself
    assert table.loc["full-nodp", "4 reps: above null / exact / of"] == "1 / 1 / 2"
    assert table.loc["full-nodp", "reference canaries"] == 2
    assert table.loc["full-nodp", "reference gain max (nats)"] == 0.2
    assert table.loc["full-nodp", "greedy extraction at highest reps"] == 0.5
    row = {"bertscore_f1": 0.9, "exact_suffix": True, "pii_in_suffix": ["MRN"], "pii_extracted": ["MRN"]}
    heldout = dict(row, bertscore_f1=0.5, exact_suffix=False, pii_extracted=[])
    extracted = extraction.extraction_summary([row] * 4, [heldout] * 4, np.ones(4), np.ones(4), n_boot=50)
    table = attacks.extraction_table({"full-nodp": {"extraction": extracted}})
    assert table.loc["full-nodp", "gap [95%]"] == "0.4 [0.4, 0.4]"  # every record alike: no spread to resample
    assert table.loc["full-nodp", "records"] == 4
    assert table.loc["full-nodp", "records a side for this gap"] == "1"  # no spread: one record a side detects it
    assert table.loc["full-nodp", "records a side for it"] == "–"  # equal perplexities: no size detects a gap of 0


def test_a_dp_arm_publishes_nothing_about_which_records_it_drew(smoke_run):
    """`sampled_members` (how many members the sampler drew, and the AUC on them) is trainer-only for a DP arm."""
    results = json.loads(smoke_run.paths.results.read_text())
    for arm, trained in results["training"].items():
        assert ("sampled_members" in results["attacks"][arm]["membership"]) == (not trained["private"]), arm


def test_notebook_06_run_again_attacks_only_the_arms_whose_inputs_changed(smoke_run, copy_run, monkeypatch):
    """Every arm attacked before on the same inputs is read back with the numbers it had; a changed setting that
    attack_arm reads attacks every arm again, a retrained arm (a new training digest) only that arm."""
    from ppt_core.run import artifacts
    from ppt_core.stages import arm_training

    paths = copy_run(smoke_run, "data", "models", "attacks")
    params = profiles.get_profile("smoke", run_name=paths.root.name)
    names = ["base", "pruned-noft", "full-nodp", "full-dp8", "pruned-nodp", "pruned-dp8"]
    splits = data.load_splits(paths.data)
    first, _ = attacks.attack_arms(params, names, splits, progress=False)
    published = json.loads(smoke_run.paths.results.read_text())["attacks"]
    assert json.dumps(artifacts.rounded(first), sort_keys=True) == json.dumps(published, sort_keys=True)
    attacked = []
    original = attacks.attack_arm
    monkeypatch.setattr(attacks, "attack_arm", lambda *a, arm, **k: attacked.append(arm) or original(*a, arm=arm, **k))
    again, _ = attacks.attack_arms(params, names, splits, progress=False)
    assert attacked == [] and json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)
    result = paths.model("pruned-dp8") / arm_training.RESULT_FILE
    artifacts.write_json(result, dict(artifacts.read_json(result), inputs="a model trained again"))
    attacks.attack_arms(params, names, splits, progress=False)
    assert attacked == ["pruned-dp8"]
    attacked.clear()
    attacks.attack_arms(dict(params, n_bootstrap=params["n_bootstrap"] + 1), names, splits, progress=False)
    assert sorted(attacked) == sorted(names)

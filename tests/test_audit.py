"""The one-run audit: jax-privacy's bounds behave as the theory says; over training, a memorising non-private run
is caught (lower bound above 1 after its last pass, one point per pass), a DP run at ε = 1 never is, at any pass,
and its ε after t passes is a fresh accountant's; a bound above the claim stops the study."""

import numpy as np
import pytest

from ppt_core import data
from ppt_core.dp import train_config, training
from ppt_core.leakage import audit
from ppt_core.run import profiles
from ppt_core.stages import arm_training

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bounds_on_synthetic_scores():
    rng = np.random.default_rng(0)
    included = rng.random(256) < 0.5
    perfect = audit.epsilon_lower_bounds(included.astype(float), included, delta=1e-5)
    noise = audit.epsilon_lower_bounds(rng.normal(size=256), included, delta=1e-5)
    assert perfect["one_run"] > 2 and perfect["fdp"] >= perfect["one_run"] and perfect["auc"] == 1
    assert noise["one_run"] == 0 and noise["fdp"] == 0
    # More canaries, same perfect separation: a tighter (higher) bound.
    more = rng.random(1024) < 0.5
    assert audit.epsilon_lower_bounds(more.astype(float), more, delta=1e-5)["one_run"] > perfect["one_run"]


def test_the_bounds_multiple_testing_is_pre_specified_and_the_auc_is_mann_whitney():
    """Each bound is jax-privacy's at one pre-specified Split, not its default Bonferroni over the thresholds the
    scores happen to produce; the AUC is the empirical one (scipy's Mann-Whitney U / (n_in n_out)), not
    jax-privacy's hull AUC, which reads higher on the same scores."""
    from scipy import stats

    rng = np.random.default_rng(1)
    included = rng.random(512) < 0.5
    scores = rng.normal(size=512) + 1.5 * included
    bounds = audit.epsilon_lower_bounds(scores, included, delta=1e-5)
    auditing = audit.jax_privacy_auditing()
    auditor = auditing.CanaryScoreAuditor(scores[included], scores[~included])
    split = auditing.Split(threshold_estimation_frac=audit.THRESHOLD_SPLIT, seed=audit.SPLIT_SEED)
    assert bounds["fdp"] == auditor.epsilon_one_run_fdp(audit.SIGNIFICANCE, 1e-5, threshold_strategy=split)
    assert bounds["one_run"] == auditor.epsilon_one_run(audit.SIGNIFICANCE, 1e-5, threshold_strategy=split)
    assert bounds["fdp"] != auditor.epsilon_one_run_fdp(audit.SIGNIFICANCE, 1e-5)  # Bonferroni's differs here
    u = stats.mannwhitneyu(scores[included], scores[~included]).statistic
    assert bounds["auc"] == pytest.approx(u / (included.sum() * (~included).sum()))
    assert auditor.attack_auroc() > bounds["auc"] + 0.005


def test_jax_privacy_is_used_without_jax():
    import sys

    audit.epsilon_lower_bounds(np.r_[1.0, 0.9, 0.0, 0.1], np.r_[True, True, False, False], delta=1e-5)
    assert "jax" not in sys.modules


def test_a_bound_above_the_claim_stops_with_the_arm_named():
    bounds = {"one_run": 1.3, "fdp": 2.1}
    audit.check_claim("pruned-dp8", bounds, 8.0)
    audit.check_claim("full-nodp", bounds, None)
    with pytest.raises(audit.GuaranteeViolation, match="'pruned-dp1'.*2.100.*1.000"):
        audit.check_claim("pruned-dp1", bounds, 1.0)
    with pytest.raises(audit.GuaranteeViolation, match="'pruned-dp1' after 2 passes: .*1.300"):
        audit.check_claim("pruned-dp1", {"one_run": 1.3, "fdp": 0.0}, 1.0, when="after 2 passes")


@pytest.fixture(scope="module")
def audit_data(tmp_path_factory):
    params = profiles.get_profile("smoke", n_audit_canaries=96)
    splits = data.build_dataset(params, tmp_path_factory.mktemp("data"))
    return params, splits


def _audit_over_training(splits, config, tiny):
    """Train LoRA on the tiny model through the study's own loop, on the audit canaries of train only (to keep
    the test short: the notes would not change the point), scoring every audit canary before training and
    after every pass; return the result and the audit's bounds after each pass, each against the accountant's
    ε after those steps."""
    model, tokenizer = tiny
    texts = [r["text"] for r in splits.train if r["kind"] == "audit"]
    probe = arm_training.audit_probe(tokenizer, splits.audit, config)
    _, result = training.finetune(model, tokenizer, texts, config, pass_probe=probe)
    curve = arm_training.audit_curve(result)
    claimed = [result.epsilon_after(step) for step in curve["steps"]]
    included = np.array([r["included"] for r in splits.audit])
    return result, audit.bounds_over_training(curve, included, delta=config.dp.delta if config.dp else 1e-5,
                                              claimed=claimed)


# Rank 16 on every projection and on the output head: the tiny model's frozen 64-wide head and norm leave the
# blocks' adapters too little room to raise one of 49k random tokens (rank 16 on the blocks alone stays at AUC 0.6).
MEMORISING = dict(progress=False, lora_rank=16, lr_schedule="constant", expected_batch_size=8, physical_batch_size=16,
                  epochs=4.0, max_length=16, lora_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj", "lm_head"])


def test_a_memorising_non_private_run_is_caught_and_climbs_over_the_passes(audit_data, tiny):
    """Rank 16 adapters, 4 passes, no DP: the model learns the included canaries' random words, and the audit after
    every pass (one point per pass) climbs and ends above 1."""
    params, splits = audit_data
    config = train_config.config_from_params(params, None, learning_rate=1e-2, **MEMORISING)
    result, points = _audit_over_training(splits, config, tiny)
    assert [p["step"] for p in points] == [result.batches_per_pass * t for t in range(1, 5)]
    assert [p["passes"] for p in points] == list(range(1, 5))
    assert all(p["claimed_epsilon"] is None for p in points)
    assert points[-1]["epsilon_lower_fdp"] > 1 and points[-1]["epsilon_lower_one_run"] > 0, points[-1]
    assert points[-1]["epsilon_lower_fdp"] > points[0]["epsilon_lower_fdp"]


def test_a_dp_run_at_epsilon_one_stays_below_its_claim_at_every_pass(audit_data, tiny):
    params, splits = audit_data
    config = train_config.config_from_params(params, 1.0, learning_rate=1e-2, **MEMORISING)
    result, points = _audit_over_training(splits, config, tiny)
    assert len(points) == 4 and result.epsilon <= 1.0
    assert points[-1]["claimed_epsilon"] == pytest.approx(result.epsilon, rel=1e-6)  # the run's own accountant
    for point in points:
        assert 0 < point["claimed_epsilon"] <= 1.0
        assert max(point["epsilon_lower_one_run"], point["epsilon_lower_fdp"]) <= point["claimed_epsilon"], point
    claims = [p["claimed_epsilon"] for p in points]
    assert claims == sorted(claims)  # ε(t) grows with the passes


def test_the_epsilon_after_t_passes_is_a_fresh_accountants_for_that_many_steps():
    from opacus.accountants import PRVAccountant, RDPAccountant

    result = training.TrainResult(losses=[], batch_sizes=[], sample_counts=[], heldout_losses=[], steps=60,
                                  sample_rate=0.05, expected_batch_size=5, n_records=100, epsilon=None, delta=1e-5,
                                  noise_multiplier=1.1, accountant="prv")
    for steps in (20, 40, 60):
        fresh = PRVAccountant()
        fresh.history = [(1.1, 0.05, steps)]
        assert result.epsilon_after(steps) == pytest.approx(fresh.get_epsilon(delta=1e-5), rel=1e-6)
    rdp = RDPAccountant()
    rdp.history = [(1.1, 0.05, 20)]
    assert training.TrainResult(**{**result.__dict__, "accountant": "rdp"}).epsilon_after(20) == pytest.approx(
        rdp.get_epsilon(delta=1e-5), rel=1e-9)
    assert training.TrainResult(**{**result.__dict__, "noise_multiplier": None}).epsilon_after(20) is None


def test_an_audit_curve_must_start_at_the_starting_model():
    with pytest.raises(ValueError, match="step 0"):
        audit.bounds_over_training({"steps": [5], "passes": [1.0], "logprobs": [[0.0, 1.0]]}, np.r_[True, False],
                                   delta=1e-5)


def test_a_missing_or_changed_auditor_stops_before_any_work(monkeypatch):
    params = profiles.get_profile("smoke")
    audit.check_params(params)  # the pinned jax-privacy has what the audit calls
    audit.check_params(dict(params, n_audit_canaries=0))

    class Changed:  # a jax-privacy whose auditor lost a method
        class CanaryScoreAuditor:
            def epsilon_one_run(self):
                return 0.0

    monkeypatch.setattr(audit, "jax_privacy_auditing", lambda: Changed)
    with pytest.raises(ValueError, match="has no CanaryScoreAuditor.epsilon_one_run_fdp, Split"):
        audit.check_params(params)

    def missing():
        raise ImportError("No module named 'jax_privacy'")

    monkeypatch.setattr(audit, "jax_privacy_auditing", missing)
    with pytest.raises(ValueError, match="cannot load jax-privacy's auditor .* run `make setup`"):
        audit.check_params(params)
    audit.check_params(dict(params, n_audit_canaries=0))  # no audit, nothing to load


def test_the_ceiling_is_the_most_m_canaries_can_show():
    """Perfect separation of the same m canaries bounds every audit of them; at the quick profile's 256 (126
    included) it sits below ε = 8, which is why no DP arm's claim of 8 can be refuted by this audit."""
    rng = np.random.default_rng(1)
    included = np.arange(256) < 126
    most = audit.ceiling(256, 126, 1e-5)
    for separation in (0.5, 2.0, 8.0):
        scores = rng.normal(size=256) + separation * included
        bounds = audit.epsilon_lower_bounds(scores, included, delta=1e-5)
        assert bounds["one_run"] <= most["one_run"] + 1e-9 and bounds["fdp"] <= most["fdp"] + 1e-9
    assert 2.9 < most["one_run"] < 3.1 and 6.2 < most["fdp"] < 6.4 < 8
    assert audit.ceiling(1024, 512, 1e-5)["fdp"] > most["fdp"]  # more canaries, a higher ceiling
    recorded = {"base": {}, "full-dp8": {"audit": {"m": 256, "ceiling_one_run": 3.4, "ceiling_fdp": 6.3}}}
    assert audit.ceiling_of(recorded) == {"m": 256, "one_run": 3.4, "fdp": 6.3} and audit.ceiling_of({}) is None

"""The implementation audit: white-box gradient canaries in the study's own DP optimizer.

A correct mechanism at ε = 1 and ε = 8 stays under its claim, near the ideal simulation's bound, with scores
distributed as the simulation's; each planted bug (half the noise, no clipping, drawing at 2q while q is
claimed) is flagged; a real DP run of the tiny model trains the same adapter bit for bit with the audit as
without it; the per-matrix noise check passes the study's optimizer, leaves it untouched, and names the one
matrix a broken optimizer forgets to noise. The mechanism's own steps run without a model (the same scratch
optimizer and the same code path the training hook steps), at the study's schedule (q = 1/17, 102 steps).
"""

import numpy as np
import pytest
import torch
from opacus.optimizers import DPOptimizer
from training_helpers import TEXTS, dp_config, prepared, small_config

from ppt_core.dp import privacy, training
from ppt_core.leakage import implementation_audit as ia

pytestmark = pytest.mark.usefixtures("one_thread")

STUDY_RATE, STUDY_STEPS, DELTA = 1 / 17, 102, 1e-5  # the default profile's schedule
CANARIES = 100_000  # the controls' bounds clear ε = 8 at this m (half noise 12.2, no clipping 13.5)


def claim_at(epsilon: float) -> ia.Claim:
    return ia.Claim.of(privacy.DPConfig(epsilon, DELTA, 1.0, "prv"), STUDY_RATE, STUDY_STEPS)


def arm_optimizer(claim: ia.Claim) -> DPOptimizer:
    """An Opacus DPOptimizer as the study builds one: the claim's σ and C, the mean over the expected batch."""
    return DPOptimizer(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(4))], lr=1e-2),
                       noise_multiplier=claim.noise_multiplier, max_grad_norm=claim.max_grad_norm,
                       expected_batch_size=16)


def test_score_is_the_subsampled_gaussian_log_likelihood_ratio():
    """log(p_in(y) / p_out(y)) with p_in the mixture (1-q) N(0, (σC)²) + q N(C, (σC)²), p_out = N(0, (σC)²)."""
    claim = ia.Claim(noise_multiplier=0.8, sample_rate=0.1, max_grad_norm=2.0, steps=1, delta=DELTA, epsilon=1.0)
    y = np.array([-3.0, 0.0, 1.0, 2.0, 1e4])
    sd = 0.8 * 2.0

    def density(x, mean):
        return np.exp(-((x - mean) ** 2) / (2 * sd**2))

    expected = np.log((0.9 * density(y[:4], 0) + 0.1 * density(y[:4], 2.0)) / density(y[:4], 0))
    scores = ia.step_scores(y, claim)
    assert np.allclose(scores[:4], expected)
    assert np.isfinite(scores[-1]) and scores[-1] > 1e3  # far out, no overflow


@pytest.mark.parametrize("epsilon", [1.0, 8.0])
def test_a_correct_mechanism_stays_under_its_claim_near_the_simulation(epsilon):
    """The canaries through a correct DPOptimizer: bound <= claim, not flagged, scores distributed as the ideal
    simulation's at the same (q, σ, T, m); the ceiling is far above. One run's bound varies from run to run as
    the simulation's does (at ε = 1, m = 20,000: 0 to 0.7 over six simulated runs), so its ratio to the
    simulation's median is checked loosely here and reported by the study."""
    claim = claim_at(epsilon)
    mechanism = ia.CanaryMechanism(arm_optimizer(claim), STUDY_RATE, claim, 20_000).run(claim.steps)
    record = ia.report(mechanism, simulation_runs=3)
    assert record["epsilon_lower"] <= record["claimed_epsilon"] and not record["flagged"]
    assert record["epsilon_lower"] > 0.1 * epsilon  # the audit has power: not a bound stuck at 0
    assert record["ratio_to_simulation"] > 0.4
    simulations = ia.simulated_bounds(claim, 20_000, 3, claim.steps)
    assert list(simulations) == sorted(simulations) and record["simulation_range"] == [simulations[0], simulations[2]]
    assert record["simulation_epsilon_lower"] == simulations[1] and record["simulation_runs"] == 3
    assert record["simulations_below"] == sum(s < record["epsilon_lower"] for s in simulations)
    assert record["scores_match_claim"]
    assert record["ceiling"] > 1.5 * epsilon
    assert record["sample_rate_drawn"] == STUDY_RATE and record["optimizer_class"] == "DPOptimizer"
    ia.check_claim(f"pruned-dp{epsilon:g}", record)


@pytest.fixture(scope="module")
def controls():
    claim = ia.control_claim(STUDY_RATE, STUDY_STEPS, DELTA, "prv", 1.0)
    return claim, ia.controls(arm_optimizer(claim), claim, CANARIES, simulation_runs=1)


def test_half_noise_and_no_clipping_are_flagged_by_the_bound(controls):
    claim, table = controls
    assert claim.epsilon == pytest.approx(ia.CONTROL_EPSILON, abs=0.01)
    for bug in ("half noise", "no clipping"):
        assert table[bug]["epsilon_lower"] > claim.epsilon and table[bug]["flagged"], bug
        with pytest.raises(ia.ImplementationAuditFailure, match=f"'control {bug}'.* above the ε"):
            ia.check_claim(f"control {bug}", table[bug])
    assert table["half noise"]["noise_multiplier_used"] == pytest.approx(claim.noise_multiplier / 2)
    assert table["no clipping"]["optimizer_class"] == "UnclippedDPOptimizer"


def test_a_doubled_sample_rate_is_flagged(controls):
    """Drawing at 2q (true ε 15.2) lifts the bound far above a correct arm's, and the scores fail the KS test."""
    claim, table = controls
    record = table["double sample rate"]
    assert record["sample_rate_drawn"] == 2 * claim.sample_rate and record["sample_rate_claimed"] == claim.sample_rate
    assert record["flagged"] and not record["scores_match_claim"]
    assert record["epsilon_lower"] > 1.5 * record["simulation_epsilon_lower"]
    with pytest.raises(ia.ImplementationAuditFailure, match="'control double sample rate'.*KS test"):
        ia.check_claim("control double sample rate", dict(record, epsilon_lower=0.0))


def test_the_ks_test_fails_on_half_noise_only():
    """At m = 10,000 the scores of a correct mechanism pass the two-sample test against the simulation; with
    half the noise they fail it."""
    claim = claim_at(8.0)
    correct = ia.CanaryMechanism(arm_optimizer(claim), STUDY_RATE, claim, 10_000, seed=3).run(claim.steps)
    half = arm_optimizer(claim)
    half.noise_multiplier = claim.noise_multiplier / 2
    broken = ia.CanaryMechanism(half, STUDY_RATE, claim, 10_000, seed=3).run(claim.steps)
    assert ia.scores_match_simulation(correct) > 0.01
    assert ia.scores_match_simulation(broken) < 1e-10


def test_canaries_are_clipped_by_the_optimizer_and_drawn_at_its_rate():
    """With σ = 0 the noised sum at a drawn canary's coordinate is exactly C (its norm, 1 to 4 C, clipped),
    0 elsewhere; rows beyond ROWS_PER_PASS go through virtual steps; the inclusion draw is its own stream."""
    claim = claim_at(8.0)
    optimizer = arm_optimizer(claim)
    optimizer.noise_multiplier = 0.0
    mechanism = ia.CanaryMechanism(optimizer, 0.5, claim, 3000, rows_per_pass=7)
    assert mechanism.norms.min() >= claim.max_grad_norm and np.mean(mechanism.norms > 1.5) > 0.5
    coordinates = np.arange(0, 40, 2)
    sums = mechanism._noised_sum(coordinates, mechanism.norms[coordinates])
    assert np.allclose(sums[coordinates], claim.max_grad_norm, rtol=1e-5)
    assert np.count_nonzero(sums) == len(coordinates)
    assert 0.45 < mechanism.included.mean() < 0.55
    assert not np.array_equal(mechanism.included, ia.inclusion(3000, seed=1))


# --- a real DP run of the tiny model ---------------------------------------------------------------


def test_the_adapter_trained_with_the_audit_is_the_one_trained_without(tiny):
    """The hook's canaries, their noise and the per-matrix check leave the run's batches, noise and adapter
    bit for bit as without them; the hook reports a bound under the claim for the run's own schedule."""
    model, tokenizer = tiny
    config = small_config(epochs=2.0, dp=dp_config(target_epsilon=8.0))
    with_audit, result = training.finetune(model, tokenizer, TEXTS, config, TEXTS[:4],
                                           step_hook=ia.TrainingHook(m=2000, simulation_runs=1))
    without, plain = training.finetune(model, tokenizer, TEXTS, config, TEXTS[:4])
    for (name, a), (_, b) in zip(with_audit.named_parameters(), without.named_parameters()):
        assert torch.equal(a, b), name
    assert result.heldout_losses == plain.heldout_losses and result.batch_sizes == plain.batch_sizes
    record = result.implementation_audit
    assert record["steps"] == result.steps and record["sample_rate_drawn"] == result.sample_rate
    assert record["noise_multiplier_used"] == pytest.approx(result.noise_multiplier)
    assert not record["flagged"]
    assert set(record["noise_per_matrix"]) == {n for n, p in with_audit.named_parameters() if "lora_" in n}
    assert plain.implementation_audit is None


def test_the_hook_reads_the_rate_the_sampler_draws_at(tiny):
    config = small_config(dp=dp_config())
    trained = prepared(tiny, config)
    trained.loader.batch_sampler.sample_rate *= 2  # a sampler drawing at 2q
    mechanism = ia.CanaryMechanism.of_training(trained, m=100)
    assert mechanism.sample_rate == 2 * trained.sample_rate and mechanism.claim.sample_rate == trained.sample_rate


# --- the per-matrix noise check -----------------------------------------------------------------------


def test_the_noise_check_passes_the_study_optimizer_and_leaves_it_untouched(tiny):
    config = small_config(dp=dp_config())
    trained = prepared(tiny, config)
    names = ia.lora_parameter_names(trained)
    weights = [p.detach().clone() for p in trained.lora_params]
    rng = torch.get_rng_state()
    history = list(trained.engine.accountant.history)
    ratios = ia.check_noise_per_matrix(trained.optimizer, names)
    assert set(ratios) == set(names) and all("lora_" in name for name in names)
    assert all(abs(r - 1) < ia.NOISE_TOLERANCE for r in ratios.values())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p, w) for p, w in zip(trained.lora_params, weights))
    assert trained.engine.accountant.history == history
    assert all(getattr(p, "summed_grad", None) is None for p in trained.lora_params)


def test_the_noise_check_names_a_matrix_left_without_noise(tiny):
    """Planted bug (d): an optimizer that noises every LoRA matrix but one is stopped, naming that matrix; the
    study's own control (the arm's optimizer made to forget its middle matrix) is flagged, the arm's is not."""
    config = small_config(dp=dp_config())
    trained = prepared(tiny, config)
    names = ia.lora_parameter_names(trained)
    skipped = trained.optimizer.params[2]
    control = ia.unnoised_matrix_control(trained.optimizer, names)
    assert control["flagged"] and control["matrix"] == names[len(names) // 2] and control["ratio"] < 0.5
    assert all(getattr(p, "summed_grad", None) is None for p in trained.lora_params)  # the arm's optimizer untouched

    trained.optimizer.__class__ = ia.forgets_noise_on(type(trained.optimizer), 2)
    assert skipped is trained.optimizer.params[2]
    with pytest.raises(ia.MissingNoise, match=f"LoRA matrix '{names[2]}'"):
        ia.check_noise_per_matrix(trained.optimizer, names)


# --- what the study publishes, and where it stops ------------------------------------------------


def test_the_study_publishes_each_arm_and_control_and_stops_on_a_missed_control(controls):
    """results.json's section holds each DP arm and each control with its claim, bound, simulation, ceiling and
    flag; results.md shows them; a control the audit did not flag stops the study, naming the arm and the bug."""
    from ppt_core.stages import arm_training
    from ppt_core.study import report

    claim, table = controls
    mechanism = ia.CanaryMechanism(arm_optimizer(claim), STUDY_RATE, claim, 2000).run(claim.steps)
    noise_control = {"matrix": "lora_B", "ratio": 0.0, "tolerance": ia.NOISE_TOLERANCE, "flagged": True}
    audited = ia.report(mechanism, simulation_runs=1) | {"noise_per_matrix": {"lora_A": 1.01, "lora_B": 0.98},
                                                         "noise_control": noise_control, "controls": table}
    result = training.TrainResult([], [], [], [], claim.steps, STUDY_RATE, 16, 100, implementation_audit=audited)
    record = arm_training.implementation_audit_record({"pruned-dp8": result, "pruned-nodp": training.TrainResult(
        [], [], [], [], claim.steps, STUDY_RATE, 16, 100)})
    assert set(record) == {"pruned-dp8", "controls"}
    assert set(record["controls"]) == {f"pruned-dp8: {bug}" for bug in ia.PLANTED_BUGS}
    assert set(record["pruned-dp8"]) == {*arm_training.IMPLEMENTATION_AUDIT_COLUMNS, *arm_training.NOISE_CHECK_KEYS}
    markdown = report.implementation_audit_markdown(record)
    assert "| pruned-dp8 |" in markdown and "| control: pruned-dp8: half noise |" in markdown
    assert markdown.count("**yes**") == len(ia.PLANTED_BUGS) + 1  # and the matrix left without noise
    assert "| pruned-dp8 | 2 | 0.98–1.01 | lora_B | 0 | **yes** |" in markdown
    assert "Per claimed ε" not in markdown  # one arm per ε: nothing to pool
    ranged = dict(record["pruned-dp8"], simulation_range=[1.5, 3.0])
    pooled = report.implementation_audit_markdown({"full-dp8 (seed 0)": dict(ranged, epsilon_lower=2.0),
                                                   "full-dp8 (seed 1)": dict(ranged, epsilon_lower=4.0)})
    claimed = record["pruned-dp8"]["claimed_epsilon"]
    assert f"| {round(claimed, 1):g} | 2 | 3 (2–4) |" in pooled
    assert "| 1.5–3 |" in pooled and "| 1 of 2 |" in pooled  # the seed-1 audit lies above every simulation
    ia.check_controls("pruned-dp8", audited)
    missed = dict(table, **{"half noise": dict(table["half noise"], flagged=False)})
    with pytest.raises(ia.ImplementationAuditFailure, match="'pruned-dp8'.*half noise"):
        ia.check_controls("pruned-dp8", dict(audited, controls=missed))
    with pytest.raises(ia.MissingNoise, match="'pruned-dp8'.*'lora_B' without noise"):
        ia.check_controls("pruned-dp8", dict(audited, noise_control=dict(noise_control, flagged=False)))


def test_each_dp_arm_draws_its_own_canaries_and_the_run_its_controls():
    from ppt_core.run import profiles
    from ppt_core.stages import arm_training

    params = profiles.get_profile("smoke")
    full, pruned = (arm_training.implementation_audit_hook(params, arm) for arm in ("full-dp8", "pruned-dp8"))
    assert full.seed != pruned.seed and full.controls_seed == pruned.controls_seed == params["seed"]
    assert full.m == params["implementation_audit_canaries"] and full.with_controls
    assert arm_training.implementation_audit_hook(dict(params, implementation_audit_canaries=0), "full-dp8") is None

"""The implementation audit: white-box gradient canaries in the study's own DP-SGD, in one training run.

Why it exists. The black-box one-run audit (`ppt_core.leakage.audit`) scores 256 text canaries; its ceiling (the bound
perfect separation would give) is about 6.3, so it cannot falsify the ε = 8 a DP arm claims, and a DP-SGD that
forgot its noise, its clipping or its sample rate would pass it unseen. Here the auditor is the strongest one
the threat model of Nasr et al. (USENIX Security 2023) and Steinke, Nasr & Jagielski (NeurIPS 2023) allows:
it inserts gradients of its own choosing and sees every noised step.

What it does. m canaries (`DEFAULT_CANARIES`); canary i is a record whose gradient is a Dirac on coordinate i
of a canary parameter vector that the model's output does not depend on (no forward pass; no model weight
depends on a canary coordinate), with norm between C and 4C (`CANARY_NORMS`, in units of the claimed clip
bound C), so clipping has work to do. Each canary is included with probability 1/2 by a seeded draw of its
own (`CANARY_STREAMS`, apart from every other seed of the study). At every logical step of the arm, each
included canary is drawn by a Poisson draw at the rate the arm's sampler draws at (read from its loader, not
from the plan: a wrong sample rate shows), and the drawn canaries go through a scratch optimizer of the arm
optimizer's own class, with its noise multiplier, clip bound, expected batch size and loss reduction: its
`clip_and_accumulate` clips them (a skipped clipping shows), its `add_noise` noises the sum (too little noise
shows), through the same `signal_skip_step` virtual steps the loop uses. The scratch optimizer holds only the
canary parameter and draws its noise from a generator of its own, so the arm's data batches, its noise and
its adapters are bit for bit those of a run without the audit (tested).

Cost. Opacus's clipping needs dense per-record gradients: k drawn canaries over m coordinates are k*m floats
a step (about 3e8 at m = 100,000, q = 1/17). The canary vector is therefore cut into blocks of `CANARY_BLOCK`
coordinates and each block is one step of the scratch optimizer, its drawn canaries cut into physical passes
of at most `ROWS_PER_PASS` rows: q*m/2 * CANARY_BLOCK floats a training step. This is the same mechanism as
one step over the whole vector: a Dirac canary's norm, its clipping and the noise on its coordinate never
involve another block's coordinates, and the noise is independent per coordinate.

What the auditor computes. Canary i's score is the log-likelihood ratio of the Poisson-subsampled Gaussian
over the steps at the CLAIMED (σ, q, C): Σ_t log(1 − q + q·exp((y_t·C − C²/2) / (σC)²)), y_t the noised
clipped sum read at its coordinate. The ε lower bound is jax-privacy's one-run f-DP bound (Mahloujifar et
al. 2024) on the scores and the inclusions, loaded by `ppt_core.leakage.audit` without jax. Multiple testing is
pre-specified, as in the black-box audit (`audit.threshold_strategy`): jax-privacy's `Split` picks the threshold on
a random half of the canaries and bounds ε on the other half at that one threshold, not the data-dependent
Bonferroni over every threshold of the hull (with this many canaries, half of them bound ε more tightly than
all of them under a correction that grows with the number of thresholds).

What it promises. A correct DP arm's bound stays at or under its claimed ε (a bound above it, which a correct
arm gives with probability at most 0.05, stops the study naming the arm: `check_claim`), and its canaries'
scores follow the claim's (a two-sample KS test against the ideal simulation, `KS_ALPHA`; it catches what
the bound is too weak to falsify). Beside each bound sit the ideal simulation at the same (q, σ, T, m)
(numpy, the same score, the same bound: what a perfect implementation would give) and the ceiling at that m
(perfect separation). Planted bugs that claim ε = 8 (`PLANTED_BUGS`: half the noise, no clipping, drawing at
2q) are controls the audit must flag. The canaries live in a parameter of their own, so they cannot see a
LoRA matrix that the optimizer forgets to noise; `check_noise_per_matrix`, Opacus's own noise-level test on a
copy of the arm's optimizer, catches that per matrix before the arm trains.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from ppt_core.dp import privacy
from ppt_core.leakage import audit

# m: the bound grows slowly with m and its ceiling with it (twice ε = 8 at 100,000), the cost per step linearly
# (timings.json's implementation_audit_seconds_per_step): a canary needs no forward pass, only a coordinate.
DEFAULT_CANARIES = 100_000
CANARY_BLOCK = 1024  # canary coordinates per scratch-optimizer step: k*CANARY_BLOCK floats of dense gradients
ROWS_PER_PASS = 256  # drawn canaries per physical pass of one block (virtual steps beyond): 1 MB of rows
CANARY_NORMS = (1.0, 4.0)  # canary gradient norms, log-uniform, in units of the claimed C: all >= C, most above
# Ideal simulations per audit. One run's bound varies between runs as much as the audit's does (at ε = 1 from 0 to
# about 0.8 of 1 at m = 100,000), so the audit is read against their spread: the median (the ratio's denominator),
# the range, and the audit's rank among them. A correct implementation's bound falls inside the range of 11 runs
# with probability 10/12 and above all of them with 1/12.
SIMULATION_RUNS = 11
# The scores' consistency with the claim: a two-sample KS test of the audited scores against an ideal simulation's
# must not reject at this level. Not a privacy bound: a check that the mechanism is the claimed one, which catches
# what the bound is too weak to falsify (drawing at 2q raises the true ε at the study's schedule from 8 to 15.2,
# and the one-run bound, at about half the true ε, reaches 8 in about half the runs at m = 100,000). A correct
# arm fails it with probability 0.001; a planted bug's scores lie far from the claim's.
KS_ALPHA = 1e-3
CANARY_STREAMS = {"inclusion": 0x1A0D1, "draws": 0x1A0D2, "norms": 0x1A0D3, "noise": 0x1A0D4, "simulation": 0x1A0D5}
CONTROL_EPSILON = 8.0  # the planted-bug controls claim the study's largest ε, the one the black-box audit cannot test
PLANTED_BUGS = ("half noise", "no clipping", "double sample rate")

# The per-matrix noise check (Opacus's test_noise_level): the summed squared noised gradient of a matrix over
# k zero-gradient steps, k * d * (σC/B)², must come within NOISE_TOLERANCE of its expectation. Its relative
# std is sqrt(2 / (k d)); k is the smallest that puts the tolerance NOISE_CHECK_STDS of them away.
NOISE_TOLERANCE = 0.15
NOISE_CHECK_STDS = 6.0


def _stream(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([CANARY_STREAMS[name], int(seed)]))


# --- the claim, and the score --------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What the accountant is told: noise multiplier σ, sample rate q, clip bound C, steps T, δ, and its ε."""

    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    steps: int
    delta: float
    epsilon: float

    @classmethod
    def of(cls, dp: privacy.DPConfig, sample_rate: float, steps: int) -> Claim:
        """The claim of a DP config for a schedule: σ calibrated for (q, T) and the accountant's ε for it."""
        sigma = privacy.noise_multiplier(dp, sample_rate, steps)
        epsilon = privacy.accountant_epsilon(sigma, sample_rate, steps, dp.delta, dp.accountant)
        return cls(sigma, sample_rate, dp.max_grad_norm, steps, dp.delta, epsilon)


def step_scores(noised_sums: np.ndarray, claim: Claim) -> np.ndarray:
    """Each canary's log-likelihood ratio for one step (float64), from its coordinate's noised clipped sum y:
    log(1 − q + q·exp((y·C − C²/2)/(σC)²)) at the claimed (σ, q, C), computed without overflow."""
    c, q = claim.max_grad_norm, claim.sample_rate
    z = (np.asarray(noised_sums, dtype=np.float64) * c - c * c / 2) / (claim.noise_multiplier * c) ** 2
    return np.logaddexp(math.log1p(-q), math.log(q) + z)


def epsilon_lower_bound(scores: np.ndarray, included: np.ndarray, delta: float) -> float:
    """jax-privacy's one-run f-DP lower bound on ε at 95% confidence, its threshold pre-specified by a split."""
    auditing = audit.jax_privacy_auditing()
    scores, included = np.asarray(scores, dtype=float), np.asarray(included, dtype=bool)
    auditor = auditing.CanaryScoreAuditor(scores[included], scores[~included])
    return float(auditor.epsilon_one_run_fdp(audit.SIGNIFICANCE, delta, threshold_strategy=audit.threshold_strategy()))


def inclusion(m: int, seed: int) -> np.ndarray:
    """(m,) bool: which canaries are included, each with probability 1/2, from a stream of its own."""
    return _stream("inclusion", seed).random(m) < 0.5


# --- the canaries in the arm's optimizer ---------------------------------------------------------


class CanaryMechanism:
    """m Dirac canaries stepped through a scratch copy of the arm's DP optimizer, one step per training step.

    `optimizer`: the arm's Opacus DPOptimizer (its class and its noise multiplier, clip bound, expected batch
    size and loss reduction are used; the object itself is never touched). `sample_rate`: the rate its sampler
    draws at. `claim`: what the accountant was told (the scores use it). `scores` accumulate over the steps.
    """

    def __init__(self, optimizer, sample_rate: float, claim: Claim, m: int = DEFAULT_CANARIES, seed: int = 0,
                 rows_per_pass: int = ROWS_PER_PASS):
        self.claim, self.m, self.sample_rate, self.rows_per_pass = claim, int(m), float(sample_rate), rows_per_pass
        self.included = inclusion(self.m, seed)
        low, high = np.log(CANARY_NORMS)
        self.norms = claim.max_grad_norm * np.exp(_stream("norms", seed).uniform(low, high, self.m))
        self.draws = _stream("draws", seed)
        self.parameter = torch.nn.Parameter(torch.zeros(min(CANARY_BLOCK, self.m)))
        noise = torch.Generator().manual_seed(int(_stream("noise", seed).integers(2**62)))
        self.scratch = type(optimizer)(
            torch.optim.SGD([self.parameter], lr=0.0), noise_multiplier=optimizer.noise_multiplier,
            max_grad_norm=optimizer.max_grad_norm, expected_batch_size=optimizer.expected_batch_size,
            loss_reduction=optimizer.loss_reduction, generator=noise, secure_mode=optimizer.secure_mode)
        self.scores = np.zeros(self.m)
        self.steps, self.seconds = 0, 0.0

    @classmethod
    def of_training(cls, training, m: int = DEFAULT_CANARIES, seed: int = 0) -> CanaryMechanism:
        """The mechanism of a prepared DP run (`training.Training`): its optimizer, its sampler's rate and the
        claim its config makes for its plan."""
        if training.world is not None:
            raise ValueError("the implementation audit runs in one process (its canaries are not sharded)")
        if training.config.dp.grad_sample_mode != "hooks":
            raise ValueError("the implementation audit needs grad_sample_mode='hooks': ghost clipping clips inside "
                             "the backward pass, which the canaries (no forward pass) do not run")
        claim = Claim.of(training.config.dp, training.plan.sample_rate, training.plan.steps)
        return cls(training.optimizer, training.loader.batch_sampler.sample_rate, claim, m, seed)

    def step(self) -> None:
        """One training step for the canaries: draw, clip, sum and noise them block by block; add each canary's
        log-likelihood ratio for this step to its score."""
        started = time.perf_counter()
        drawn = np.flatnonzero(self.included & (self.draws.random(self.m) < self.sample_rate))  # sorted
        width = self.parameter.numel()
        for start in range(0, self.m, width):
            end = min(self.m, start + width)
            rows = drawn[np.searchsorted(drawn, start):np.searchsorted(drawn, end)]
            self.scores[start:end] += step_scores(self._noised_sum(rows - start, self.norms[rows])[: end - start],
                                                  self.claim)
        self.steps += 1
        self.seconds += time.perf_counter() - started

    def _noised_sum(self, coordinates: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """One logical step of the scratch optimizer: the Dirac rows at `coordinates` (one block), in physical
        passes signalled as the loop signals them, clipped, summed and noised by the arm optimizer's class;
        returns the noised sum (the optimizer's mean times its divisor), one value per coordinate."""
        passes = np.array_split(np.arange(len(coordinates)), max(1, math.ceil(len(coordinates) / self.rows_per_pass)))
        for i, rows in enumerate(passes):
            grad_sample = torch.zeros(len(rows), self.parameter.numel())
            grad_sample[torch.arange(len(rows)), torch.as_tensor(coordinates[rows])] = torch.as_tensor(
                norms[rows], dtype=grad_sample.dtype)
            self.parameter.grad_sample = grad_sample
            self.scratch.signal_skip_step(do_skip=i < len(passes) - 1)
            self.scratch.step()
            if i < len(passes) - 1:
                self.scratch.zero_grad()
        divisor = self.scratch.expected_batch_size if self.scratch.loss_reduction == "mean" else 1
        noised = (self.parameter.grad.detach() * divisor).numpy().astype(np.float64)
        self.scratch.zero_grad()
        return noised

    def run(self, steps: int) -> CanaryMechanism:
        """`steps` steps without a model (the controls; the same mechanism the training hook steps)."""
        for _ in range(steps):
            self.step()
        return self

    def epsilon_lower(self) -> float:
        return epsilon_lower_bound(self.scores, self.included, self.claim.delta)


# --- the ideal simulation and the ceiling --------------------------------------------------------

SIMULATION_CHUNK = 50_000  # canaries simulated at once: T x 50,000 float64 draws


def simulated_scores(claim: Claim, m: int, seed: int, steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, included) of a perfect implementation of the claim: numpy Poisson draws at q, each drawn
    canary clipped to exactly C, Gaussian noise of std σC, the same score."""
    rng, steps = _stream("simulation", seed), claim.steps if steps is None else steps
    included = rng.random(m) < 0.5
    scores = np.empty(m)
    for start in range(0, m, SIMULATION_CHUNK):
        n = min(SIMULATION_CHUNK, m - start)
        drawn = (rng.random((steps, n)) < claim.sample_rate) & included[start:start + n]
        y = claim.max_grad_norm * drawn + rng.normal(0.0, claim.noise_multiplier * claim.max_grad_norm, (steps, n))
        scores[start:start + n] = step_scores(y, claim).sum(0)
    return scores, included


@functools.lru_cache(maxsize=64)  # a pure function of a claim: the controls share the arm's
def simulated_bounds(claim: Claim, m: int, runs: int = SIMULATION_RUNS, steps: int | None = None) -> tuple:
    """The ε lower bounds of `runs` ideal simulations at the claim's (q, σ, T) and m canaries, sorted."""
    return tuple(sorted(epsilon_lower_bound(*simulated_scores(claim, m, seed, steps), claim.delta)
                        for seed in range(runs)))


def simulated_bound(claim: Claim, m: int, runs: int = SIMULATION_RUNS, steps: int | None = None) -> float:
    """The median ε lower bound over `runs` ideal simulations at the claim's (q, σ, T) and m canaries."""
    return float(np.median(simulated_bounds(claim, m, runs, steps)))


@functools.lru_cache(maxsize=64)
def ceiling(m: int, delta: float) -> float:
    """The largest bound m canaries can give (perfect separation), by the same split."""
    included = inclusion(m, seed=0)
    return epsilon_lower_bound(included.astype(float), included, delta)


KS_SEED = 1_000  # the simulation the KS test compares against: apart from those of `simulated_bound`
# The simulated reference holds KS_REFERENCE times m scores. A reference of only m scores carries its own sampling
# noise into every audit of that claim (one atypical draw skews them all); ten times as many make the test nearly
# the one-sample test against the claimed distribution itself.
KS_REFERENCE = 10


@functools.lru_cache(maxsize=8)  # a pure function of the claim: an arm's report and its controls share it
def reference_scores(claim: Claim, m: int, steps: int) -> np.ndarray:
    """KS_REFERENCE * m scores of an ideal implementation of `claim` over `steps` steps (the KS test's reference)."""
    return simulated_scores(claim, KS_REFERENCE * m, KS_SEED, steps)[0]


def scores_match_simulation(mechanism: CanaryMechanism) -> float:
    """Two-sample Kolmogorov-Smirnov p-value of the audited canaries' scores against an ideal simulation's at
    the same claim and steps (`reference_scores`): small when the implementation's scores are not the claim's."""
    reference = reference_scores(mechanism.claim, mechanism.m, mechanism.steps)
    return float(stats.ks_2samp(mechanism.scores, reference).pvalue)


# --- the hook in the training loop, the report, the stop ------------------------------------------


class ImplementationAuditFailure(audit.GuaranteeViolation):
    """A correct arm's implementation audit bounds ε above its claim: the DP-SGD code is broken."""


class TrainingHook:
    """The implementation audit of one DP run, as `training.finetune(..., step_hook=...)` calls it: `start`
    once the DP optimizer exists (the per-matrix noise check, then the canaries), `step` after every logical
    step, `finish` after the last (the report, and with `with_controls` the planted-bug controls at the run's
    schedule and its optimizer's class, drawn from `controls_seed`)."""

    def __init__(self, m: int = DEFAULT_CANARIES, seed: int = 0, simulation_runs: int = SIMULATION_RUNS,
                 with_controls: bool = False, controls_seed: int = 0):
        self.m, self.seed, self.simulation_runs, self.with_controls = m, seed, simulation_runs, with_controls
        self.controls_seed = controls_seed
        self.mechanism, self.noise_check, self.noise_control = None, None, None

    def start(self, training) -> None:
        if training.config.dp is None:
            raise ValueError("the implementation audit audits a DP run: its config has no dp")
        names = lora_parameter_names(training)
        self.noise_check = check_noise_per_matrix(training.optimizer, names)
        self.noise_control = unnoised_matrix_control(training.optimizer, names) if self.with_controls else None
        self.mechanism = CanaryMechanism.of_training(training, self.m, self.seed)

    def step(self, training) -> None:
        self.mechanism.step()

    def finish(self, training) -> dict:
        record = report(self.mechanism, self.simulation_runs) | {"noise_per_matrix": self.noise_check}
        if self.with_controls:
            dp, claim = training.config.dp, self.mechanism.claim
            planted = control_claim(claim.sample_rate, claim.steps, dp.delta, dp.accountant, dp.max_grad_norm)
            record["controls"] = controls(training.optimizer, planted, self.m, self.controls_seed,
                                          self.simulation_runs)
            record["noise_control"] = self.noise_control
        return record


def report(mechanism: CanaryMechanism, simulation_runs: int = SIMULATION_RUNS) -> dict:
    """Claimed ε, the audit's bound, its ratio to the claim and to the ideal simulation, the ceiling, and what
    the implementation used beside what was claimed (σ, q, C), with the canaries' cost a step."""
    claim, bound = mechanism.claim, mechanism.epsilon_lower()
    simulations = simulated_bounds(claim, mechanism.m, simulation_runs, mechanism.steps)
    simulated = float(np.median(simulations))
    ks_pvalue = scores_match_simulation(mechanism)
    return {
        "claimed_epsilon": claim.epsilon, "epsilon_lower": bound, "ratio_to_claim": bound / claim.epsilon,
        "simulation_epsilon_lower": simulated, "ratio_to_simulation": bound / simulated if simulated else None,
        "simulation_range": [simulations[0], simulations[-1]], "simulation_runs": len(simulations),
        "simulations_below": sum(s < bound for s in simulations),
        "ceiling": ceiling(mechanism.m, claim.delta), "above_claim": bound > claim.epsilon,
        "scores_ks_pvalue": ks_pvalue, "scores_match_claim": ks_pvalue >= KS_ALPHA,
        "flagged": bound > claim.epsilon or ks_pvalue < KS_ALPHA,
        "canaries": mechanism.m, "included": int(mechanism.included.sum()), "steps": mechanism.steps,
        "delta": claim.delta, "noise_multiplier_claimed": claim.noise_multiplier,
        "noise_multiplier_used": float(mechanism.scratch.noise_multiplier),
        "sample_rate_claimed": claim.sample_rate, "sample_rate_drawn": mechanism.sample_rate,
        "max_grad_norm_claimed": claim.max_grad_norm, "max_grad_norm_used": float(mechanism.scratch.max_grad_norm),
        "optimizer_class": type(mechanism.scratch).__name__,
        "threshold": f"jax-privacy Split({audit.THRESHOLD_SPLIT}, seed={audit.SPLIT_SEED})",
        "seconds_per_step": mechanism.seconds / max(1, mechanism.steps),
    }


def check_claim(arm: str, record: dict) -> None:
    """Stop, naming the arm, when its implementation audit bounds ε above the claim or its canaries' scores are
    not those of the claimed mechanism."""
    where = f"arm {arm!r}: the implementation audit (white-box gradient canaries in its own DP optimizer, " \
            f"m = {record['canaries']})"
    fix = "the clipping, the noise or the sample rate is not what was claimed; stop and find the bug"
    if record["epsilon_lower"] > record["claimed_epsilon"]:
        raise ImplementationAuditFailure(
            f"{where} bounds ε from below by {record['epsilon_lower']:.3f} at {1 - audit.SIGNIFICANCE:.0%} "
            f"confidence, above the ε = {record['claimed_epsilon']:.3f} the accountant claims: {fix}")
    if record["scores_ks_pvalue"] < KS_ALPHA:
        raise ImplementationAuditFailure(
            f"{where}: the canaries' scores differ from an ideal implementation's of the claim (σ = "
            f"{record['noise_multiplier_claimed']:.4g}, q = {record['sample_rate_claimed']:.4g}, C = "
            f"{record['max_grad_norm_claimed']:g}) by a KS test at p = {record['scores_ks_pvalue']:.3g} "
            f"< {KS_ALPHA:g}: {fix}")


def check_controls(arm: str, record: dict) -> None:
    """Stop, naming the arm, when a planted bug of its implementation audit `record` passes unflagged (a
    `controls` row, or the matrix of its `noise_control`): an audit that cannot fire on its positive control is
    a design to fix, and its silence on the arm would be no evidence."""
    noise = record.get("noise_control")
    if noise is not None and not noise["flagged"]:
        raise MissingNoise(f"arm {arm!r}: the per-matrix noise check did not flag the planted bug that leaves "
                           f"{noise['matrix']!r} without noise (ratio {noise['ratio']:.3g}): it cannot tell a "
                           "matrix without noise from the arm's; stop and find why")
    missed = [bug for bug, control in record.get("controls", {}).items() if not control["flagged"]]
    if missed:
        raise ImplementationAuditFailure(
            f"arm {arm!r}: the implementation audit did not flag the planted bug(s) {', '.join(missed)} (claiming "
            f"ε = {CONTROL_EPSILON:g}): with these canaries it cannot tell a broken DP-SGD from the arm's; raise "
            "implementation_audit_canaries")


# --- the planted-bug controls --------------------------------------------------------------------


def unclipped_optimizer_class(optimizer_class):
    """A subclass of `optimizer_class` whose clip_and_accumulate sums the per-record gradients unclipped."""

    class Unclipped(optimizer_class):
        def clip_and_accumulate(self):
            for p in self.params:
                grad = self._get_flat_grad_sample(p).to(p.dtype).sum(0)
                p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad

    Unclipped.__name__ = f"Unclipped{optimizer_class.__name__}"
    return Unclipped


def controls(optimizer, claim: Claim, m: int = DEFAULT_CANARIES, seed: int = 0,
             simulation_runs: int = SIMULATION_RUNS) -> dict:
    """The planted-bug controls at `claim` (which claims CONTROL_EPSILON): the canary mechanism of the arm
    optimizer's class with half the noise, without clipping, and drawing at 2q while q is claimed; each
    report's `flagged` says whether the audit caught it. Arms of one schedule and optimizer share them."""
    return copy.deepcopy(_controls(type(optimizer), optimizer.expected_batch_size, optimizer.loss_reduction, claim,
                                   m, seed, simulation_runs))


@functools.lru_cache(maxsize=8)
def _controls(optimizer_class, expected_batch_size, loss_reduction: str, claim: Claim, m: int, seed: int,
              simulation_runs: int) -> dict:
    base = dict(noise_multiplier=claim.noise_multiplier, max_grad_norm=claim.max_grad_norm,
                expected_batch_size=expected_batch_size, loss_reduction=loss_reduction)
    bugs = {"half noise": (optimizer_class, dict(base, noise_multiplier=claim.noise_multiplier / 2), 1),
            "no clipping": (unclipped_optimizer_class(optimizer_class), base, 1),
            "double sample rate": (optimizer_class, base, 2)}
    table = {}
    for name in PLANTED_BUGS:
        planted_class, settings, rate = bugs[name]
        planted = planted_class(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0), **settings)
        mechanism = CanaryMechanism(planted, rate * claim.sample_rate, claim, m, seed).run(claim.steps)
        table[name] = report(mechanism, simulation_runs)
    return table


def control_claim(sample_rate: float, steps: int, delta: float, accountant: str, max_grad_norm: float) -> Claim:
    """The claim the controls make: ε = CONTROL_EPSILON at the arm's schedule, δ and clip bound."""
    return Claim.of(privacy.DPConfig(CONTROL_EPSILON, delta, max_grad_norm, accountant), sample_rate, steps)


# --- Opacus's noise check, per LoRA matrix ---------------------------------------------------------


class MissingNoise(RuntimeError):
    """A LoRA matrix whose noised gradient is not σC/B per coordinate: its updates are not private."""


def lora_parameter_names(training) -> list[str]:
    """The names of the optimizer's parameters (the LoRA matrices), in its order."""
    names = {id(p): name for name, p in training.peft_model.named_parameters()}
    return [names.get(id(p), f"parameter {i}") for i, p in enumerate(training.optimizer.params)]


def copy_of(optimizer, optimizer_class=None):
    """A DP optimizer of `optimizer`'s class (or `optimizer_class`) and settings over a deep copy of its torch
    optimizer (parameters and state), with a copy of its noise generator and no step hook: the accounting hook is
    a closure over the arm's accountant. (A DPOptimizer does not deep-copy itself: torch's __setstate__ reads a
    property that needs `original_optimizer` before it is restored.)"""
    scratch = (optimizer_class or type(optimizer))(
        copy.deepcopy(optimizer.original_optimizer), noise_multiplier=optimizer.noise_multiplier,
        max_grad_norm=optimizer.max_grad_norm, expected_batch_size=optimizer.expected_batch_size,
        loss_reduction=optimizer.loss_reduction, generator=copy.deepcopy(optimizer.generator),
        secure_mode=optimizer.secure_mode)
    for p in scratch.params:
        p.grad, p.grad_sample, p.summed_grad = None, None, None
    return scratch


def noise_check_steps(smallest_matrix: int) -> int:
    """Zero-gradient steps for NOISE_TOLERANCE to sit NOISE_CHECK_STDS standard deviations out on a matrix of
    `smallest_matrix` entries (the relative std of a chi-square with k*d degrees of freedom is sqrt(2 / (k d)))."""
    return max(1, math.ceil(2 * (NOISE_CHECK_STDS / NOISE_TOLERANCE) ** 2 / smallest_matrix))


def noise_ratios(optimizer, names: list[str], passes: int = 2, optimizer_class=None) -> dict:
    """Opacus's test_noise_level per matrix, on a copy of the arm's optimizer (`copy_of`, of `optimizer_class` if
    given) as the study steps it: {matrix: observed / expected}.

    Each of k steps gives every parameter a zero per-record gradient in `passes` physical passes signalled as
    the loop signals them; after the step, each matrix's noised gradient p.grad is read. The study trains with
    AdamW, whose update is normalised, so the check reads p.grad after add_noise and scale_grad, where Opacus's
    own test (with SGD) reads the weights: Σ_k ‖p.grad‖² must be within NOISE_TOLERANCE of k·d·(σC/B)². The
    copy has no accounting hook and the global RNGs are restored, so the arm's state and noise are untouched."""
    cuda = sorted({p.device.index or 0 for p in optimizer.params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda):  # a generator-less optimizer draws from the global RNGs
        scratch = copy_of(optimizer, optimizer_class)
        params = scratch.params
        steps = noise_check_steps(min(p.numel() for p in params))
        squares = [0.0] * len(params)
        for _ in range(steps):
            for i in range(passes):
                for p in params:
                    p.grad_sample = torch.zeros((1, *p.shape), dtype=p.dtype, device=p.device)
                scratch.signal_skip_step(do_skip=i < passes - 1)
                scratch.step()
                if i < passes - 1:
                    scratch.zero_grad()
            for j, p in enumerate(params):
                squares[j] += float(p.grad.double().square().sum())
            scratch.zero_grad()
    std = noise_std(optimizer)
    return {name: s / (steps * p.numel() * std**2) if std else math.inf for name, s, p in zip(names, squares, params)}


def noise_std(optimizer) -> float:
    """The noise a correct optimizer adds per coordinate of its (scaled) gradient: σC/B, or σC with loss
    reduction "sum"."""
    divisor = optimizer.expected_batch_size if optimizer.loss_reduction == "mean" else 1
    return optimizer.noise_multiplier * optimizer.max_grad_norm / divisor


def outside_tolerance(ratios: dict) -> list[str]:
    """The matrices whose noise ratio is not within NOISE_TOLERANCE of 1."""
    return [name for name, ratio in ratios.items() if not abs(ratio - 1) <= NOISE_TOLERANCE]


def check_noise_per_matrix(optimizer, names: list[str], passes: int = 2) -> dict:
    """`noise_ratios` of the arm's optimizer; raises MissingNoise naming the first matrix outside NOISE_TOLERANCE."""
    ratios = noise_ratios(optimizer, names, passes)
    for name in outside_tolerance(ratios):
        raise MissingNoise(
            f"LoRA matrix {name!r}: its noised gradient over zero-gradient steps has {ratios[name]:.3g} times the "
            f"variance (σC/B)² = {noise_std(optimizer):.4g}² per entry (σ = {optimizer.noise_multiplier:.4g}, C = "
            f"{optimizer.max_grad_norm:g}; allowed: within {NOISE_TOLERANCE:.0%}): the optimizer does not noise this "
            "matrix as claimed; stop and find the bug before training")
    return ratios


def forgets_noise_on(optimizer_class, index: int):
    """Planted bug (d): a subclass of `optimizer_class` whose add_noise leaves its parameter `index` without noise
    (the clipped sum passes through as its gradient)."""

    class ForgetsOneMatrix(optimizer_class):
        def add_noise(self):
            super().add_noise()
            target = self.params[index]
            target.grad = target.summed_grad.view_as(target).clone()

    ForgetsOneMatrix.__name__ = f"ForgetsOneMatrix{optimizer_class.__name__}"
    return ForgetsOneMatrix


def unnoised_matrix_control(optimizer, names: list[str], passes: int = 2) -> dict:
    """Planted bug (d) at the arm's own optimizer: the per-matrix check on a copy that forgets the noise of its
    middle matrix. {"matrix", "ratio", "tolerance", "flagged"}: flagged when the check names exactly that matrix."""
    index = len(names) // 2
    ratios = noise_ratios(optimizer, names, passes, forgets_noise_on(type(optimizer), index))
    return {"matrix": names[index], "ratio": ratios[names[index]], "tolerance": NOISE_TOLERANCE,
            "flagged": outside_tolerance(ratios) == [names[index]]}

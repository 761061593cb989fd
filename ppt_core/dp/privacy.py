"""The privacy guarantee of DP-LoRA: its settings, Opacus's wiring, and the accountant's epsilon.

DP-SGD here is Opacus's: its Poisson sampler, its per-record clipping and Gaussian noise
(`PrivacyEngine.make_private`), and its accountants, which turn (noise multiplier sigma, sample rate
q, steps) into the epsilon reported after training. This module promises that the (q, steps) the
accountant charges are exactly the ones the sampler and the loop use, that the reported epsilon never
exceeds the target (it raises otherwise), and it states the two limits of a per-record guarantee
from the same accountant: a secret repeated in k records (`group_epsilon`) and several DP arms
released from the same records (`composed_epsilon`).

Why not `make_private_with_epsilon`: Opacus 1.6.0 takes q = 1/len(loader) and rebuilds the loader
with int(1/q) batches per pass, which in floating point is one short of ceil(N/B) for some N (N=93,
B=1 gives 92); it then charges the accountant q = 1/92 for noise calibrated at 1/93, and the
reported epsilon exceeds the target (8.03 for a target of 8). Here sigma is calibrated for the exact
(q, steps) of `batching.schedule`, the Poisson loader is built with exactly ceil(N/B) batches per pass,
and `make_private` is told that the loader is already Poisson.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import warnings
from dataclasses import dataclass, replace

from torch import nn

from ppt_core.run.errors import TrainingConfigError

ACCOUNTANTS = ("prv", "rdp")
GRAD_SAMPLE_MODES = ("hooks", "ghost")
# Opacus registers full backward hooks on the LoRA layers; the frozen layers feeding them carry no
# input gradient, so torch warns on every backward pass. Harmless here: per-sample gradients come from
# the hooks' grad_output, which is always there.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")


@dataclass
class DPConfig:
    """DP-SGD settings. The guarantee: (target_epsilon, delta)-DP for each training record.

    target_epsilon: privacy budget for the whole training run (> 0; smaller is more private).
    delta: probability the epsilon bound may fail; must be < 1/N_train (a record-level leak of
        one whole record among N must stay unlikely).
    max_grad_norm: clipping bound C on each record's gradient (L2 over all LoRA parameters).
    accountant: "prv" (tight, numerical) or "rdp" (Renyi DP, a looser upper bound).
    grad_sample_mode: "hooks" (per-record gradients materialised) or "ghost" (ghost clipping:
        per-record gradient norms without materialising them, two backward passes).
    secure_mode: False draws the Poisson batches and the noise from seeded torch generators, so the
        noise is reproducible from the (public) seed: fine for a study, not for a release. True uses
        Opacus's secure mode (a cryptographic generator, noise robust to floating-point attacks); it
        needs the torchcsprng package.
    """

    target_epsilon: float
    delta: float
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    grad_sample_mode: str = "hooks"
    secure_mode: bool = False


# --- checks, and the noise multiplier ------------------------------------------------------------


def check_target_epsilon(epsilon: float) -> None:
    """Stop on a target ε that no DP-SGD run can reach."""
    if not epsilon > 0:
        raise TrainingConfigError(f"target_epsilon must be > 0 (got {epsilon})")


def check_dp(dp: DPConfig, n_records: int, sample_rate: float, steps: int, *, bf16: bool) -> None:
    """Stop with one clear message on a DP setting that cannot keep its promise for this schedule."""
    check_target_epsilon(dp.target_epsilon)
    if not 0 < dp.delta < 1 / n_records:
        raise TrainingConfigError(
            f"delta must be in (0, 1/N_train) = (0, {1 / n_records:.3g}) for {n_records} records (got {dp.delta}): "
            f"use e.g. delta={_round_down_power_of_ten(1 / n_records):g}"
        )
    if bf16 and dp.grad_sample_mode == "ghost":
        raise TrainingConfigError(
            "bf16=True works with grad_sample_mode='hooks' only: ghost clipping measures per-record gradient norms "
            "inside the bf16 backward pass, where the clip bound would not be exact; use bf16=False or 'hooks'"
        )
    if not dp.max_grad_norm > 0:
        raise TrainingConfigError(f"max_grad_norm must be > 0 (got {dp.max_grad_norm})")
    if dp.accountant not in ACCOUNTANTS:
        raise TrainingConfigError(f"accountant must be one of {ACCOUNTANTS} (got {dp.accountant!r})")
    if dp.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise TrainingConfigError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES} (got {dp.grad_sample_mode!r})")
    if dp.secure_mode and importlib.util.find_spec("torchcsprng") is None:
        raise TrainingConfigError(
            "secure_mode=True needs the torchcsprng package (Opacus's PrivacyEngine imports it for its cryptographic "
            "generator), and it is not installed. torchcsprng's last release (0.2.1) is built for torch 1.8, so "
            "build it from source against the installed torch (https://github.com/pytorch/csprng#installation), "
            "or set secure_mode=False for a reproducible study run (its noise is reproducible from the seed)"
        )
    noise_multiplier(for_schedule(dp, sample_rate, steps), sample_rate, steps)  # raises when it cannot be reached


@functools.lru_cache(maxsize=256)
def _noise_multiplier(target_epsilon, delta, sample_rate, steps, accountant) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PRV warns about its own numerical error bounds
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant=accountant))


def noise_multiplier(dp: DPConfig, sample_rate: float, steps: int) -> float:
    """Opacus's noise multiplier sigma reaching (target_epsilon, delta) after `steps` at rate q."""
    try:
        return _noise_multiplier(dp.target_epsilon, dp.delta, sample_rate, steps, dp.accountant)
    except ValueError as err:
        raise TrainingConfigError(
            f"target_epsilon={dp.target_epsilon} cannot be reached with the {dp.accountant} accountant "
            f"for {steps} steps at sample rate {sample_rate:.4g} and delta={dp.delta} ({err}): raise target_epsilon, "
            "train fewer steps (epochs) or use the prv accountant"
        ) from err


def for_schedule(dp: DPConfig, sample_rate: float, steps: int) -> DPConfig:
    """`dp` with an accountant that can calibrate and account it at this schedule: prv's numerical grid breaks
    down below PRV_MIN_NOISE_MULTIPLIER, where a target ε far above any claim puts σ (a dose arm between ε = 8
    and no noise at all); rdp, a looser upper bound, calibrates and accounts such an arm instead. Decided on
    rdp's σ, never below prv's for the same ε, so prv keeps every target where it works."""
    if dp.accountant != "prv" or not dp.target_epsilon > 0:
        return dp
    try:
        rdp_sigma = _noise_multiplier(dp.target_epsilon, dp.delta, sample_rate, steps, "rdp")
    except ValueError:  # not reachable at all: noise_multiplier says so, with the prv accountant named
        return dp
    return replace(dp, accountant="rdp") if rdp_sigma < PRV_MIN_NOISE_MULTIPLIER else dp


def _round_down_power_of_ten(x: float) -> float:
    return 10 ** math.floor(math.log10(x) - 1e-9)


# --- epsilon from the accountant ------------------------------------------------------------------


# PRV's numerical grid breaks down below this noise multiplier (inf, or gigabytes of memory): a group of
# k records has sigma/k, often far below it. RDP, a looser upper bound, stays exact there.
PRV_MIN_NOISE_MULTIPLIER = 0.2


def usable_accountant(mechanisms, accountant: str) -> str:
    """The accountant that composes `mechanisms`: `accountant`, or rdp where prv cannot (tiny sigma)."""
    if accountant == "prv" and min(sigma for sigma, _, _ in mechanisms) < PRV_MIN_NOISE_MULTIPLIER:
        return "rdp"
    return accountant


def composed_epsilon(mechanisms, delta: float, accountant: str) -> float:
    """Epsilon of several Poisson-subsampled Gaussian runs on the same records, one accountant history.

    `mechanisms`: (noise_multiplier, sample_rate, steps) per run, e.g. every DP arm released together.
    Accounted by `usable_accountant(mechanisms, accountant)`.
    """
    mechanisms = tuple((float(sigma), float(q), int(steps)) for sigma, q, steps in mechanisms)
    return _composed_epsilon(mechanisms, float(delta), accountant)


# A pure function of its arguments, asked the same questions many times in one study (a DP arm's progress bar and
# epsilon curve, each family's DP arm at one epsilon, the group-privacy table), each answer a PRV computation.
@functools.lru_cache(maxsize=1024)
def _composed_epsilon(mechanisms: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    from opacus.accountants import create_accountant

    fresh = create_accountant(mechanism=usable_accountant(mechanisms, accountant))
    fresh.history = list(mechanisms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PRV warns about its own numerical error bounds
        return float(fresh.get_epsilon(delta=delta))


def accountant_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str) -> float:
    """Epsilon of `steps` Poisson-subsampled Gaussian steps, from a fresh Opacus accountant (0 before any step)."""
    if int(steps) == 0:
        return 0.0
    return composed_epsilon([(noise_multiplier, sample_rate, steps)], delta, accountant)


def group_mechanism(noise_multiplier: float, sample_rate: float, steps: int, k: int) -> tuple[float, float, int]:
    """(noise multiplier, sample rate, steps) of k records treated as one unit: (sigma/k, 1-(1-q)^k, steps).

    Each of the k records joins a batch independently with rate q, so the unit is drawn with rate
    1 - (1 - q)^k; when drawn it adds between 1 and k clipped gradients, a sum of norm at most k*C,
    against noise of std sigma*C: a Gaussian mechanism with noise multiplier sigma/k.
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1 records (got {k})")
    return noise_multiplier / int(k), 1 - (1 - sample_rate) ** int(k), int(steps)


def group_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, k: int,
                  accountant: str) -> float:
    """Epsilon for a secret present in k training records (a canary repeated k times, a patient's k notes).

    The accountant's epsilon of `group_mechanism` is an upper bound on the group's privacy loss: the
    true output is a mixture over how many of the k copies were drawn and how their clipped gradients
    align, and every component is dominated (hockey-stick divergence is jointly convex and grows with
    the shift) by the worst case assumed here, all k clipped gradients aligned at full norm whenever
    any copy is drawn. k = 1 is the per-record epsilon. Far tighter than the generic group-privacy
    bound (k*eps, k*e^((k-1)*eps)*delta).
    """
    return composed_epsilon([group_mechanism(noise_multiplier, sample_rate, steps, k)], delta, accountant)


# --- Opacus's wiring -------------------------------------------------------------------------------


@dataclass
class Private:
    """The objects Opacus's make_private returns, and its engine (whose accountant counts the steps)."""

    module: nn.Module  # GradSampleModule around the PEFT model
    optimizer: object  # DPOptimizer: clips, sums, adds noise once per logical batch
    criterion: object  # the loss, or Opacus's ghost-clipping wrapper of it
    loader: object  # the Poisson loader (Opacus's secure generator in secure mode)
    engine: object  # PrivacyEngine


def make_private(peft_model, optimizer, criterion, loader, dp: DPConfig, sigma: float,
                 expected_batch_size: int) -> Private:
    """Opacus's DP-SGD around a LoRA model whose `loader` is already Poisson at exactly the planned q.

    The accountant is charged q = 1/len(loader); this checks that it equals the sampler's rate.
    """
    from opacus import PrivacyEngine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns when secure_mode is off (a seeded study wants that)
        engine = PrivacyEngine(accountant=dp.accountant, secure_mode=dp.secure_mode)
        private = engine.make_private(
            module=peft_model, optimizer=optimizer, data_loader=loader, criterion=criterion,
            noise_multiplier=sigma, max_grad_norm=dp.max_grad_norm, grad_sample_mode=dp.grad_sample_mode,
            poisson_sampling=False,  # the loader already is: Opacus's sampler with ceil(N/B) batches per pass
        )
    if dp.grad_sample_mode == "ghost":
        module, dp_optimizer, criterion, loader = private
    else:
        module, dp_optimizer, loader = private
    # What poisson_sampling=True would do: a second backward pass before the optimizer step is an error.
    module.forbid_grad_accumulation()
    sampler_rate = loader.batch_sampler.sample_rate
    if 1 / len(loader) != sampler_rate:
        raise RuntimeError(f"the accountant would charge q = 1/{len(loader)} while the sampler draws at "
                           f"q = {sampler_rate}")
    # Opacus scales the summed gradient by int(N * q), which floating point puts one short for some N
    # (N = 49, B = 1: 0). The mean over the plan's expected batch keeps the twins on one scale.
    dp_optimizer.expected_batch_size = expected_batch_size
    return Private(module, dp_optimizer, criterion, loader, engine)


def spent_epsilon(engine, dp: DPConfig, sample_rate: float, steps: int) -> float:
    """The accountant's epsilon after training; raises unless it charged exactly (q, steps) and stays within target."""
    history = engine.accountant.history
    charged = [(float(q), int(n)) for _, q, n in history]
    if charged != [(sample_rate, steps)]:
        raise RuntimeError(f"the accountant charged (q, steps) = {charged}, the plan was {[(sample_rate, steps)]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        epsilon = float(engine.get_epsilon(dp.delta))
    if epsilon > dp.target_epsilon:
        raise RuntimeError(f"the accountant reports epsilon = {epsilon:.4f} above the target {dp.target_epsilon}")
    return epsilon

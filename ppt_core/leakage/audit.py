"""The one-run privacy audit: an empirical lower bound on ε from a single training run.

Steinke, Nasr & Jagielski ("Privacy Auditing with One (1) Training Run", NeurIPS 2023): m audit
canaries are each included in the training data independently with probability 1/2 (ppt_core.data.splits
draws them, from a random stream of their own). After training, an auditor who knows the canaries but
not the coin flips scores each one and guesses "included" for the highest scores. If training was
(ε, δ)-DP, no guess can beat a coin that is right with probability e^ε / (1 + e^ε) by more than δ
allows; the number of correct guesses therefore bounds ε from below, at a stated confidence. The
f-DP version (Mahloujifar et al., "Auditing f-Differential Privacy in One Run", 2024) reads the same
guesses through the Gaussian trade-off curve and is tighter.

The score of a canary is its starting model's loss minus the arm's loss on the canary's random words
(`membership.audit_scores`): a model gains on random words only by having seen them.

The bounds are jax-privacy's (`jax_privacy.auditing.CanaryScoreAuditor`: `epsilon_one_run` and
`epsilon_one_run_fdp`). Their multiple testing is pre-specified (`threshold_strategy`): jax-privacy's `Split`
picks the threshold on a fixed random half of the canaries (`THRESHOLD_SPLIT`, seed `SPLIT_SEED`) and bounds ε
on the other half at that one threshold. jax-privacy's default, a Bonferroni correction over every threshold of
the ROC hull, divides the confidence by a number the scores choose; at perfect separation both give the same
ceiling. The audit's AUC is one estimator, the empirical ROC AUC (`ppt_core.uncertainty.roc.roc_auc`, Mann–Whitney: the
share of included-excluded pairs the score orders right), not jax-privacy's `attack_auroc`, which credits
classifiers that randomise between hull thresholds and reads higher on the same scores. Its `auditing`
module needs only dp-accounting, numpy and scipy; the package's `__init__` imports all of
jax-privacy, jax included (about 600 MB that nothing here would use), so the package is installed
without its dependencies and that one module is loaded from its file, unchanged.

Over training (`bounds_over_training`): the trainer scores the audit canaries before training and after
every expected pass (ppt_core.stages.arm_training.audit_curve), so the same auditor reads the arm after t passes
beside the accountant's ε after those steps. A non-private arm's bounds climb with t; a DP arm's must stay
under its own ε(t) at every t. The last point is the arm's audit; the curve is descriptive (its maximum
over passes is not itself a 95% bound). The verdicts read one pre-registered bound, the f-DP one
(`DECIDING_BOUND`); the one-run bound is reported beside it.

A lower bound above the ε an arm claims is not a finding: it means the guarantee is broken (or the
audit is), and `check_claim` stops the study there.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache, lru_cache

import numpy as np

from ppt_core.uncertainty.roc import roc_auc

SIGNIFICANCE = 0.05  # the lower bounds hold with 95% confidence
THRESHOLD_SPLIT = 0.5  # jax-privacy's Split: the share of canaries that choose the threshold
SPLIT_SEED = 0x5F1D  # the split's partition: fixed before any score is read
DECIDING_BOUND = "epsilon_lower_fdp"  # the one bound a leak verdict reads (pre-registered, not the max of two)


@cache
def jax_privacy_auditing():
    """jax_privacy.auditing, loaded from its file without running the package's __init__ (which imports jax)."""
    package = importlib.util.find_spec("jax_privacy")
    if package is None or not package.submodule_search_locations:
        raise ImportError("the one-run audit needs jax-privacy's auditing module: run `make setup` "
                          "(or `pip install --no-deps jax-privacy==2.0.0 && pip install dp-accounting==0.6.0`)")
    path = f"{package.submodule_search_locations[0]}/auditing.py"
    name = "ppt_core._jax_privacy_auditing"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


AUDITOR_API = ("CanaryScoreAuditor.epsilon_one_run", "CanaryScoreAuditor.epsilon_one_run_fdp", "Split")


def check_params(params: dict) -> None:
    """With audit canaries, jax-privacy's auditor loads and has what the audit calls: a missing or changed
    package stops before any work, not in notebook 06 after training."""
    if not int(params["n_audit_canaries"]):
        return
    try:
        auditing = jax_privacy_auditing()
    except (ImportError, AttributeError, OSError) as err:
        raise ValueError(f"the one-run audit cannot load jax-privacy's auditor ({err}); run `make setup`, or set "
                         "n_audit_canaries=0 to run without the audit") from None
    missing = [name for name in AUDITOR_API if not _has(auditing, name)]
    if missing:
        raise ValueError(f"jax-privacy's auditing has no {', '.join(missing)}: the audit needs "
                         "jax-privacy==2.0.0 (run `make setup`)")


def _has(module, dotted: str) -> bool:
    for part in dotted.split("."):
        if not hasattr(module, part):
            return False
        module = getattr(module, part)
    return True


def threshold_strategy():
    """The pre-specified multiple-testing strategy of every one-run bound: jax-privacy's Split at THRESHOLD_SPLIT
    with SPLIT_SEED."""
    return jax_privacy_auditing().Split(threshold_estimation_frac=THRESHOLD_SPLIT, seed=SPLIT_SEED)


def epsilon_lower_bounds(scores: np.ndarray, included: np.ndarray, *, delta: float,
                         significance: float = SIGNIFICANCE) -> dict:
    """Empirical ε lower bounds at confidence 1 - significance from audit-canary scores (higher = more
    likely included) and the true inclusions, each at the pre-specified `threshold_strategy`: {"one_run",
    "fdp", "m", "included", "auc"} (the empirical ROC AUC)."""
    scores, included = np.asarray(scores, dtype=float), np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1:
        raise ValueError(f"scores and included must be 1-D of one length (got {scores.shape} and {included.shape})")
    if min(included.sum(), (~included).sum()) < 2:  # the split leaves one of each on either side
        raise ValueError("the audit needs at least two included and two excluded canaries (got "
                         f"{int(included.sum())} of {len(included)} included): raise n_audit_canaries")
    auditor = jax_privacy_auditing().CanaryScoreAuditor(scores[included], scores[~included])
    split = threshold_strategy()
    return {
        "one_run": float(auditor.epsilon_one_run(significance, delta, threshold_strategy=split)),
        "fdp": float(auditor.epsilon_one_run_fdp(significance, delta, threshold_strategy=split)),
        "m": int(len(scores)),
        "included": int(included.sum()),
        "auc": roc_auc(scores[included], scores[~included]),
    }


@lru_cache(maxsize=64)
def ceiling(m: int, included: int, delta: float, significance: float = SIGNIFICANCE) -> dict:
    """The largest lower bounds m audit canaries (`included` of them included) can give at all: those of perfectly
    separated scores, {"one_run", "fdp"}. A claimed ε above them cannot be refuted by this audit, whatever leaks."""
    perfect = np.arange(m) < included
    bounds = epsilon_lower_bounds(perfect.astype(float), perfect, delta=delta, significance=significance)
    return {"one_run": bounds["one_run"], "fdp": bounds["fdp"]}


def ceiling_of(attacks: dict) -> dict | None:
    """The audit's ceiling as notebook 06 recorded it (results["attacks"][arm]["audit"]), or None without an audit:
    {"m", "one_run", "fdp"}, the same for every arm of a run (one audit split)."""
    for record in (attacks or {}).values():
        audited = (record or {}).get("audit") or {}
        if "ceiling_fdp" in audited:
            return {"m": audited["m"], "one_run": audited["ceiling_one_run"], "fdp": audited["ceiling_fdp"]}
    return None


def bounds_over_training(curve: dict, included, *, delta: float, claimed=None) -> list[dict]:
    """The audit after every expected pass of an arm's training, from its audit curve (`steps`, `passes`,
    `logprobs`: arm_training.audit_curve; point 0 is the starting model): per point after training started,
    {"step", "passes", "claimed_epsilon", "epsilon_lower_one_run", "epsilon_lower_fdp", "auc"}, each score
    the canary's log-likelihood gain since step 0. `claimed[i]` is the accountant's ε after `steps[i]` steps
    (None, or no list: a non-private arm)."""
    logprobs = np.asarray(curve["logprobs"], dtype=float)
    if not len(logprobs) or curve["steps"][0] != 0:
        raise ValueError("an audit curve starts with the starting model's scores (step 0)")
    claimed = claimed if claimed is not None else [None] * len(logprobs)
    points = []
    for step, passes, scores, epsilon in zip(curve["steps"][1:], curve["passes"][1:], logprobs[1:] - logprobs[0],
                                             claimed[1:]):
        bounds = epsilon_lower_bounds(scores, included, delta=delta)
        points.append({"step": int(step), "passes": float(passes), "claimed_epsilon": epsilon,
                       "epsilon_lower_one_run": bounds["one_run"], "epsilon_lower_fdp": bounds["fdp"],
                       "auc": bounds["auc"]})
    return points


class GuaranteeViolation(RuntimeError):
    """An audited lower bound above the ε the accountant claims: a broken guarantee, not a result."""


def check_claim(arm: str, bounds: dict, claimed_epsilon: float | None, *, when: str = "") -> None:
    """Stop when a private arm's audited lower bound (either of them: a safety stop, not a verdict) exceeds its
    claimed ε; `when` says at which point of training (e.g. "after 3 passes")."""
    if claimed_epsilon is None:
        return
    worst = max(bounds["one_run"], bounds["fdp"])
    if worst > claimed_epsilon:
        raise GuaranteeViolation(
            f"arm {arm!r}{' ' + when if when else ''}: the one-run audit bounds ε from below by {worst:.3f} at "
            f"{1 - SIGNIFICANCE:.0%} confidence, above the ε = {claimed_epsilon:.3f} the accountant claims. DP-SGD "
            "did not keep its guarantee (or the audit's canaries leaked outside training): stop and find the bug "
            "before reading any result")

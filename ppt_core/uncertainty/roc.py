"""ROC arithmetic of a membership score: the curve, its area, and the true-positive rate at a low
false-positive rate, for scores oriented so that higher means "member".

numpy only: the study's verdicts and its summary read AUCs from saved scores without
loading torch. The attacks that produce the scores live in ppt_core.leakage.membership.
"""

from __future__ import annotations

import numpy as np

LOW_FPRS = (0.001, 0.01, 0.1)  # reported where the non-members can resolve them (FPR >= 1/n)


def roc_curve(member: np.ndarray, nonmember: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1); higher score = member."""
    scores = np.concatenate([member, nonmember])
    is_member = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
    order = np.argsort(-scores, kind="stable")
    scores, is_member = scores[order], is_member[order]
    last_of_tie = np.r_[np.diff(scores) != 0, True]  # a threshold admits all tied scores at once
    tpr = np.cumsum(is_member)[last_of_tie] / len(member)
    fpr = np.cumsum(1 - is_member)[last_of_tie] / len(nonmember)
    return np.r_[0.0, fpr], np.r_[0.0, tpr]


def roc_auc(member: np.ndarray, nonmember: np.ndarray) -> float:
    """Area under the ROC curve: P(member score > non-member score), ties counting half. Counted from the sorted
    non-member scores (below each member's, and tied with it): the Mann-Whitney U of a rank sum, without the
    ranking's overhead, which a bootstrap pays a thousand times per interval."""
    ordered = np.sort(np.asarray(nonmember, dtype=float))
    member = np.asarray(member, dtype=float)
    below, not_above = np.searchsorted(ordered, member, "left"), np.searchsorted(ordered, member, "right")
    return float((below.sum() + not_above.sum()) / 2 / (len(member) * len(ordered)))


def tpr_at_fpr(member: np.ndarray, nonmember: np.ndarray, max_fpr: float) -> float:
    """The highest true-positive rate of any threshold whose false-positive rate is <= max_fpr."""
    fpr, tpr = roc_curve(member, nonmember)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def resolvable_fprs(n_nonmembers: int) -> list[float]:
    """The LOW_FPRS that n non-members can resolve: a threshold's FPR moves in steps of 1/n."""
    return [fpr for fpr in LOW_FPRS if fpr * n_nonmembers >= 1]

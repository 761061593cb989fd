"""ROC arithmetic on scores whose answers we can count by hand."""

import numpy as np
import pytest
import scipy.stats

from ppt_core.uncertainty import roc


def test_roc_auc_and_tpr_at_low_fpr():
    member, nonmember = np.array([0.9, 0.8, 0.7, 0.2]), np.array([0.6, 0.5, 0.4, 0.3])
    assert roc.roc_auc(member, nonmember) == pytest.approx(0.75)  # 12 of 16 pairs ordered right
    assert roc.roc_auc(nonmember, member) == pytest.approx(0.25)
    assert roc.roc_auc(np.ones(5), np.ones(5)) == pytest.approx(0.5)  # ties count half
    assert roc.tpr_at_fpr(member, nonmember, 0.0) == pytest.approx(0.75)
    assert roc.tpr_at_fpr(member, nonmember, 0.25) == pytest.approx(0.75)
    fpr, tpr = roc.roc_curve(member, nonmember)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


def test_a_tied_threshold_admits_every_tied_score_at_once():
    member, nonmember = np.array([1.0, 0.5]), np.array([0.5, 0.0])
    fpr, tpr = roc.roc_curve(member, nonmember)
    # the tie at 0.5 moves both rates in one step: no threshold separates the tied member and non-member
    assert list(zip(fpr, tpr)) == [(0, 0), (0, 0.5), (0.5, 1.0), (1.0, 1.0)]
    assert roc.tpr_at_fpr(member, nonmember, 0.4) == pytest.approx(0.5)


def test_only_the_fprs_the_non_members_resolve_are_reported():
    assert roc.resolvable_fprs(9) == []  # 1 of 9 non-members is an FPR of 0.11: none of 0.1% .. 10%
    assert roc.resolvable_fprs(10) == [0.1]
    assert roc.resolvable_fprs(1000) == list(roc.LOW_FPRS)


def test_roc_auc_is_the_mann_whitney_u_of_scipy():
    """The counted AUC equals scipy's Mann-Whitney U / (m n), ties included (scores rounded to force them)."""
    rng = np.random.default_rng(0)
    for n_member, n_nonmember in ((50, 50), (7, 300), (1, 1)):
        member, nonmember = (np.round(rng.normal(shift, 1, n), 1) for shift, n in ((0.4, n_member), (0, n_nonmember)))
        u = scipy.stats.mannwhitneyu(member, nonmember).statistic
        assert roc.roc_auc(member, nonmember) == pytest.approx(u / (n_member * n_nonmember), abs=1e-12)

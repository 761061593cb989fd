"""Membership inference on hand-built signals: the reference signal is what training gained, ΔAUC is paired
against the starting model on the same records, and what notebook 06 shows of it."""

import numpy as np
import pytest

from ppt_core.leakage import membership
from ppt_core.uncertainty.roc import roc_auc


def scores(loss):
    loss = np.asarray(loss, dtype=float)
    return {"loss": loss, "zlib_ratio": loss / 2, "min_k_logprob": -2 * loss}


def test_the_reference_signal_is_the_loss_training_removed():
    start, arm = scores([3.0, 3.0, 2.0]), scores([1.0, 2.5, 2.0])
    signals = membership.membership_signals(arm, start)
    assert list(signals["reference"]) == [2.0, 0.5, 0.0]
    assert list(signals["loss"]) == [-1.0, -2.5, -2.0]  # oriented: higher = more likely a member
    assert "reference" not in membership.membership_signals(arm)


def test_delta_auc_is_paired_on_the_same_records():
    """Records differ far more than the arm's gain: the AUC's own interval is wide, but each record keeping
    both its scores (the arm's and its start's) resolves the gain tightly."""
    rng = np.random.default_rng(0)
    n = 80
    member_difficulty, nonmember_difficulty = rng.normal(0, 1, n), rng.normal(0, 1, n)
    start_member, start_nonmember = {"loss": member_difficulty}, {"loss": nonmember_difficulty}
    member, nonmember = {"loss": member_difficulty + 0.3}, {"loss": nonmember_difficulty}
    summary, curves = membership.membership_inference(member, nonmember, start_member, start_nonmember, n_boot=300)
    entry = summary["signals"]["loss"]
    assert summary["members"] == summary["nonmembers"] == n and list(entry["tpr_at_fpr"]) == ["0.1"]
    delta = entry["delta_auc_vs_start"]
    offset = roc_auc(member_difficulty, nonmember_difficulty)  # this sample of records' own AUC, shared by every arm
    assert delta["value"] == pytest.approx(entry["auc"]["value"] - offset)
    assert delta["low"] > 0  # the gain is resolved ...
    assert delta["high"] - delta["low"] < (entry["auc"]["high"] - entry["auc"]["low"]) / 3  # ... far more tightly
    fpr, tpr = curves["loss"]
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1

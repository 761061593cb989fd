"""Group privacy and composition, against a fresh Opacus accountant."""

import pytest
from opacus.accountants import RDPAccountant

from ppt_core.dp import privacy

SIGMA, RATE, STEPS, DELTA = 1.1, 0.05, 60, 1e-5


def fresh_rdp(history) -> float:
    accountant = RDPAccountant()
    accountant.history = list(history)
    return accountant.get_epsilon(delta=DELTA)


def test_group_epsilon_is_the_unit_of_k_records_and_grows_with_k():
    single = privacy.accountant_epsilon(SIGMA, RATE, STEPS, DELTA, "rdp")
    assert single == pytest.approx(fresh_rdp([(SIGMA, RATE, STEPS)]), rel=1e-9)
    assert privacy.group_epsilon(SIGMA, RATE, STEPS, DELTA, 1, "rdp") == pytest.approx(single, rel=1e-9)
    groups = [privacy.group_epsilon(SIGMA, RATE, STEPS, DELTA, k, "rdp") for k in (1, 4, 16, 64)]
    assert groups == sorted(groups) and groups[1] > single
    k = 4
    assert groups[1] == pytest.approx(fresh_rdp([(SIGMA / k, 1 - (1 - RATE) ** k, STEPS)]), rel=1e-9)
    with pytest.raises(ValueError, match="k must be >= 1"):
        privacy.group_epsilon(SIGMA, RATE, STEPS, DELTA, 0, "rdp")


def test_composition_is_one_accountant_history():
    other = (0.8, 0.1, 30)
    both = privacy.composed_epsilon([(SIGMA, RATE, STEPS), other], DELTA, "rdp")
    assert both == pytest.approx(fresh_rdp([(SIGMA, RATE, STEPS), other]), rel=1e-9)
    assert both > max(privacy.accountant_epsilon(*m, DELTA, "rdp") for m in [(SIGMA, RATE, STEPS), other])
    assert privacy.composed_epsilon([(SIGMA, RATE, STEPS)], DELTA, "rdp") == pytest.approx(
        privacy.accountant_epsilon(SIGMA, RATE, STEPS, DELTA, "rdp"))


def test_prv_hands_tiny_group_noise_to_rdp():
    """PRV's grid breaks down (inf, or out of memory) at sigma/k far below 1: RDP, an upper bound, takes over."""
    tiny_noise = [privacy.group_mechanism(SIGMA, RATE, STEPS, 64)]
    assert privacy.usable_accountant(tiny_noise, "prv") == "rdp"
    assert privacy.usable_accountant([(SIGMA, RATE, STEPS)], "prv") == "prv"
    assert privacy.composed_epsilon(tiny_noise, DELTA, "prv") == pytest.approx(fresh_rdp(tiny_noise), rel=1e-9)


def test_no_step_spends_nothing():
    assert privacy.accountant_epsilon(1.0, 0.1, 0, 1e-5, "prv") == 0.0


def test_an_epsilon_asked_again_is_the_fresh_accountants_without_asking_it_again(monkeypatch):
    """composed_epsilon keeps its answers (a DP arm's progress bar, its curve and its twin family's DP arm ask the same
    questions): an answer kept is a fresh accountant's, and a new question (one more step) asks the accountant."""
    import opacus.accountants

    privacy._composed_epsilon.cache_clear()
    asked = []
    real = opacus.accountants.create_accountant
    monkeypatch.setattr(opacus.accountants, "create_accountant", lambda **kw: asked.append(kw) or real(**kw))
    history = [(1.3, 0.03, 41)]
    first = privacy.composed_epsilon(history, DELTA, "rdp")
    again = privacy.composed_epsilon([(1.3, 0.03, 41.0)], DELTA, "rdp")  # the same question, spelled otherwise
    assert first == again == pytest.approx(fresh_rdp(history), rel=1e-12) and len(asked) == 1
    assert privacy.composed_epsilon([(1.3, 0.03, 42)], DELTA, "rdp") > first and len(asked) == 2

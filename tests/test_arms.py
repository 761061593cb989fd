"""The one definition of an arm: every name a profile produces parses back to what it means."""

import pytest

from ppt_core.run import arms, profiles


def test_every_profile_arm_parses_to_its_family_start_and_twin():
    params = profiles.get_profile("quick", epsilons=[1, 3, 8], train_arms=["full", "pruned"])
    names = arms.arm_names(params)
    assert names[:2] == ["base", "pruned-noft"]
    for name in names:
        arm = arms.parse(name)
        assert arm.name == name
        assert arm.start == ("pruned-noft" if name.startswith("pruned") else "base")
        assert arm.trained == (name not in ("base", "pruned-noft"))
        if arm.private:
            assert arm.twin == f"{arm.family}-nodp" and arm.twin in names
            assert arms.trained_name(arm.family, arm.epsilon) == name
    assert [arms.parse(n).epsilon for n in names if arms.parse(n).private] == [1.0, 3.0, 8.0, 1e5, 1.0, 3.0, 8.0]


@pytest.mark.parametrize("epsilon", [0.5, 8, 1e6, 2.5e-05])
def test_every_epsilon_round_trips(epsilon):
    """A fraction, and an ε written with an exponent (1e+06: a dose arm far above any claim), parse back."""
    assert arms.parse(arms.trained_name("pruned", epsilon)).epsilon == epsilon


@pytest.mark.parametrize("name", ["", "full", "pruned-dp", "full-dpx", "tiny-nodp", "base-dp8"])
def test_unknown_arm_names_are_refused(name):
    with pytest.raises(ValueError, match="unknown arm"):
        arms.parse(name)


def test_dose_arms_follow_the_first_familys_claimed_arms_and_must_lie_above_every_claim():
    from ppt_core.dp import train_config

    params = profiles.get_profile("quick", epsilons=[1, 8], dose_epsilons=[1e4, 1e5])
    assert arms.trained_arm_names(params) == ["full-nodp", "full-dp1", "full-dp8", "full-dp10000", "full-dp100000",
                                              "pruned-nodp", "pruned-dp1", "pruned-dp8"]
    assert arms.dose_arm_names(params) == ["full-dp10000", "full-dp100000"]
    assert arms.dose_arm_names(dict(params, train_arms=["pruned"])) == ["pruned-dp10000", "pruned-dp100000"]
    assert arms.dose_arm_names(dict(params, dose_epsilons=[])) == []
    for doses in ([8, 1e4], [1e4, 1e4], [0.5]):
        with pytest.raises(ValueError, match="dose_epsilons must be distinct and each above every claimed"):
            train_config.check_params(dict(params, dose_epsilons=doses))

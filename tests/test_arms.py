"""The one definition of an arm: every name a profile produces parses back to what it means."""

import pytest

from ppt_core import arms, profiles


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
    assert [arms.parse(n).epsilon for n in names if arms.parse(n).private] == [1.0, 3.0, 8.0, 1.0, 3.0, 8.0]


@pytest.mark.parametrize("epsilon", [0.5, 8, 1e6, 2.5e-05])
def test_every_epsilon_round_trips(epsilon):
    """A fraction, and an ε written with an exponent (1e+06: a dose arm far above any claim), parse back."""
    assert arms.parse(arms.trained_name("pruned", epsilon)).epsilon == epsilon


@pytest.mark.parametrize("name", ["", "full", "pruned-dp", "full-dpx", "tiny-nodp", "base-dp8"])
def test_unknown_arm_names_are_refused(name):
    with pytest.raises(ValueError, match="unknown arm"):
        arms.parse(name)

"""Profiles: a named profile with overrides; unknown names and keys refused; the seeds a run may have."""

import pytest

from ppt_core.run import profiles


def test_unknown_profile_and_parameter_are_named():
    with pytest.raises(ValueError, match="unknown profile 'quik'"):
        profiles.get_profile("quik")
    with pytest.raises(ValueError, match=r"unknown profile parameter\(s\) \['n_trian'\]"):
        profiles.get_profile("quick", n_trian=3)


@pytest.mark.parametrize("seeds,fragment", [([], "non-empty"), ([0, 0], "distinct"), ([-1], "got [-1]"),
                                            ("0,1", "got '0,1'")])
def test_bad_seeds_are_refused(seeds, fragment):
    with pytest.raises(ValueError, match=r"seeds must") as error:
        profiles.check_seeds(seeds)
    assert fragment in str(error.value)

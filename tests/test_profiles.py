"""Profiles: every named profile passes its own checks, on a machine that has never run the study."""

import pytest

from ppt_core import profiles


@pytest.mark.parametrize("name", sorted(profiles.PROFILES))
def test_every_profile_passes_its_checks_on_an_empty_model_cache(name, tmp_path, monkeypatch):
    """A fresh machine has no converted embedded model: the checks read its config from the GGUF file itself
    (they once answered with the tiny model's 6 blocks, so quick's 12-block sweep was refused) and convert
    nothing."""
    monkeypatch.setenv("PPT_CACHE_DIR", str(tmp_path))
    profiles.check_params(profiles.get_profile(name))
    assert list(tmp_path.iterdir()) == []


def test_unknown_profile_and_parameter_are_named():
    with pytest.raises(ValueError, match="unknown profile 'quik'"):
        profiles.get_profile("quik")
    with pytest.raises(ValueError, match=r"unknown profile parameter\(s\) \['n_trian'\]"):
        profiles.get_profile("quick", n_trian=3)

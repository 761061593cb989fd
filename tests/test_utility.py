"""Notebook 04's measures: an arm reports its starting model's speed only when it has that model's size."""

import pytest

from ppt_core.run import profiles
from ppt_core.stages import utility


def test_arm_speeds_refuses_an_arm_whose_architecture_differs_from_its_start():
    """Arms report their starting model's timing only when they have its parameter count."""
    sizes = {"base": {"parameters": 10}, "full-nodp": {"parameters": 12}}
    with pytest.raises(ValueError, match="'full-nodp' has 12 parameters but its start 'base' has 10"):
        utility.arm_speeds({}, None, profiles.get_profile("smoke"), sizes)

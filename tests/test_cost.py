"""The projected cost of a profile: measured seconds scaled by the tokens each notebook reads, and by seeds."""

import pytest

from ppt_core import cost, profiles


def test_projection_scales_measured_seconds_by_tokens_and_seeds():
    quick = profiles.get_profile("quick")
    measured = {"03_dp_lora_finetuning": 600.0, "04_utility_and_inference": 60.0}
    assert cost.projected_seconds(quick, measured, quick) == pytest.approx(measured)
    twice = profiles.get_profile("quick", epochs=2 * quick["epochs"], n_eval=2 * quick["n_eval"])
    projected = cost.projected_seconds(quick, measured, twice)
    assert projected["04_utility_and_inference"] == pytest.approx(120.0)
    assert 1000 < projected["03_dp_lora_finetuning"] < 1200  # twice the steps; the loss curve stays
    paper = profiles.get_profile("paper")
    line = cost.estimate_markdown(quick, measured, 1, 135e6, [paper, profiles.get_profile("smoke")])
    assert "`paper` profile (3 seeds, 10 arms each)" in line and "smoke" not in line and "assumed" in line
    with pytest.raises(ValueError, match="same model"):
        cost.projected_seconds(quick, measured, profiles.get_profile("smoke"))

"""Pooling the seeds' timing rounds (the records and attack summaries are pooled in test_seeds.py)."""

import pytest

from ppt_core import pooling
from ppt_core.timing import SPEED_BATCH


def speeds(rounds, tokens_per_s):
    return {SPEED_BATCH: {"prefill_seconds_per_round": rounds, "prefill_tokens_per_s": tokens_per_s}}


def test_pool_timings_puts_every_seeds_rounds_one_after_the_other():
    pooled = pooling.pool_timings({
        0: {"utility": {"base": speeds([1.0, 1.1], 100.0), "pruned-noft": speeds([0.8, 0.9], 130.0)}},
        1: {"utility": {"base": speeds([1.2], 90.0), "pruned-noft": speeds([0.7], 140.0),
                        "full-nodp": speeds([1.0], 1.0)}},
    })["utility"]
    assert set(pooled) == {"base", "pruned-noft"}  # an arm one seed did not time is left out
    assert pooled["base"][SPEED_BATCH]["prefill_seconds_per_round"] == [1.0, 1.1, 1.2]
    assert pooled["pruned-noft"][SPEED_BATCH]["prefill_tokens_per_s"] == pytest.approx(135.0)


def test_pool_timings_leaves_out_an_arm_without_rounds():
    pooled = pooling.pool_timings({0: {"utility": {"base": speeds([], 100.0)}},
                                   1: {"utility": {"base": speeds([1.0], 90.0)}}})
    assert pooled == {"utility": {}}

"""Pooling the seeds' timing rounds and canaries (the records and other attack summaries are pooled in
test_seeds.py)."""

import numpy as np
import pytest

from ppt_core.machine.timing import SPEED_BATCH
from ppt_core.study import pooling, verdicts


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


def test_pooled_canaries_keep_each_seeds_gains_and_decide_together():
    """Each seed's 10 reference canaries are too few for the rank test alone; pooled, 20 decide."""
    def seed_attacks(seed):
        rng = np.random.default_rng(seed)
        rows = [{"id": f"s{seed}-c{i}", "repetitions": reps, "secret_gain": float(gain), "p_value": 0.5,
                 "exposure_low": 0.0, "exposure_high": 12.6}
                for i, (reps, gain) in enumerate(zip([32] * 4 + [0] * 10, np.r_[rng.normal(3, 0.3, 4),
                                                                                   rng.normal(0, 0.3, 10)]))]
        return {"full-nodp": {"canaries": {"rows": rows, "reference_band": [0.0, 12.6]}}}

    per_seed = {0: seed_attacks(0), 1: seed_attacks(1)}
    alone = verdicts.leak(per_seed[0]["full-nodp"])
    assert alone.outcome == verdicts.INCONCLUSIVE and "raise n_reference_canaries" in alone.evidence
    pooled = pooling.pool_attacks(per_seed, {})["full-nodp"]
    assert [row["id"] for row in pooled["canaries"]["rows"]][:2] == ["s0-c0", "s0-c1"]
    assert len(pooled["canaries"]["rows"]) == 28 and {row["p_value"] for row in pooled["canaries"]["rows"]} == {0.5}
    test = verdicts.canary_rank_test(pooled["canaries"])
    assert (test["inserted"], test["reference"]) == (8, 20)
    assert verdicts.leak(pooled).outcome == verdicts.SUPPORTED

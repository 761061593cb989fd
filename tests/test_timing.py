"""Wall-clock timing: every model timed side by side, interleaved, and its numbers under the keys the study reads."""

import pytest

from ppt_core import pruning
from ppt_core.machine import timing


def test_time_inference_times_every_model_side_by_side(tiny):
    model, tokenizer = tiny
    models = {"full": model, "pruned": pruning.prune_layers(model, [0, 5])}
    reports = timing.time_inference(models, tokenizer, prompt_tokens=8, new_tokens=3, batch_sizes=(1, 2),
                                        repeats=2, warmup=0)
    assert set(reports) == {"full", "pruned"}
    for report in reports.values():
        assert report["repeats"] == 2
        for key in (timing.batch_key(1), timing.batch_key(2)):
            assert report[key]["prefill_tokens_per_s"] > 0
            assert report[key]["generation_ms_per_token"] >= 0
            assert len(report[key]["prefill_seconds_per_round"]) == 2
    with pytest.raises(ValueError, match="new_tokens must be >= 2"):
        timing.time_inference(models, tokenizer, new_tokens=1)


def test_the_speed_batch_gets_its_own_many_rounds(tiny):
    """The prefill the speed verdict reads (SPEED_BATCH_SIZE) is timed `speed_rounds` times, paired across models;
    every other prefill and the generation latency `repeats` times."""
    model, tokenizer = tiny
    models = {"full": model, "pruned": pruning.prune_layers(model, [0, 5])}
    reports = timing.time_inference(models, tokenizer, prompt_tokens=8, new_tokens=2,
                                    batch_sizes=(1, timing.SPEED_BATCH_SIZE), repeats=2, speed_rounds=5, warmup=0)
    for report in reports.values():
        assert report["speed_rounds"] == 5
        assert len(report[timing.SPEED_BATCH]["prefill_seconds_per_round"]) == 5
        assert len(report[timing.batch_key(1)]["prefill_seconds_per_round"]) == 2
    with pytest.raises(ValueError, match="speed_rounds"):
        timing.time_inference(models, tokenizer, speed_rounds=0)


def test_prefill_timings_interleave_every_model(tiny):
    model, tokenizer = tiny
    models = {"full": model, "pruned": pruning.prune_layers(model, [0, 5])}
    seconds = timing.prefill_timings(models, tokenizer, prompt_tokens=8, batch_size=2, repeats=2, warmup=1)
    assert set(seconds) == {"full", "pruned"} and all(len(runs) == 2 and min(runs) > 0 for runs in seconds.values())
    throughput = timing.prefill_throughput(models, tokenizer, prompt_tokens=8, batch_size=2, repeats=1)
    assert all(value > 0 for value in throughput.values())


def test_interleaving_rotates_the_order_every_round():
    rounds = list(timing._interleaved(["a", "b", "c"], 4))
    assert [name for r, name in rounds if r == 0] == ["a", "b", "c"]
    assert [name for r, name in rounds if r == 1] == ["b", "c", "a"]
    assert [name for r, name in rounds if r == 3] == ["a", "b", "c"]
    assert all(sum(r == i for r, _ in rounds) == 3 for i in range(4))  # every model once per round


def test_the_speed_batch_is_one_of_the_batches_the_arms_are_timed_at():
    from ppt_core.stages import utility

    assert timing.SPEED_BATCH == timing.batch_key(timing.SPEED_BATCH_SIZE) == "batch8"
    assert timing.SPEED_BATCH_SIZE in utility.TIMING_BATCH_SIZES

"""Batching: the Poisson schedule's numbers, physical batches as Opacus cuts them, record rows padded to one
width, and the non-private twin's virtual steps (one optimizer step per logical batch)."""

import math

import pytest
import torch

from ppt_core.data import batching, tokens


@pytest.mark.parametrize("n, batch, epochs, per_pass, steps", [
    (100, 32, 1.0, 4, 4),  # q = 1/4, not 32/100: exactly ceil(N/B) batches per pass
    (93, 1, 1.0, 93, 93),  # epochs * batches per pass, not epochs / q (92.99999999999999 in floating point)
    (48, 8, 2.5, 6, 15),
    (10, 32, 1.0, 1, 1),  # a batch larger than the data: every record in every step
])
def test_schedule_has_ceil_n_over_b_batches_per_pass(n, batch, epochs, per_pass, steps):
    plan = batching.schedule(n, batch, epochs)
    assert (plan.batches_per_pass, plan.steps) == (per_pass, steps)
    assert plan.sample_rate == 1 / per_pass and plan.expected_batch_size == n // per_pass


def test_physical_batches_are_near_equal_consecutive_cuts():
    assert batching.physical_batches(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert batching.physical_batches([7, 3], 8) == [[7, 3]]
    assert batching.physical_batches([], 8) == [[]]  # an empty logical batch still makes one (noise-only) step
    for n in range(1, 40):
        chunks = batching.physical_batches(list(range(n)), 6)
        assert sum(chunks, []) == list(range(n)) and len(chunks) == math.ceil(n / 6)
        assert max(map(len, chunks)) - min(map(len, chunks)) <= 1


def test_record_rows_have_one_width_and_padding_never_counts(tiny):
    _, tokenizer = tiny
    dataset = batching.record_dataset(tokenizer, ["a short one", "a much longer record " * 5], max_length=16)
    input_ids, attention_mask, labels = dataset.tensors
    assert input_ids.shape == attention_mask.shape == labels.shape == (2, 16)
    assert (labels[attention_mask == 0] == tokens.IGNORE_INDEX).all()
    assert attention_mask[1].sum() == 16 and attention_mask[0].sum() < 16


def test_virtual_steps_take_one_step_per_logical_batch():
    weight = torch.nn.Parameter(torch.zeros(1))
    steps = batching.VirtualSteps(torch.optim.SGD([weight], lr=1.0))
    for signal in (True, True, False):  # three physical batches of one logical batch
        (-weight).sum().backward()  # gradient -1 each
        steps.signal_skip_step(do_skip=signal)
        steps.step()
        steps.zero_grad()
    assert weight.item() == 3.0  # the three gradients summed, applied once
    assert steps.last_step_skipped is False and weight.grad is None


def test_private_and_non_private_arms_draw_on_independent_streams_of_one_seed():
    seeds = {(seed, private): batching.sampling_seed(seed, private) for seed in (0, 1) for private in (True, False)}
    assert len(set(seeds.values())) == 4  # a twin never draws its DP arm's batches, nor another seed's
    assert batching.sampling_seed(0, True) == batching.sampling_seed(0, True)  # reproducible
    dataset = torch.utils.data.TensorDataset(*(torch.ones(40, 4, dtype=torch.long) for _ in batching.BATCH_FIELDS))
    plan = batching.schedule(40, 8, 2.0)

    def draws(private):
        generator = torch.Generator().manual_seed(batching.sampling_seed(0, private))
        return [sorted(b) for b in batching.logical_batches(batching.poisson_loader(dataset, plan, generator), 10)]

    assert draws(True) == draws(True) and draws(True) != draws(False)

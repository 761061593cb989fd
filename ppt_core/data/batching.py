"""Training records as token rows, Poisson-sampled logical batches, and physical batches.

One schedule serves the private and the non-private arms: each logical batch is drawn by Opacus's
Poisson sampler (every record joins independently with probability q = 1/ceil(N/B), so batches vary
in size and can be empty), with exactly ceil(N/B) batches per pass, and `steps` logical batches in
all. Each logical batch is then ordered by token count and cut into physical batches that fit in
memory, so short records (the canaries) share physical batches instead of being padded to a note's
length. DP-SGD computes the same thing in any order and any cut: every record's clipped gradient is
summed over the logical batch and the noise is added once per logical batch.

Privacy unit: one record (one note or one canary copy), one row here.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset

from ppt_core.data import tokens

BATCH_FIELDS = ("input_ids", "attention_mask", "labels")


@dataclass(frozen=True)
class Schedule:
    """How many logical batches, of what expected size, at what sample rate."""

    n_records: int
    batches_per_pass: int  # ceil(N / B): one pass over the records in expectation
    steps: int  # logical batches (optimizer steps) in all
    expected_batch_size: int  # the mean the summed gradient is divided by: N // ceil(N/B)

    @property
    def sample_rate(self) -> float:
        """q: the probability that a record joins a logical batch."""
        return 1 / self.batches_per_pass


def schedule(n_records: int, expected_batch_size: int, epochs: float) -> Schedule:
    """The Poisson schedule of `epochs` expected passes over `n_records` in batches of about `expected_batch_size`."""
    batches_per_pass = math.ceil(n_records / expected_batch_size)
    # epochs * batches_per_pass, not epochs / q: 1 / (1/93) is 92.99999999999999 in floating point.
    steps = math.floor(epochs * batches_per_pass + 1e-9)
    return Schedule(n_records, batches_per_pass, steps, n_records // batches_per_pass)


def record_dataset(tokenizer, texts, max_length: int) -> TensorDataset:
    """One (input_ids, attention_mask, labels) row of `max_length` tokens per record (labels -100 = padding)."""
    encoded = tokens.encode(tokenizer, list(texts), max_length)
    width = encoded["input_ids"].shape[1]
    pad = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "labels": tokens.IGNORE_INDEX}
    return TensorDataset(*(F.pad(encoded[k], (0, max_length - width), value=pad[k]) for k in BATCH_FIELDS))


def collate(dataset: TensorDataset, indices) -> tuple:
    """The rows `indices` of `dataset`, trimmed to the columns their longest record uses (0 rows: empty)."""
    rows = torch.as_tensor(list(indices), dtype=torch.long)
    input_ids, attention_mask, labels = (tensor[rows] for tensor in dataset.tensors)
    width = max(1, int(attention_mask.sum(1).max())) if len(rows) else 1
    return input_ids[:, :width], attention_mask[:, :width], labels[:, :width]


# The Poisson draws' own random streams: one for the private arms, another for the non-private ones.
SAMPLING_STREAMS = {True: 0x5A3B1, False: 0x5A3B0}


def sampling_seed(seed: int, private: bool) -> int:
    """The seed of an arm's Poisson draws: independent streams for the private and the non-private arms.

    A non-private twin publishes its batch sizes and per-step losses; were its batches the DP arm's (one
    seeded generator for both), it would publish the DP arm's sampling, which is trainer-only. Different
    streams of one seed keep the study reproducible and the twins' draws independent.
    """
    return int(np.random.SeedSequence([SAMPLING_STREAMS[bool(private)], int(seed)]).generate_state(1)[0])


def poisson_loader(dataset: TensorDataset, plan: Schedule, generator: torch.Generator | None) -> DataLoader:
    """A loader of Poisson logical batches: Opacus's sampler at exactly q, `batches_per_pass` batches per pass."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    sampler = UniformWithReplacementSampler(num_samples=len(dataset), sample_rate=plan.sample_rate,
                                            generator=generator, steps=plan.batches_per_pass)
    return DataLoader(dataset, batch_sampler=sampler)


class ShortRecordsTogether(Sampler):
    """The Poisson logical batches of `logical_batches`, each with its records ordered by token count."""

    def __init__(self, logical_batches: Sampler, lengths: torch.Tensor):
        self.logical_batches, self.lengths = logical_batches, lengths.tolist()

    def __iter__(self):
        for batch in self.logical_batches:
            yield sorted(batch, key=self.lengths.__getitem__)

    def __len__(self) -> int:
        return len(self.logical_batches)


def logical_batches(loader: DataLoader, steps: int):
    """`steps` logical batches (lists of record indices, short records first), pass after pass."""
    ordered = ShortRecordsTogether(loader.batch_sampler, loader.dataset.tensors[1].sum(1))
    drawn = 0
    while drawn < steps:
        for batch in ordered:
            yield batch
            drawn += 1
            if drawn == steps:
                return


# One forward and backward pass costs about this many padded token positions on top of its tokens (Python, a
# model's blocks of kernel launches, small-matrix inefficiency): fitted by bench/train_throughput.py, which times
# one logical batch as one, two and three physical batches side by side.
PASS_OVERHEAD_TOKENS = 192


def physical_batches(indices: list[int], max_size: int, lengths=None,
                     overhead_tokens: int = PASS_OVERHEAD_TOKENS) -> list[list[int]]:
    """A logical batch cut into consecutive physical batches of at most `max_size` records.

    Without `lengths`: near-equal cuts, as Opacus's BatchMemoryManager makes them. With `lengths` (tokens of
    each record of the dataset; `indices` ordered by it, shortest first, as `logical_batches` gives them): the
    cuts that compute the fewest positions, each physical batch padded to its longest record and charged
    `overhead_tokens` more, so canaries and notes go through in batches of their own width instead of the
    canaries being padded to a note's length. DP-SGD is the same for any cut (each record's clipped gradient
    is summed over the logical batch, the noise added once). An empty logical batch is one empty physical batch.
    """
    if not indices:
        return [[]]
    if lengths is None:
        return [chunk.tolist() for chunk in np.array_split(np.asarray(indices), math.ceil(len(indices) / max_size))]
    width = [int(lengths[i]) for i in indices]
    if width != sorted(width):
        raise ValueError("physical_batches with lengths needs the logical batch ordered by length, shortest first")
    # cost[j]: the cheapest cut of the first j records; a physical batch of records i..j-1 is (j - i) rows of
    # width[j - 1] (the longest, as they are sorted) plus the pass's overhead (ties keep the earliest cut).
    n = len(indices)
    cost, cut = [0] + [math.inf] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_size), j):
            candidate = cost[i] + (j - i) * width[j - 1] + overhead_tokens
            if candidate < cost[j]:
                cost[j], cut[j] = candidate, i
    chunks, j = [], n
    while j:
        chunks.append(list(indices[cut[j]:j]))
        j = cut[j]
    return chunks[::-1]


class VirtualSteps:
    """The non-private twin of Opacus's DPOptimizer virtual steps: gradients add up over the physical
    batches of one logical batch (the loop signals each one with `signal_skip_step`) and one step is taken."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.original_optimizer = optimizer
        self.skip_queue, self.last_step_skipped = deque(), False

    def signal_skip_step(self, do_skip: bool = True) -> None:
        self.skip_queue.append(do_skip)

    def step(self) -> None:
        self.last_step_skipped = bool(self.skip_queue.popleft()) if self.skip_queue else False
        if not self.last_step_skipped:
            self.take_step()

    def take_step(self) -> None:
        """The optimizer step at the end of a logical batch."""
        self.original_optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not self.last_step_skipped:
            self.original_optimizer.zero_grad(set_to_none=set_to_none)

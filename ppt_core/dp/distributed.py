"""DP-LoRA across processes, GPUs and nodes: torchrun and Opacus's distributed data parallel.

`torchrun` starts N processes (one per GPU, or several CPU processes on the gloo backend) and this
module joins them into one DP-SGD run whose guarantee is exactly the single-process one:

- Sampling. Opacus's distributed Poisson sampler splits the N_train records into disjoint shards, one
  per process, and each process draws each record of its shard with probability q, from its own
  generator. Every record therefore joins a logical batch independently with probability q: the
  union of the local batches is one Poisson batch of the whole dataset, at the same q, with the same
  ceil(N/B) batches per pass and the same number of logical steps as a single process.
- Clipping and noise. Opacus's DistributedDPOptimizer (DPDDP around the model) clips each record's
  gradient in its own process, adds the Gaussian noise (std sigma*C) on rank 0 only, divides by
  the per-process expected batch B/world_size, all-reduces the sum and divides by world_size: the
  update is (sum of all clipped gradients + one noise draw) / B, as in one process, once per
  logical step.
- Accounting. sigma is calibrated for the global (q, steps) of `batching.schedule`; every process's
  accountant is charged that (q, steps), so epsilon equals the single-process epsilon.

What this module adds to Opacus, and why: its distributed sampler skips a process's empty local
batch, which would leave that process one logical step behind the others (its all-reduce then pairs
with the wrong step, or hangs) and charge its accountant fewer steps; `DistributedPoissonSampler`
yields empty local batches too, so every process takes every logical step. The non-private twin
sums its gradients over the processes with one all-reduce per logical step (the same reduction as
DistributedDPOptimizer, without clipping or noise).

Only rank 0 measures the held-out loss curve, shows progress and writes artifacts; the others wait.

A model larger than one GPU is not covered. Each process here holds the whole (frozen) model;
Opacus shards a model only with FSDP2 and ghost clipping (Opacus 1.6: `grad_sample_mode="ghost_fsdp"`,
`opacus.utils.fsdp_utils.FSDP2Wrapper`, `FSDPOptimizerFastGradientClipping`; introduced by
meta-pytorch/opacus#738 and #761, "FSDP2 with ghost clipping"). FSDP all-gathers each block's
parameters inside every forward and backward pass, so every process must run the same number of
passes in lockstep, while Poisson sampling gives each process a local batch of its own random size,
sometimes empty (no forward at all here), cut into its own number of physical batches. DPDDP has no
collective inside a pass, which is why it is used here. Sharding would need each logical step padded
to the same number of physical passes in every process with rows that add nothing to the clipped sum,
a change to the DP loop itself that is not made (nor tested: FSDP2 is a CUDA path, this machine has none).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler
from torch.utils.data import DataLoader, TensorDataset

from ppt_core.data import batching
from ppt_core.run.errors import TrainingConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the processes torchrun started."""

    rank: int  # 0 .. world_size-1, over all nodes
    world_size: int  # processes in all
    local_rank: int  # index on this node (its GPU)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that measures the held-out curve, shows progress and writes artifacts."""
        return self.rank == 0


def current_world() -> World | None:
    """The World of an initialised torch.distributed process group; None in a plain single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    rank = dist.get_rank()
    return World(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))


@contextlib.contextmanager
def process_group(device: str | None = None):
    """Join the process group torchrun described in the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...):
    nccl with one GPU per process (LOCAL_RANK) when CUDA is used, else gloo; yield its World, then leave it."""
    missing = [name for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if name not in os.environ]
    if missing:
        raise RuntimeError(f"no torchrun environment ({', '.join(missing)} unset): start this with "
                           "torchrun --nproc_per_node N -m ppt_core.stages.launch ...")
    cuda = torch.cuda.is_available() and device in (None, "auto", "cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" now means this process's GPU
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield current_world()
    finally:
        dist.destroy_process_group()


# --- the checks ----------------------------------------------------------------------------------


def check_world(world_size, n_records: int, expected_batch_size: int) -> None:
    """Stop with one clear message when `world_size` processes cannot share this schedule's batches."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise TrainingConfigError(f"the number of processes (nproc) must be an integer >= 1 (got {world_size!r})")
    if world_size > n_records:
        raise TrainingConfigError(f"{world_size} processes for {n_records} training records leave a process without "
                                  f"records: use nproc <= {n_records}")
    if expected_batch_size < world_size:
        raise TrainingConfigError(
            f"expected_batch_size ({expected_batch_size}) is too small to split over {world_size} processes: each "
            f"process draws expected_batch_size / nproc = {expected_batch_size / world_size:.3g} records per step "
            f"in expectation; use expected_batch_size >= {world_size} or nproc <= {expected_batch_size}"
        )


# --- sampling ------------------------------------------------------------------------------------


class DistributedPoissonSampler(DistributedUniformWithReplacementSampler):
    """Opacus's distributed Poisson sampler, yielding every logical batch, empty local batches included
    (Opacus skips them, which would put this process out of step with the others), as lists of global
    record indices."""

    def __iter__(self):
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.shuffle_seed + self.epoch)
            shard = torch.randperm(self.total_size, generator=generator)
        else:
            shard = torch.arange(self.total_size)
        shard = shard[self.rank: self.total_size: self.num_replicas]
        for _ in range(self.num_batches):
            drawn = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
            yield shard[drawn.nonzero(as_tuple=False).reshape(-1)].tolist()


def poisson_loader(dataset: TensorDataset, plan: batching.Schedule, world: World, seed: int) -> DataLoader:
    """This process's share of the Poisson logical batches: its shard of the records, each drawn with
    probability q, `batches_per_pass` batches per pass. Each process draws from its own generator, so
    records in different shards join a batch independently."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + world.rank)
    sampler = DistributedPoissonSampler(total_size=len(dataset), sample_rate=plan.sample_rate, shuffle=True,
                                        shuffle_seed=seed, steps=plan.batches_per_pass, generator=generator)
    return DataLoader(dataset, batch_sampler=sampler)


# --- the objects one process trains with ---------------------------------------------------------


def wrap_model(peft_model) -> torch.nn.Module:
    """The model in Opacus's DPDDP: rank 0's LoRA weights broadcast to every process."""
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

    return DPDDP(peft_model)


class SummedVirtualSteps(batching.VirtualSteps):
    """The non-private twin of DistributedDPOptimizer: the gradients of one logical batch are summed
    over the processes (each process's loss is already divided by the global expected batch) before
    the step, so every process takes the same step."""

    def take_step(self) -> None:
        for group in self.original_optimizer.param_groups:
            for p in group["params"]:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        self.original_optimizer.step()


def check_distributed_optimizer(optimizer) -> None:
    """Refuse a DP optimizer that would add its noise in every process instead of once per step."""
    from opacus.optimizers import DistributedDPOptimizer, DistributedDPOptimizerFastGradientClipping

    if not isinstance(optimizer, (DistributedDPOptimizer, DistributedDPOptimizerFastGradientClipping)):
        raise RuntimeError(f"Opacus gave a {type(optimizer).__name__}, not its distributed optimizer: the "
                           "noise would be added in every process")


# --- after training ------------------------------------------------------------------------------


def sum_over_processes(losses: list, batch_sizes: list, sample_counts: list) -> tuple[list, list, list]:
    """The run's (losses, batch sizes, sample counts) from every process's own: per step, the losses and
    batch sizes summed over the processes' local batches; per record, the logical batches that drew it."""
    device = _collective_device()
    sizes = torch.tensor(batch_sizes, dtype=torch.float64, device=device)
    sums = torch.tensor([0.0 if loss is None else loss * n for loss, n in zip(losses, batch_sizes)],
                        dtype=torch.float64, device=device)
    counts = torch.tensor(sample_counts, dtype=torch.int64, device=device)
    for tensor in (sizes, sums, counts):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    sizes_list = [int(n) for n in sizes.tolist()]
    return [float(s) / n if n else None for s, n in zip(sums.tolist(), sizes_list)], sizes_list, counts.tolist()


def check_replicas_agree(lora_params) -> None:
    """Raise unless every process holds rank 0's LoRA weights bit for bit (one step taken everywhere alike)."""
    mine = torch.cat([p.detach().reshape(-1).float() for p in lora_params]).to(_collective_device())
    reference = mine.clone()
    dist.broadcast(reference, 0)
    differs = torch.tensor([float(not torch.equal(mine, reference))], device=mine.device)
    dist.all_reduce(differs, op=dist.ReduceOp.MAX)
    if differs.item():
        raise RuntimeError("the processes' LoRA weights differ after training: a process missed a logical step "
                           "or a gradient reduction")


def _collective_device() -> torch.device:
    """Where a collective's tensors must live: this process's GPU under nccl, else the CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if current_world() is not None:
        dist.barrier()

#!/usr/bin/env python
"""Distributed DP-LoRA scaling: logical steps per second in 1 process and in N, side by side.

Trains the same DP-LoRA schedule (Poisson batches of `--batch` records in expectation, cut into
physical batches of `--physical`) for `--steps` logical steps in 1 CPU process, then in 2 (and more,
`--nproc`) CPU processes joined on the gloo backend exactly as torchrun joins them
(`ppt_core.dp.training.prepare` with a world: Opacus's DPDDP, DistributedDPOptimizer, distributed Poisson sampler),
and on 1 GPU when CUDA is available. Each setting runs in fresh processes, one after the other, in one
invocation; the first `--warmup` steps are not timed. Prints steps per second and the speedup over
1 process. Every process uses `--threads` threads (default 1: N processes use N cores; on a shared
machine, threads of one process spinning against other jobs slow it down many times).

  python bench/distributed_scaling.py                                  # the embedded SmolLM2-135M
  python bench/distributed_scaling.py --model tiny-random-llama --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch.multiprocessing as mp


def texts(n: int) -> list[str]:
    return [f"Patient {i} was admitted with chest pain and discharged home on day {i % 7}. " * 12 for i in range(n)]


def measure(rank: int, args, world_size: int, device: str, out_dir: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")  # Opacus and torch hook notices, once per process
    import torch
    import torch.distributed as dist

    from ppt_core.data import batching
    from ppt_core.dp import distributed, privacy, train_config, training
    from ppt_core.models import load_model

    torch.set_num_threads(args.threads)
    world = None
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=world_size)
        world = distributed.current_world()
    model, tokenizer = load_model(args.model, device=device)
    steps = args.warmup + args.steps
    records = texts(args.batch * steps)  # one pass of `steps` logical batches
    config = train_config.TrainConfig(expected_batch_size=args.batch, physical_batch_size=args.physical,
                                  max_length=args.tokens, bf16=False, progress=False, epochs=1.0,
                                  # rdp: quick to calibrate
                                  dp=privacy.DPConfig(target_epsilon=8.0, delta=1e-5, accountant="rdp"))
    torch.manual_seed(0)
    peft_model = training.lora_model(model, config, torch.device(device))
    dataset = batching.record_dataset(tokenizer, records, args.tokens)
    run = training.prepare(peft_model, dataset, config, world)
    training.run_steps(run, steps=args.warmup)
    if world is not None:
        dist.barrier()
    started = time.perf_counter()
    training.run_steps(run, steps=args.steps)
    if world is not None:
        dist.barrier()
    seconds = time.perf_counter() - started
    if rank == 0:
        with open(f"{out_dir}/result.json", "w") as f:
            json.dump({"steps_per_second": args.steps / seconds, "seconds": seconds}, f)
    if world is not None:
        dist.destroy_process_group()


def run_setting(args, world_size: int, device: str) -> dict:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(measure, args=(args, world_size, device, out_dir), nprocs=world_size, join=True)
        with open(f"{out_dir}/result.json") as f:
            return json.load(f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nproc", type=int, nargs="+", default=[2], help="process counts to compare with 1")
    parser.add_argument("--batch", type=int, default=16, help="expected records per logical step")
    parser.add_argument("--physical", type=int, default=8, help="records per forward/backward pass")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per record")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="timed logical steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    rows = {"1 process (cpu)": run_setting(args, 1, "cpu")}
    print(f"{'1 process (cpu)':>20}: {rows['1 process (cpu)']['steps_per_second']:.3f} steps/s", flush=True)
    for n in args.nproc:
        name = f"{n} processes (cpu)"
        rows[name] = run_setting(args, n, "cpu")
        print(f"{name:>20}: {rows[name]['steps_per_second']:.3f} steps/s", flush=True)
    if torch.cuda.is_available():
        rows["1 GPU"] = run_setting(args, 1, "cuda")
        print(f"{'1 GPU':>20}: {rows['1 GPU']['steps_per_second']:.3f} steps/s", flush=True)
    else:
        print("1 GPU: no CUDA device on this machine, not measured")
    base = rows["1 process (cpu)"]["steps_per_second"]
    print(f"\n{args.model}, DP (hooks), expected batch {args.batch} (physical {args.physical}) x {args.tokens} tokens, "
          f"{args.steps} timed steps, {args.threads} thread(s) per process, {os.cpu_count()} CPU cores")
    for name, row in rows.items():
        row["speedup_vs_1_process"] = row["steps_per_second"] / base
        print(f"{name:>20}  {row['steps_per_second']:>7.3f} steps/s  {row['speedup_vs_1_process']:>5.2f}x")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""DP-SGD overhead: step time and peak memory of DP vs non-private LoRA training, side by side.

Runs the same fixed physical batch through `ppt_core.dp.training.physical_step` + one optimizer step for
each setting, every setting in a fresh subprocess (so one setting's memory cannot inflate another's
peak), in one invocation: non-private, DP with `hooks`, DP with `ghost` (all float32), and DP `hooks`
under bf16 autocast. Prints the ratios; targets: DP <= 1.10x time and <= 1.15x memory of non-private.

  python bench/dp_overhead.py                      # the embedded SmolLM2-135M, batch 8 x 128 tokens
  python bench/dp_overhead.py --model tiny-random-llama --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import statistics
import time

SETTINGS = [  # (name, dp grad_sample_mode or None, bf16)
    ("non-private", None, False),
    ("dp-hooks", "hooks", False),
    ("dp-ghost", "ghost", False),
    ("non-private-bf16", None, True),
    ("dp-hooks-bf16", "hooks", True),
]


def measure(args, mode, bf16, queue):
    import warnings

    warnings.filterwarnings("ignore")  # Opacus and torch hook notices, once per subprocess
    import psutil
    import torch

    from ppt_core.data import batching
    from ppt_core.dp import privacy, train_config, training
    from ppt_core.machine.memory import PeakMemory
    from ppt_core.models import load_model

    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, device=args.device)
    dp = None if mode is None else privacy.DPConfig(target_epsilon=8.0, delta=1e-5, grad_sample_mode=mode)
    texts = [f"Patient {i} was admitted with chest pain and discharged home on day {i % 7}. " * 20 for i in range(64)]
    config = train_config.TrainConfig(expected_batch_size=args.batch, physical_batch_size=args.batch,
                                  max_length=args.tokens, bf16=bf16, dp=dp, progress=False, epochs=1.0)
    peft_model = training.lora_model(model, config, next(model.parameters()).device)
    del model
    gc.collect()
    run = training.prepare(peft_model, batching.record_dataset(tokenizer, texts, args.tokens), config)
    batch = batching.collate(run.loader.dataset, range(args.batch))  # the same batch every time
    run.module.train()
    seconds = []
    with PeakMemory(run.lora_params[0].device) as memory:
        for repeat in range(args.warmup + args.repeats):
            started = time.perf_counter()
            training.physical_step(run, batch)
            run.optimizer.signal_skip_step(do_skip=False)  # one physical batch is the whole logical batch
            run.optimizer.step()
            run.optimizer.zero_grad()
            if run.lora_params[0].is_cuda:
                torch.cuda.synchronize()
            if repeat >= args.warmup:
                seconds.append(time.perf_counter() - started)
    queue.put({"seconds_per_step": statistics.median(seconds), "peak_memory_mb": memory.peak_mb,
               "rss_mb_end": psutil.Process().memory_info().rss / 2**20})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="records per step (one physical batch)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per record")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    context = mp.get_context("spawn")
    rows = {}
    for name, mode, bf16 in SETTINGS:
        queue = context.Queue()
        process = context.Process(target=measure, args=(args, mode, bf16, queue))
        process.start()
        rows[name] = queue.get()
        process.join()
        print(f"{name:>18}: {rows[name]['seconds_per_step']:.3f} s/step, peak {rows[name]['peak_memory_mb']:.0f} MB",
              flush=True)

    def ratio(name, base, key):
        return rows[name][key] / rows[base][key]

    print(f"\n{args.model}, batch {args.batch} x {args.tokens} tokens, {args.device}, median of {args.repeats}")
    print(f"{'setting':>18}  {'time ratio':>10}  {'memory ratio':>12}   (vs non-private, same precision)")
    summary = {}
    for name, mode, bf16 in SETTINGS:
        base = "non-private-bf16" if bf16 else "non-private"
        summary[name] = {"time_ratio": ratio(name, base, "seconds_per_step"),
                         "memory_ratio": ratio(name, base, "peak_memory_mb"), **rows[name]}
        if mode is not None:
            flag_t = "ok" if summary[name]["time_ratio"] <= 1.10 else "over 1.10x target"
            flag_m = "ok" if summary[name]["memory_ratio"] <= 1.15 else "over 1.15x target"
            print(f"{name:>18}  {summary[name]['time_ratio']:>9.2f}x  {summary[name]['memory_ratio']:>11.2f}x   "
                  f"({flag_t}; {flag_m})")
    speedup = rows["dp-hooks"]["seconds_per_step"] / rows["dp-hooks-bf16"]["seconds_per_step"]
    print(f"bf16 autocast speedup of a DP (hooks) step: {speedup:.2f}x")
    print(json.dumps({"settings": summary, "bf16_speedup_dp_hooks": speedup}, indent=1))


if __name__ == "__main__":
    main()

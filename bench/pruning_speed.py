#!/usr/bin/env python
"""Benchmark: prefill speedup of pruned vs unpruned models, measured beside the FLOP-counting ideal.

On the embedded model (or --model), prunes 3 depths, times every model's prefill interleaved in one
run (so machine load hits all alike), and prints measured speedup, ideal speedup (ratio of forward
FLOPs of what remains, embeddings and LM head included) and their ratio. Target: measured / ideal
>= 0.9 on CPU. Every block of a model has the same shape, so the cost does not depend on which
blocks go; the last ones are removed here.

  python bench/pruning_speed.py                       # SmolLM2-135M, 4/8/12 of 30 blocks
  python bench/pruning_speed.py --levels 2,4 --model tiny-random-llama --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ppt_core import pruning  # noqa: E402
from ppt_core.machine import timing  # noqa: E402
from ppt_core.models import load_model  # noqa: E402
from ppt_core.pruning import flops  # noqa: E402

TARGET = 0.9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--levels", default="4,8,12", help="blocks removed, comma-separated (three levels)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    model, tokenizer = load_model(args.model, device=args.device)
    depth = pruning.n_blocks(model)
    levels = [int(n) for n in args.levels.split(",")]
    models = {0: model}
    for level in levels:
        models[level] = pruning.prune_layers(model, list(range(depth - level, depth)))
    ideal = {level: flops.ideal_speedup(model, m, args.prompt_tokens, logits_positions=1)
             for level, m in models.items()}
    print(f"{args.model}: {depth} blocks, prompt {args.prompt_tokens} tokens, {args.repeats} interleaved "
          f"repeats (median), {torch.get_num_threads()} threads on {args.device}")
    worst = np.inf
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        seconds = timing.prefill_timings(models, tokenizer, prompt_tokens=args.prompt_tokens,
                                         batch_size=batch_size, repeats=args.repeats)
        median = {level: float(np.median(runs)) for level, runs in seconds.items()}
        best = {level: min(runs) for level, runs in seconds.items()}
        print(f"\nbatch {batch_size}")
        print(f"{'removed':>8} {'blocks':>6} {'tokens/s':>9} {'measured':>9} {'(best-of)':>9} {'ideal':>7} "
              f"{'measured/ideal':>14}")
        for level in models:
            measured = median[0] / median[level]
            ratio = measured / ideal[level]
            if level:
                worst = min(worst, ratio)
            print(f"{level:>8} {depth - level:>6} {batch_size * args.prompt_tokens / median[level]:>9.0f} "
                  f"{measured:>9.3f} {best[0] / best[level]:>9.3f} {ideal[level]:>7.3f} {ratio:>14.3f}")
    print("\nmeasured: ratio of median prefill times; best-of: ratio of the fastest runs (least disturbed "
          "by other processes)")
    verdict = "meets" if worst >= TARGET else "misses"
    print(f"\nworst measured/ideal {worst:.3f}: {verdict} the target {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

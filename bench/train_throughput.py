#!/usr/bin/env python
"""Benchmark: the training loop's tokens per second against this machine's own matmul peak, side by side.

In one process, one after the other on the same Poisson logical batches of a profile's training records
(default quick: notes, canary copies and audit canaries), it measures:

- the peak: a 2048 x 2048 matmul in the dtype training uses (bf16 where the CPU or GPU has it, else float32);
- the training loop's step (forward, backward, DP-SGD's clipping and noise or the plain optimizer step), for the
  non-private and the DP arm, with each lever of the loop off and on:
  `count` cuts a logical batch into physical batches by record count (every record padded to the longest),
  `width` by width (`batching.physical_batches` with lengths: short canaries apart from notes), and
  `width+bf16` also stores the frozen weights in bf16 once (`evaluation.frozen_weights_in_bf16`) instead of
  autocast casting them in every pass (bf16 machines only), and `+cache` replays the frozen lower blocks
  (`ppt_core.dp.frozen_prefix`), on a bf16 machine both with and without the bf16 weights. Every setting trains
  with the attention the study does (`training.training_attention`: eager for bf16 on a CPU); `+sdpa` is the
  study's loop with torch's scaled-dot-product attention instead (bf16 CPU only). Every setting but `+logits`
  reads the loss through the frozen head in chunks, on the positions with a target (`ppt_core.dp.head_loss`);
  `+logits` is the study's loop reading it from the whole logits instead.
- the ceilings: `bare` is the study's non-private loop with the adapters switched off (peft's disable_adapter), on
  the same batches: the frozen blocks LoRA sits on, forward and backward to their input (the same matmuls and
  attention the loop runs, in the same dtype, with the same cache and head), without LoRA, per-sample
  gradients, clipping, noise or an optimizer to update. No loop that trains adapters on these blocks can run at a
  higher share of the peak than this eager forward and backward of the same shapes, so the summary gives the
  study's loop against both: the peak (the target) and the bare stack (what the loop itself adds). Beside every
  setting, `matmuls alone`: the products one of its steps multiplies (every operation the FLOP counter counts,
  recorded with its shapes, strides and dtypes: `ProductTrace`), replayed back to back on fresh tensors with
  nothing between them. That is the highest share of the peak any loop issuing these products can reach: where
  it is below the target, the target is out of this machine's reach at these shapes, whatever the loop around
  the products does.

Each setting's FLOPs per step are counted by torch's FlopCounterMode (matmuls and attention, forward and
backward, per-sample gradients included) on the same steps; the table gives real tokens per second, the
FLOP rate and its share of the peak. Target: the loop as the study runs it at >= 50% of the peak.

  python bench/train_throughput.py                         # SmolLM2-135M, 8 logical steps per setting
  python bench/train_throughput.py --float32               # the float32 loop (a CPU without native bf16)
  python bench/train_throughput.py --model tiny-random-llama --profile smoke --steps 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.utils import _pytree  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, flop_registry  # noqa: E402

from ppt_core import data  # noqa: E402
from ppt_core.data import batching  # noqa: E402
from ppt_core.dp import train_config, training  # noqa: E402
from ppt_core.machine import precision  # noqa: E402
from ppt_core.models import load_model  # noqa: E402
from ppt_core.models.architectures import decoder_blocks  # noqa: E402
from ppt_core.run import profiles  # noqa: E402
from ppt_core.scoring import evaluation  # noqa: E402

TARGET = 0.5
SIDE = 2048


def matmul_peak(dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """FLOP/s of a SIDE x SIDE matmul in `dtype` (median of `repeats` after a warm-up)."""
    a, b = (torch.randn(SIDE, SIDE, device=device).to(dtype) for _ in range(2))
    seconds = []
    for repeat in range(repeats + 1):
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if repeat:
            seconds.append(time.perf_counter() - started)
    return 2 * SIDE**3 / statistics.median(seconds)


class ProductTrace(TorchDispatchMode):
    """Inside: records every operation FlopCounterMode counts (matmuls, attention kernels) with each tensor argument
    replaced by its layout and address (`_TensorSpec`), to replay them with nothing between them."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func._overloadpacket in flop_registry:
            self.calls.append((func, *_pytree.tree_map_only(torch.Tensor, _TensorSpec.of, (args, kwargs))))
        return func(*args, **kwargs)

    def fresh_calls(self) -> list:
        """The recorded calls as (operation, args, kwargs) on fresh random tensors of the recorded layouts, one per
        recorded address: a weight multiplied forward and backward is one tensor here too, as warm in cache."""
        tensors = {}

        def fresh(spec):
            if spec not in tensors:
                tensors[spec] = torch.empty_strided(spec.shape, spec.stride, dtype=spec.dtype, device=spec.device)
                tensors[spec].normal_() if spec.dtype.is_floating_point else tensors[spec].zero_()
            return tensors[spec]

        return [(func, *_pytree.tree_map_only(_TensorSpec, fresh, (args, kwargs))) for func, args, kwargs in self.calls]

    def replay_seconds(self, repeats: int = 5) -> float:
        """Seconds (median of `repeats`, after a warm-up) of the recorded operations run back to back (a product's
        time does not depend on its values)."""
        calls = self.fresh_calls()
        cuda = any(spec.device.type == "cuda" for spec in _pytree.tree_leaves(self.calls)
                   if isinstance(spec, _TensorSpec))
        seconds = []
        with torch.no_grad():
            for repeat in range(repeats + 1):
                started = time.perf_counter()
                for func, args, kwargs in calls:
                    func(*args, **kwargs)
                if cuda:
                    torch.cuda.synchronize()
                if repeat:
                    seconds.append(time.perf_counter() - started)
        return statistics.median(seconds)

    def replay_flops(self) -> int:
        """FLOPs of the replayed operations as FlopCounterMode counts them: the recorded step's count when the trace
        holds every counted operation with its shapes."""
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            for func, args, kwargs in self.fresh_calls():
                func(*args, **kwargs)
        return counter.get_total_flops()


@dataclass(frozen=True)
class _TensorSpec:  # a dataclass, not a NamedTuple: pytree treats named tuples as containers, this as a leaf
    shape: torch.Size
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    address: int  # where its first element was: the same memory read by several operations is one tensor again

    @classmethod
    def of(cls, tensor: torch.Tensor) -> _TensorSpec:
        return cls(tensor.shape, tensor.stride(), tensor.dtype, tensor.device, tensor.data_ptr())


class Setting(NamedTuple):
    """One configuration of the loop the table measures (see the module's docstring)."""

    cut: str  # "count" or "width": how a logical batch is cut into physical batches
    bf16_weights: bool  # the frozen weights stored in bf16 once
    cached: bool  # the frozen lower blocks replayed
    attention: str | None = None  # an attention implementation instead of training.training_attention's
    chunked_head: bool = True  # the loss through the frozen head in chunks (False: from the whole logits)
    bare: bool = False  # the ceiling: the adapters off, the backward to the adapted blocks' input

    @property
    def levers(self) -> str:
        if self.bare:
            return "bare"
        return (f"{self.cut}{'+bf16' if self.bf16_weights else ''}{'+cache' if self.cached else ''}"
                f"{'+' + self.attention if self.attention else ''}{'' if self.chunked_head else '+logits'}")


@contextmanager
def adapters_off(peft_model, first_adapted: int):
    """Inside: `peft_model` runs without its adapters, and its first adapted block takes its input as a leaf that
    needs a gradient, so the backward runs through every block above it (and no further) with nothing to update."""

    def leaf(module, args, kwargs):
        if args:
            return (args[0].detach().requires_grad_(), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_()}

    block = decoder_blocks(peft_model.get_base_model())[first_adapted]
    hook = block.register_forward_pre_hook(leaf, with_kwargs=True)
    try:
        with peft_model.disable_adapter():
            yield
    finally:
        hook.remove()


def measure(model, dataset, config, setting: Setting, *, steps: int) -> dict:
    """Seconds, tokens and FLOPs per logical step of the loop (training.logical_step) in `setting`."""
    cut, attention = setting.cut, setting.attention
    peft_model = training.lora_model(model, config, next(model.parameters()).device)
    if attention is not None:
        peft_model.get_base_model().set_attn_implementation(attention)
    if setting.bf16_weights:
        evaluation.frozen_weights_in_bf16(peft_model)
    started = time.perf_counter()
    prefix = training._frozen_prefix(peft_model, dataset, config) if setting.cached else None
    cache_seconds = time.perf_counter() - started
    run = training.prepare(peft_model, dataset, config, prefix=prefix, chunked_head=setting.chunked_head)
    run.module.train()
    depth = len(decoder_blocks(peft_model.get_base_model()))
    first_adapted = 0 if config.lora_blocks is None else max(0, depth - config.lora_blocks)
    with adapters_off(peft_model, first_adapted) if setting.bare else nullcontext():
        return _timed_steps(run, dataset, config, cut, steps, cache_seconds if prefix is not None else None)


def _timed_steps(run, dataset, config, cut: str, steps: int, cache_seconds: float | None) -> dict:
    """measure's numbers: a warm-up step, one step under the FLOP counter, then `steps` timed steps."""
    lengths = dataset.tensors[1].sum(1).tolist()
    by = lengths if cut == "width" else None  # what physical_batches cuts by: widths, or counts alone

    def positions(indices):  # padded token positions one logical step computes
        return sum(len(c) * max(lengths[i] for i in c)
                   for c in batching.physical_batches(indices, config.physical_batch_size, by) if c)

    batches = list(batching.logical_batches(run.loader, steps + 1))
    training.logical_step(run, batches[0], by)  # warm-up
    with FlopCounterMode(display=False) as counter, ProductTrace() as products:
        training.logical_step(run, batches[1], by)
    flops_per_position = counter.get_total_flops() / max(1, positions(batches[1]))
    seconds = []
    for indices in batches[1:]:
        started = time.perf_counter()
        training.logical_step(run, indices, by)
        if run.lora_params[0].is_cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    real = sum(lengths[i] for indices in batches[1:] for i in indices)
    padded = sum(positions(indices) for indices in batches[1:])
    return {"seconds_per_step": sum(seconds) / len(seconds), "tokens_per_s": real / sum(seconds),
            "flops_per_s": flops_per_position * padded / sum(seconds), "padded_share": 1 - real / padded,
            "cache_seconds": cache_seconds,
            "products_flops_per_s": counter.get_total_flops() / max(products.replay_seconds(), 1e-9)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--steps", type=int, default=8, help="logical steps measured per setting")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--float32", action="store_true",
                        help="train in float32 even where bf16 is native (what a CPU without it runs)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # Opacus and torch hook notices

    params = profiles.get_profile(args.profile, model=args.model)
    model, tokenizer = load_model(args.model, device=args.device)
    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory() as folder:
        splits = data.build_dataset(params, folder, tokenizer=tokenizer)
    length = params["train_max_length"] or params["max_length"]
    dataset = batching.record_dataset(tokenizer, splits.texts("train"), length)
    bf16 = precision.resolve_bf16(False if args.float32 else params["bf16"], device)
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = matmul_peak(dtype, device)
    print(f"{args.model}, profile {args.profile}: {len(dataset)} training records of at most {length} tokens; "
          f"{torch.get_num_threads()} threads on {device}; training dtype {str(dtype).split('.')[-1]}, "
          f"its {SIDE}² matmul peak {peak / 1e9:.0f} GFLOP/s")
    cached = params["lora_blocks"] is not None
    study = Setting("width", bf16, cached)  # the loop as the study runs it: last in each arm's rows
    settings = [Setting("count", False, False), Setting("width", False, False)]
    settings += [Setting("width", True, False)] if bf16 else []
    settings += [Setting("width", False, True)] if cached and bf16 else []  # the cache, autocast casting weights
    settings += [study._replace(attention="sdpa")] if cached and bf16 and device.type == "cpu" else []
    settings += [study._replace(chunked_head=False), study._replace(bare=True), study]
    rows = []
    for private in (False, True):
        epsilon = params["epsilons"][0] if private else None
        config = train_config.config_from_params(params, epsilon, progress=False, bf16=bf16)
        for setting in settings:
            if setting.bare and private:
                continue  # the ceiling has no adapters, hence nothing private to train
            torch.manual_seed(0)
            result = measure(model, dataset, config, setting, steps=args.steps)
            rows.append((private, setting, result))
            once = f", cache built in {result['cache_seconds']:.1f} s" if result["cache_seconds"] is not None else ""
            print(f"  {('dp ' if private else 'non-private ') + setting.levers:<36} "
                  f"{result['seconds_per_step']:6.2f} s/step {result['tokens_per_s']:7.0f} tokens/s "
                  f"{result['flops_per_s'] / 1e9:6.0f} GFLOP/s = {result['flops_per_s'] / peak:5.1%} of peak "
                  f"(matmuls alone {result['products_flops_per_s'] / peak:5.1%}; "
                  f"padding {result['padded_share']:.0%}{once})", flush=True)
    bare = next(r["flops_per_s"] for _, setting, r in rows if setting.bare)
    loop = {private: r["flops_per_s"] for private, setting, r in rows if setting == study}
    products = {private: r["products_flops_per_s"] for private, setting, r in rows if setting == study}
    worst = min(loop.values()) / peak
    verdict = "meets" if worst >= TARGET else "misses"
    name = str(dtype).split(".")[-1]
    print(f"\nthe loop as the study runs it ({study.levers}): worst {worst:.1%} of the {name} matmul peak; "
          f"{verdict} the target {TARGET:.0%}")
    print(f"the bare forward and backward of the same blocks (the ceiling of any loop of these shapes): "
          f"{bare / peak:.1%} of the peak; the study's loop runs at {loop[False] / bare:.0%} (non-private) and "
          f"{loop[True] / bare:.0%} (DP) of its FLOP rate")
    reach = min(products.values()) / peak
    print(f"the loop's own products alone, back to back (the ceiling of any loop that multiplies them): "
          f"{products[False] / peak:.1%} (non-private) and {products[True] / peak:.1%} (DP) of the peak; the target is "
          + ("within this machine's reach at these shapes" if reach >= TARGET else
             f"out of this machine's reach at these shapes ({reach:.1%} < {TARGET:.0%})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmarks' own logic: the training benchmark's ceiling (the bare forward and backward of the adapted blocks,
with the adapters off, and each setting's products replayed) and the machine-kinds record the cost model reads."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from training_helpers import TEXTS, dp_config, small_config

from ppt_core.data import batching
from ppt_core.dp import training
from ppt_core.models.architectures import decoder_blocks
from tests.test_frozen_prefix import UPPER

pytestmark = pytest.mark.usefixtures("one_thread")


def load_bench(name: str = "train_throughput"):
    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_bare_stack_runs_the_adapted_blocks_without_adapters_and_backpropagates_to_their_input(tiny):
    bench = load_bench()
    model, tokenizer = tiny
    config = small_config(**UPPER)
    torch.manual_seed(0)
    peft_model = training.lora_model(model, config, torch.device("cpu"))
    lora = [p for p in peft_model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in lora:
            p.normal_(0, 0.5)  # adapters that change the output, so "off" shows
    dataset = batching.record_dataset(tokenizer, TEXTS[:4], config.max_length)
    input_ids, attention_mask, _ = batching.collate(dataset, range(4))
    blocks = decoder_blocks(peft_model.get_base_model())
    first_adapted = len(blocks) - config.lora_blocks
    leaves = []
    seen = blocks[first_adapted].register_forward_hook(lambda m, args, kwargs, out: leaves.append(
        args[0] if args else kwargs["hidden_states"]), with_kwargs=True)

    def step():
        logits = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
        logits.float().logsumexp(-1).sum().backward()
        return logits.detach()

    with FlopCounterMode(display=False) as adapted:
        with_adapters = step()
    assert all(p.grad is not None for p in lora)
    peft_model.zero_grad(set_to_none=True)
    with bench.adapters_off(peft_model, first_adapted), FlopCounterMode(display=False) as bare:
        without = step()
    leaf = leaves[-1]
    with torch.no_grad(), peft_model.disable_adapter():
        base = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.equal(without, base) and not torch.allclose(with_adapters, base)  # the adapters were off
    assert all(p.grad is None for p in lora)  # nothing to update
    assert leaf.is_leaf and leaf.grad is not None and float(leaf.grad.abs().sum()) > 0  # the backward reached it
    assert 0 < bare.get_total_flops() < adapted.get_total_flops()  # LoRA's own work is what the ceiling leaves out
    # the hook is gone: the adapted block's input (the frozen blocks' output) needs no gradient again
    step()
    seen.remove()
    assert not leaves[-1].requires_grad


def test_the_products_ceiling_replays_every_product_a_dp_step_multiplies(tiny):
    """The `matmuls alone` ceiling is only a ceiling if it replays the step's own products: every operation the FLOP
    counter counts in one DP logical step of the study's loop (LoRA's products and the per-sample gradients'
    included), with the same shapes, so the replay counts the step's FLOPs exactly, and it runs them."""
    bench = load_bench()
    model, tokenizer = tiny
    config = small_config(dp=dp_config(), **UPPER)
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    torch.manual_seed(0)
    peft_model = training.lora_model(model, config, torch.device("cpu"))
    run = training.prepare(peft_model, dataset, config, prefix=training._frozen_prefix(peft_model, dataset, config))
    run.module.train()
    indices = list(range(5))
    with FlopCounterMode(display=False) as counter, bench.ProductTrace() as products:
        training.logical_step(run, indices, None)
    specs = [spec for _, args, _ in products.calls for spec in args if isinstance(spec, bench._TensorSpec)]
    assert any(config.lora_rank in spec.shape for spec in specs)  # LoRA's products are in it
    assert products.replay_flops() == counter.get_total_flops() > 0
    assert products.replay_seconds(repeats=1) > 0
    # one tensor per address: the frozen weights each block multiplies forward and backward are replayed as one
    assert len(set(specs)) < len(specs)


def test_a_measured_run_enters_the_kinds_file_under_its_machine_and_precision(tmp_path):
    from ppt_core.run import artifacts
    from ppt_core.stages import cost

    bench = load_bench("machine_kinds")
    run = tmp_path / "run"
    machine = {"kind": "x86-64 CPU with AVX-512, no bf16", "cpu": "a Xeon", "threads": 2, "precision": "float32",
               "auto_precision": "float32", "precision_reason": "this CPU has no native bf16",
               "peak_gflops": {"float32": 225.0, "bf16": 60.0}}
    artifacts.write_json(run / "timings.json", {"machine": machine, "notebooks": {"02_pruning": 60.0}})
    kinds_file = tmp_path / "kinds.json"
    bench.record(run, "make study", "quick", kinds_file)
    machine["precision"], machine["precision_reason"] = "bf16", "set by the profile (bf16=True)"
    artifacts.write_json(run / "timings.json", {"machine": machine, "notebooks": {"02_pruning": 300.0}})
    bench.record(run, "make study --set bf16=true", "quick", kinds_file)
    kind = cost.machine_kinds(kinds_file)["x86-64 CPU with AVX-512, no bf16"]
    assert kind.precision == "float32"  # what auto picks there, whatever a run forced
    assert kind.notebook_seconds == {"float32": {"02_pruning": 60.0}, "bf16": {"02_pruning": 300.0}}
    assert kind.source["bf16"].startswith("make study --set bf16=true at ")
    with pytest.raises(SystemExit, match="record a 'quick' run"):
        bench.record(run, "make study", "paper", kinds_file)

"""The training benchmark's ceiling: the bare forward and backward of the adapted blocks, with the adapters off."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ppt_core import batching, training
from ppt_core.architectures import decoder_blocks
from tests.test_frozen_prefix import UPPER
from tests.test_training import TEXTS, small_config

pytestmark = pytest.mark.usefixtures("one_thread")


def load_bench():
    path = Path(__file__).resolve().parent.parent / "bench" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("train_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bare_stack_runs_the_adapted_blocks_without_adapters_and_backpropagates_to_their_input(tiny):
    bench = load_bench()
    model, tokenizer = tiny
    config = small_config(**UPPER)
    torch.manual_seed(0)
    peft_model = training._lora_model(model, config, torch.device("cpu"))
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

"""FLOP counting against a closed form, and the measured prefill speedup of pruning beside its ideal."""

import numpy as np
import pytest

from ppt_core import pruning
from ppt_core.pruning import flops


def test_forward_flops_match_a_closed_form_for_llama(tiny):
    model, _ = tiny
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    q_width, kv_width = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    per_block = 2 * (c.hidden_size * q_width + 2 * c.hidden_size * kv_width + q_width * c.hidden_size
                     + 3 * c.hidden_size * c.intermediate_size)
    head = 2 * c.hidden_size * c.vocab_size
    T = 10
    attention = 4 * q_width * T * (T + 1) / 2
    expected = c.num_hidden_layers * (per_block * T + attention) + head * T
    assert flops.forward_flops(model, T) == pytest.approx(expected)
    assert flops.forward_flops(model, T, logits_positions=1) == pytest.approx(expected - head * (T - 1))
    pruned = pruning.prune_layers(model, [1, 2])
    assert flops.forward_flops(pruned, T) == pytest.approx(expected - 2 * (per_block * T + attention))
    # The ideal speedup is below L / L' because the LM head is not pruned.
    speedup = flops.ideal_speedup(model, pruned, T)
    assert 1 < speedup < c.num_hidden_layers / (c.num_hidden_layers - 2)


def test_pruning_speed_times_each_level_beside_its_ideal(tiny):
    model, tokenizer = tiny
    depth = pruning.n_blocks(model)
    similarity = np.eye(depth + 1) + np.diag(np.linspace(0.5, 0.9, depth), 1)
    speed = flops.pruning_speed(model, tokenizer, similarity, [0, 2], prompt_tokens=8, repeats=1)
    assert list(speed.columns) == ["blocks removed", "prefill tokens/s", "measured speedup", "ideal speedup"]
    assert list(speed["blocks removed"]) == [0, 2] and (speed["prefill tokens/s"] > 0).all()
    assert speed["measured speedup"][0] == 1.0 and speed["ideal speedup"][0] == 1.0
    pruned = pruning.prune_layers(model, pruning.select_layers(similarity, 2, "pairwise"))
    assert speed["ideal speedup"][1] == pytest.approx(flops.ideal_speedup(model, pruned, 8, logits_positions=1))

"""The ideal cost of what a pruned model still computes: matmul FLOPs of a forward pass, and the
speedup over the full model that removing blocks could give at best.

A measured speedup (ppt_core.machine.timing) reads against this ideal: `pruning_speed` times a model pruned
at each level beside its FLOP ratio, so how close prefill comes to what the arithmetic allows shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ppt_core import pruning
from ppt_core.machine import timing
from ppt_core.models.architectures import decoder_blocks


def forward_flops(model, seq_len: int, *, logits_positions: int | None = None) -> float:
    """Matmul FLOPs of one forward pass over one sequence of `seq_len` tokens (multiply-add = 2 FLOPs).

    Counts every linear layer (attention projections, MLP, and the LM head, applied to
    `logits_positions` positions: default all, 1 for a prefill that only needs the next token)
    plus the attention scores and weighted sums of each block under a causal mask. The embedding
    lookup is a gather, 0 FLOPs; norms and activations are elementwise and left out (a few % at most).
    """
    head = model.get_output_embeddings()
    head_ids = {id(head)} if head is not None else set()
    per_token = 0.0
    head_per_position = 0.0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2 or isinstance(module, torch.nn.Embedding):
            continue
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D":  # GPT-2 uses Conv1D
            flops = 2.0 * weight.shape[0] * weight.shape[1]
            if id(module) in head_ids:
                head_per_position += flops
            else:
                per_token += flops
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention_width = config.num_attention_heads * head_dim
    # Token t (1-based) attends to t positions: QK^T and AV cost 2 * 2 * width FLOPs per position.
    attention = 4.0 * attention_width * seq_len * (seq_len + 1) / 2 * len(decoder_blocks(model))
    positions = seq_len if logits_positions is None else logits_positions
    return per_token * seq_len + attention + head_per_position * positions


def ideal_speedup(full_model, pruned_model, seq_len: int, **kw) -> float:
    """FLOPs of the full model over FLOPs of the pruned one, for one sequence of `seq_len` tokens."""
    return forward_flops(full_model, seq_len, **kw) / forward_flops(pruned_model, seq_len, **kw)


def pruning_speed(model, tokenizer, similarity: np.ndarray, levels: Sequence[int], *, prompt_tokens: int,
                  repeats: int, seed: int = 0) -> pd.DataFrame:
    """Per level of blocks removed (0: the model itself), the model pruned by `pairwise` at that level:
    its prefill tokens/s at timing.SPEED_BATCH_SIZE (the levels timed interleaved), the measured speedup
    over level 0, and the ideal speedup (FLOP ratio of a prefill that needs only the next token's logits)."""
    models = {level: pruning.prune_layers(model, pruning.select_layers(similarity, level, "pairwise")) if level
              else model for level in levels}
    throughput = timing.prefill_throughput(models, tokenizer, prompt_tokens=prompt_tokens,
                                           batch_size=timing.SPEED_BATCH_SIZE, repeats=repeats, seed=seed)
    return pd.DataFrame({
        "blocks removed": list(levels),
        "prefill tokens/s": [throughput[level] for level in levels],
        "measured speedup": [throughput[level] / throughput[0] for level in levels],
        "ideal speedup": [ideal_speedup(model, models[level], prompt_tokens, logits_positions=1) for level in levels],
    })

"""How much each transformer block changes its input: cosine similarity between layer boundaries.

A decoder of L blocks has L+1 boundaries in its residual stream: the embedding output (state 0,
the input of block 0) and the output of each block (state l+1 is the output of block l). For
every real token of the calibration text we take the cosine similarity between every pair of
states, and average over tokens. S[l, l+1] close to 1 means block l barely turns its input: a
candidate for removal; S[l, l+n] does the same for a run of n blocks (Gromov et al. 2024).

The blocks are the ones `ppt_core.models.architectures.decoder_blocks` finds, the same list pruning removes
from, and a model pruning would refuse is refused here too, before any forward pass.
States are read with hooks on the decoder blocks themselves, never from `output_hidden_states`:
for Llama-style models transformers returns the last state after the final norm, which would
make state L incomparable with the others.

Calibration text must be public. The choice of which blocks to remove is a function of the
calibration text, and DP-SGD only covers the fine-tuning step after it: pruning on the private
`train` split would leak information about it outside any privacy guarantee.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ppt_core.data import tokens
from ppt_core.models import architectures
from ppt_core.models.architectures import block_hidden_states, decoder_blocks

POOLINGS = ("mean", "last")


class BoundaryStates:
    """Hooks that record the residual stream at the L+1 block boundaries during one forward pass."""

    def __init__(self, blocks: torch.nn.ModuleList):
        self.states: list[torch.Tensor] = []
        self.handles = [blocks[0].register_forward_pre_hook(self._record_input, with_kwargs=True)]
        self.handles += [block.register_forward_hook(self._record_output) for block in blocks]

    def _record_input(self, module, args, kwargs):
        self.states.append(args[0] if args else kwargs["hidden_states"])

    def _record_output(self, module, args, output):
        self.states.append(block_hidden_states(output))

    def take(self) -> list[torch.Tensor]:
        states, self.states = self.states, []
        return states

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.inference_mode()
def layer_similarity(model, tokenizer, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 128,
                     pooling: str = "mean", progress: bool = True) -> np.ndarray:
    """S, shape (L+1, L+1): mean cosine similarity between the hidden states at every pair of block boundaries.

    pooling="mean" averages the per-token similarity over every real (non-padding) token;
    pooling="last" uses only each text's last real token. Texts are encoded without an appended EOS,
    so "last" is the text's own last token. Memory does not grow with the number of texts: each
    batch adds its sums of products of unit vectors to one (L+1, L+1) accumulator.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS} (got {pooling!r})")
    texts = list(texts)
    if not texts:
        raise ValueError("layer_similarity() needs at least one calibration text")
    architectures.check_config(model.config, type(model).__name__)
    blocks = decoder_blocks(model)
    device = next(model.parameters()).device
    recorder = BoundaryStates(blocks)
    n_states = len(blocks) + 1
    sums = torch.zeros((n_states, n_states), dtype=torch.float64)
    n_tokens = 0
    try:
        chunks = list(tokens.batched(texts, batch_size))
        for chunk in tqdm(chunks, desc="similarity", disable=not progress, leave=False):
            batch = tokens.to_device(tokens.encode(tokenizer, chunk, max_length, add_eos=False), device)
            # The base model alone: the LM head's output is not needed, and it is the costliest matmul.
            model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            states = torch.stack(recorder.take())  # (L+1, B, T, D)
            mask = batch["attention_mask"].bool()
            if pooling == "last":
                last = mask.sum(dim=1) - 1
                mask = torch.zeros_like(mask)
                mask[torch.arange(len(last), device=device), last] = True
            unit = torch.nn.functional.normalize(states[:, mask].float(), dim=-1)  # (L+1, tokens, D)
            flat = unit.reshape(n_states, -1)
            # sum over tokens of <u_i, u_j> for all pairs (i, j) at once: one matmul over (token, dim)
            sums += (flat @ flat.T).double().cpu()
            n_tokens += int(mask.sum())
    finally:
        recorder.remove()
    similarity = (sums / n_tokens).numpy()
    # Symmetric by construction up to float rounding; the diagonal is exactly 1 by definition.
    similarity = (similarity + similarity.T) / 2
    np.fill_diagonal(similarity, 1.0)
    return similarity


def block_redundancy(similarity: np.ndarray, n_blocks: int = 1) -> np.ndarray:
    """For each start l, S[l, l+n]: how similar the output of blocks l..l+n-1 is to their input."""
    n_states = similarity.shape[0]
    return np.array([similarity[start, start + n_blocks] for start in range(n_states - n_blocks)])


def check_params(params: dict) -> None:
    """The profile's similarity settings are usable."""
    if params.get("similarity_pooling", "mean") not in POOLINGS:
        raise ValueError(f"similarity_pooling must be one of {POOLINGS} (got {params['similarity_pooling']!r})")
    if int(params.get("n_calibration", 1)) < 1:
        raise ValueError(f"n_calibration must be >= 1 (got {params['n_calibration']})")
    for key in ("n_calibration", "n_calibration_iterative"):
        if params.get("n_public") is not None and int(params.get(key, 1)) > int(params["n_public"]):
            raise ValueError(
                f"{key} ({params[key]}) exceeds n_public ({params['n_public']}): "
                f"calibration text comes from the public split; lower {key} or raise n_public"
            )

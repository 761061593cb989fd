"""Utility and speed: held-out perplexity, per-record token log-probabilities, inference timing."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ppt_core import tokens


@torch.no_grad()
def token_logprobs(model, tokenizer, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 16,
                   progress: bool = True) -> list[np.ndarray]:
    """For each text, the log-probability (nats) the model gives each of its real tokens after the first."""
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for chunk in tqdm(list(tokens.batched(list(texts), batch_size)), desc="scoring", disable=not progress, leave=False):
        batch = tokens.to_device(tokens.encode(tokenizer, chunk, max_length), device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = batch["labels"][:, 1:]
        picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        real = targets != tokens.IGNORE_INDEX
        for row in range(len(chunk)):
            out.append(picked[row][real[row]].cpu().numpy())
    return out


def perplexity(model, tokenizer, texts: Sequence[str], **kw) -> float:
    """Token-weighted perplexity over the real tokens of `texts` (padding excluded)."""
    logps = token_logprobs(model, tokenizer, texts, **kw)
    every = np.concatenate(logps)
    return float(np.exp(-every.mean()))

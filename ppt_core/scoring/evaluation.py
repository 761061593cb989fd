"""Scoring: the log-probability a model gives each token of a record, and held-out perplexity from it.

Every number the study reads from a model's likelihood starts here: held-out perplexity (notebooks 02
and 04), the per-record rows [summed log-probability, tokens] the verdicts pair across arms, and the
membership and audit scores of ppt_core.leakage.membership. `bf16` runs the blocks under bf16 autocast (where
ppt_core.machine.precision finds it native and faster, for a profile's "auto"), with the output head kept in float32.

Speed is elsewhere: wall-clock in ppt_core.machine.timing, the ideal from counting FLOPs in ppt_core.pruning.flops.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ppt_core.data import batching, tokens
from ppt_core.machine import precision
from ppt_core.uncertainty import stats


def scoring_bf16(params: dict, model) -> bool:
    """The profile's `bf16_scoring` resolved for the device `model` is on: how every stage scores (the pruning
    sweep, held-out perplexity, the attacks)."""
    return precision.resolve_bf16(params["bf16_scoring"], next(model.parameters()).device)


def frozen_weights_in_bf16(model) -> list:
    """Store the frozen Linear weights of `model` in bf16 for bf16-autocast work; return (module, float32 weight)
    pairs that `restore_weights` puts back.

    Autocast multiplies in bf16 whatever a weight is stored in, and it keeps a cast copy only of weights that
    require grad, so a frozen float32 weight is cast again in every forward pass (135M values per pass here).
    Casting it once gives the same bf16 values (round to nearest even either way), hence the same products, bit
    for bit, without the copies: on a CPU with AMX the cast is as costly as a short forward's product itself, so
    its Linear layers take about half the time. The output head stays
    float32: scoring reads it in float32 (next_token_logits), and a head tied to the input embeddings is their
    weight; training's bf16 copy is head_loss.OutputHead's.
    """
    head = model.get_output_embeddings()
    head = getattr(head, "head", head)  # an installed head_loss.OutputHead stands in for it
    stored = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (isinstance(module, nn.Linear) and module is not head and not weight.requires_grad
                and weight.dtype == torch.float32):
            stored.append((module, weight))
            module.weight = nn.Parameter(weight.detach().to(torch.bfloat16), requires_grad=False)
    return stored


def restore_weights(stored: list) -> None:
    """Put back the float32 weights frozen_weights_in_bf16 replaced."""
    for module, weight in stored:
        module.weight = weight


@contextmanager
def bf16_weights(model, enabled: bool) -> Iterator[None]:
    """Inside (where `enabled`): `model`'s frozen Linear weights stored in bf16 (frozen_weights_in_bf16), for
    scoring under bf16 autocast; float32 again on the way out (generation and float32 scoring need them)."""
    stored = frozen_weights_in_bf16(model) if enabled else []
    try:
        yield
    finally:
        restore_weights(stored)


def next_token_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                      bf16: bool = False) -> torch.Tensor:
    """Float32 logits of every position. With `bf16`, the blocks run under bf16 autocast and the output
    head in float32 on the final hidden states: a bf16 head would round logits of ~20 to ~0.1 and every
    log-probability with them (a test bounds what bf16 changes in perplexity and membership AUC)."""
    return causal_lm_forward(model, input_ids, attention_mask, bf16=bf16)[0]


def causal_lm_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                      bf16: bool = False, cache=None, use_cache: bool = False,
                      keep: torch.Tensor | None = None) -> tuple[torch.Tensor, object]:
    """(float32 logits, the forward's KV cache or None) of one forward of a causal LM, with `bf16` as in
    next_token_logits. `cache`: the KV cache of the tokens before `input_ids` (the caller's copy: the forward
    extends it); `use_cache`: return the cache; `keep`: the positions (1-D tensor) whose logits are computed,
    else every position's."""
    if not isinstance(bf16, bool):  # a profile's "auto" is truthy: settle it first (precision.resolve_bf16)
        raise TypeError(f"bf16 must be True or False here (got {bf16!r}): settle a profile's setting with "
                        "precision.resolve_bf16")
    cached = dict(cache=cache, use_cache=True) if cache is not None or use_cache else {}
    if not bf16:
        kept = {"logits_to_keep": keep} if keep is not None and _accepts_logits_to_keep(model) else {}
        output = model(input_ids=input_ids, attention_mask=attention_mask, **cached, **kept)
        logits = output.logits if keep is None or kept else output.logits[:, keep]
        return logits.float(), getattr(output, "cache", None)
    # A PEFT model (an adapter during training) wraps the causal LM whose modules its LoRA layers sit in
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.autocast(device_type=input_ids.device.type, dtype=torch.bfloat16):
        output = causal_lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                      **(cached or dict(use_cache=False)))
    hidden = output.last_hidden_state if keep is None else output.last_hidden_state[:, keep]
    logits = causal_lm.get_output_embeddings()(hidden.float())
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma 2 and 3 squash their logits
    return (logits if cap is None else torch.tanh(logits / cap) * cap), getattr(output, "cache", None)


def _accepts_logits_to_keep(model) -> bool:
    """Whether the causal LM's forward takes logits_to_keep (a PEFT model passes it through to its own)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(causal_lm.forward).parameters


@torch.no_grad()
def token_logprobs(model, tokenizer, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 16,
                   bf16: bool = False, last: int | None = None, progress: bool = True) -> list[np.ndarray]:
    """For each text, the log-probability (nats) the model gives each of its real tokens after the first, or
    with `last` each text's last `last` of them only (the output head runs only where those are predicted).
    `bf16`: the blocks under bf16 autocast (see next_token_logits)."""
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for chunk in tqdm(list(tokens.batched(list(texts), batch_size)), desc="scoring", disable=not progress, leave=False):
        batch = tokens.to_device(tokens.encode(tokenizer, chunk, max_length), device)
        out.extend(_batch_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["labels"], bf16=bf16,
                                   last=last))
    return out


@torch.no_grad()
def replayed_token_logprobs(model, prefix, *, batch_size: int = 16, bf16: bool = False,
                            last: int | None = None) -> list[np.ndarray]:
    """token_logprobs of the records `prefix` was kept on (a frozen_prefix.FrozenPrefix; right-padded rows)
    with the frozen lower blocks replayed instead of computed: the same numbers for a fraction of the work
    when only the upper blocks change."""
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for start in range(0, len(prefix.dataset), batch_size):
        rows = range(start, min(len(prefix.dataset), start + batch_size))
        input_ids, attention_mask, labels = (t.to(device) for t in batching.collate(prefix.dataset, rows))
        with prefix.replaying(rows):
            out.extend(_batch_logprobs(model, input_ids, attention_mask, labels, bf16=bf16, last=last))
    return out


def _batch_logprobs(model, input_ids, attention_mask, labels, *, bf16: bool, last: int | None) -> list[np.ndarray]:
    """Per row of a right-padded batch, log p(next token) at each real target (labels: padding =
    tokens.IGNORE_INDEX), or at its last `last` real targets only, the head reading only the positions that
    predict some row's (a span from the shortest row's first to the longest row's last)."""
    real_tokens = (labels != tokens.IGNORE_INDEX).sum(1)
    start = 0 if last is None else max(0, int(real_tokens.min()) - 1 - last)
    positions = torch.arange(start, labels.shape[1] - 1 if last is None else int(real_tokens.max()) - 1,
                             device=labels.device)
    keep = None if last is None else positions
    logits, _ = causal_lm_forward(model, input_ids, attention_mask, bf16=bf16, keep=keep)
    logits, targets = (logits[:, :-1] if keep is None else logits), labels[:, positions + 1]
    picked = tokens.target_logprobs(logits, targets.clamp_min(0))
    real = targets != tokens.IGNORE_INDEX
    return [picked[row][real[row]][-last if last else None:].cpu().numpy() for row in range(len(picked))]


def record_logprob_rows(logprobs: Sequence[np.ndarray]) -> np.ndarray:
    """One row per record: [summed log-probability (nats), number of scored tokens] (their perplexity:
    stats.perplexity_of_rows)."""
    return np.array([[lp.sum(), len(lp)] for lp in logprobs], dtype=np.float64).reshape(-1, 2)


def perplexity(model, tokenizer, texts: Sequence[str], **kw) -> float:
    """Token-weighted perplexity over the real tokens of `texts` (padding excluded)."""
    return stats.perplexity_of_rows(record_logprob_rows(token_logprobs(model, tokenizer, texts, **kw)))

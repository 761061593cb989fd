"""Turning records into padded causal-LM batches where padding never counts.

Every stage (similarity, training, scoring, attacks) batches text the same way: each record is
truncated to `max_length` tokens, ends with the EOS token (so a model learns where a note ends),
and padding is masked out of the attention and out of the labels (-100).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

IGNORE_INDEX = -100


def encode(tokenizer, texts: Sequence[str], max_length: int, *, add_eos: bool = True, padding_side: str = "right"):
    """Return a dict of input_ids, attention_mask and labels (padding = -100), all (B, T) tensors."""
    if not texts:
        raise ValueError("encode() got no texts")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    if add_eos:
        ids = [seq[: max_length - 1] + [tokenizer.eos_token_id] for seq in ids]
    else:
        ids = [seq[:max_length] for seq in ids]
    input_ids, attention_mask = pad(ids, tokenizer.pad_token_id, side=padding_side)
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) what each position predicts: the next token (the labels shifted left), IGNORE_INDEX at each row's
    last position and wherever the next token is padding."""
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def record_means(per_token: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) each row's mean of `per_token` (B, T) over its real targets (zero where it has none)."""
    return per_token.sum(1) / (targets != IGNORE_INDEX).sum(1).clamp(min=1)


def logsumexp_in_place(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(torch.logsumexp(logits, -1, keepdim=True), bit for bit; the row sums of the exponentials), with `logits`
    overwritten by exp(logit - row max), which divided by those sums is the softmax. torch.logsumexp makes a shifted
    copy of its input: for a vocabulary-sized row per position, the largest tensor of a forward, allocated afresh
    in every call (memory the OS maps in again each time)."""
    largest = logits.amax(dim=-1, keepdim=True)
    largest.masked_fill_(largest.isinf(), 0)  # as torch.logsumexp: a row of infinities keeps its infinity
    sums = logits.sub_(largest).exp_().sum(dim=-1, keepdim=True)
    return sums.log().add_(largest), sums


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) = logit(target) - logsumexp(logits) at each position of `logits` (..., V), `targets` (...)
    valid word ids; the normaliser is computed in the logits' own memory (logsumexp_in_place): `logits` is spent."""
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked.sub_(logsumexp_in_place(logits)[0].squeeze(-1))


def check_batch(vocabulary: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) of a setup check: seeded random tokens, the second row padded. The setup
    checks (head_loss.install, frozen_prefix.replay_check_error) ask what a model's forward does, which any tokens
    show; no training record is read (nothing outside DP-SGD touches them)."""
    input_ids = torch.randint(0, vocabulary, (3, 16), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


def pad(sequences: Sequence[Sequence[int]], pad_token_id: int, *, side: str = "right",
        device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) long tensors on `device`: token id sequences padded to the longest
    with `pad_token_id`, after each one's end (`side="right"`) or before its start ("left": right-aligned, as
    generation needs); the mask is 1 on real tokens."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left' (got {side!r})")
    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
            input_ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
            attention_mask[row, span] = 1
    return input_ids.to(device), attention_mask.to(device)


def batched(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    """Consecutive slices of at most `batch_size` items."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def to_device(batch: dict, device) -> dict:
    return {name: tensor.to(device) for name, tensor in batch.items()}

"""Utility and speed: held-out perplexity, per-record token log-probabilities, inference timing.

Speed is measured two ways that a pruning study compares: wall-clock (`time_inference`: prefill
throughput and per-token generation latency) and the ideal, from counting the matmul FLOPs of what
the model still computes (`forward_flops`), so a measured speedup can be read against what removing
blocks could give at best.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ppt_core import tokens


def bf16_available(device: torch.device) -> bool:
    """Whether bf16 autocast pays on `device`: CUDA with bf16 support, or a CPU with native bf16 matmuls
    (AVX-512 BF16 / AMX); elsewhere bf16 would be emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_bf16(setting, device: torch.device) -> bool:
    """A profile's bf16 setting ("auto", True or False) for `device`: "auto" means bf16_available(device)."""
    if setting == "auto":
        return bf16_available(torch.device(device))
    if not isinstance(setting, bool):
        raise ValueError(f"a bf16 setting must be 'auto', True or False (got {setting!r})")
    return setting


def next_token_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, bf16: bool = False) -> torch.Tensor:
    """Float32 logits of every position. With `bf16`, the blocks run under bf16 autocast and the output
    head in float32 on the final hidden states: a bf16 head would round logits of ~20 to ~0.1 and every
    log-probability with them (a test bounds what bf16 changes in perplexity and membership AUC)."""
    if not bf16:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    with torch.autocast(device_type=input_ids.device.type, dtype=torch.bfloat16):
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    logits = model.get_output_embeddings()(hidden.float())
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma 2 and 3 squash their logits
    return logits if cap is None else torch.tanh(logits / cap) * cap


@torch.no_grad()
def token_logprobs(model, tokenizer, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 16,
                   bf16: bool = False, progress: bool = True) -> list[np.ndarray]:
    """For each text, the log-probability (nats) the model gives each of its real tokens after the first.
    `bf16`: the blocks under bf16 autocast (see next_token_logits)."""
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for chunk in tqdm(list(tokens.batched(list(texts), batch_size)), desc="scoring", disable=not progress, leave=False):
        batch = tokens.to_device(tokens.encode(tokenizer, chunk, max_length), device)
        logits = next_token_logits(model, batch["input_ids"], batch["attention_mask"], bf16=bf16)[:, :-1]
        targets = batch["labels"][:, 1:]
        # log p(target) = logit(target) - logsumexp(logits): no second vocabulary-sized tensor
        picked = logits.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        real = targets != tokens.IGNORE_INDEX
        for row in range(len(chunk)):
            out.append(picked[row][real[row]].cpu().numpy())
    return out


def record_logprob_rows(logprobs: Sequence[np.ndarray]) -> np.ndarray:
    """One row per record: [summed log-probability (nats), number of scored tokens]."""
    return np.array([[lp.sum(), len(lp)] for lp in logprobs], dtype=np.float64).reshape(-1, 2)


def perplexity_of_rows(rows: np.ndarray) -> float:
    """Token-weighted perplexity of record_logprob_rows: exp(-total log-probability / total tokens)."""
    return float(np.exp(-rows[:, 0].sum() / rows[:, 1].sum()))


def perplexity(model, tokenizer, texts: Sequence[str], **kw) -> float:
    """Token-weighted perplexity over the real tokens of `texts` (padding excluded)."""
    return perplexity_of_rows(record_logprob_rows(token_logprobs(model, tokenizer, texts, **kw)))


# --- FLOPs: the ideal cost of what remains ----------------------------------------------------------
def forward_flops(model, seq_len: int, *, logits_positions: int | None = None) -> float:
    """Matmul FLOPs of one forward pass over one sequence of `seq_len` tokens (multiply-add = 2 FLOPs).

    Counts every linear layer (attention projections, MLP, and the LM head, applied to
    `logits_positions` positions: default all, 1 for a prefill that only needs the next token)
    plus the attention scores and weighted sums of each block under a causal mask. The embedding
    lookup is a gather, 0 FLOPs; norms and activations are elementwise and left out (a few % at most).
    """
    from ppt_core.similarity import decoder_blocks

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


# --- wall-clock ----------------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing_prompt(tokenizer, model, *, batch_size: int, prompt_tokens: int, seed: int = 0) -> torch.Tensor:
    """A (batch_size, prompt_tokens) batch of token ids drawn under a seed (the content does not change the cost)."""
    generator = torch.Generator().manual_seed(seed)
    high = min(len(tokenizer), model.get_input_embeddings().weight.shape[0])
    return torch.randint(0, high, (batch_size, prompt_tokens), generator=generator)


@torch.inference_mode()
def prefill_seconds(model, input_ids: torch.Tensor) -> float:
    """Seconds for one prefill: a forward pass over the prompt that returns the next token's logits."""
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    _synchronize(device)
    start = time.perf_counter()
    model(input_ids=input_ids, use_cache=True, **kwargs)
    _synchronize(device)
    return time.perf_counter() - start


def prefill_timings(models: dict, tokenizer, *, prompt_tokens: int = 128, batch_size: int = 8,
                    repeats: int = 5, warmup: int = 1, seed: int = 0) -> dict:
    """Seconds of each of `repeats` prefills of each named model, on one shared prompt of
    (batch_size, prompt_tokens) tokens, after `warmup` unmeasured rounds.

    The models run interleaved (one run of each per round, the order rotated every round), so load
    from other processes on the machine falls on all of them alike and their ratio stays fair.
    """
    first = next(iter(models.values()))
    prompt = timing_prompt(tokenizer, first, batch_size=batch_size, prompt_tokens=prompt_tokens, seed=seed)
    seconds: dict = {name: [] for name in models}
    for round_index, name in _interleaved(list(models), warmup + repeats):
        elapsed = prefill_seconds(models[name], prompt)
        if round_index >= warmup:
            seconds[name].append(elapsed)
    return seconds


def _interleaved(names: list, rounds: int):
    """(round, name) for every model in every round, the order rotated each round so that machine
    load falls on all models alike."""
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            yield round_index, name


def prefill_throughput(models: dict, tokenizer, *, prompt_tokens: int = 128, batch_size: int = 8, **kw) -> dict:
    """Prefill throughput (tokens/s) of each named model: the median of prefill_timings' runs."""
    seconds = prefill_timings(models, tokenizer, prompt_tokens=prompt_tokens, batch_size=batch_size, **kw)
    return {name: batch_size * prompt_tokens / statistics.median(runs) for name, runs in seconds.items()}


@torch.inference_mode()
def generate_seconds(model, input_ids: torch.Tensor, new_tokens: int) -> float:
    """Seconds for greedy generate() of exactly `new_tokens` tokens after the prompt (KV cache on)."""
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    _synchronize(device)
    start = time.perf_counter()
    model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                   pad_token_id=model.config.pad_token_id or 0)
    _synchronize(device)
    return time.perf_counter() - start


def time_inference(models: dict, tokenizer, *, prompt_tokens: int = 128, new_tokens: int = 16,
                   batch_sizes: Sequence[int] = (1, 8), repeats: int = 5, warmup: int = 1, seed: int = 0) -> dict:
    """Prefill throughput (tokens/s) and per-token generation latency (ms) of each named model at each batch size.

    Returns {name: {"batch<B>": {"prefill_tokens_per_s", "generation_ms_per_token",
    "prefill_seconds_per_round"}, "prompt_tokens", "new_tokens", "repeats"}}: medians of `repeats` runs after `warmup` unmeasured ones,
    and the seconds of each measured prefill round (round i of every model ran in the same round, so
    their ratio is paired). The models run interleaved, as in prefill_timings, so machine load falls on
    all alike. Latency is (time to generate new_tokens - time to generate 1) / (new_tokens - 1): the
    decode steps alone.
    """
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 to separate decoding from prefill (got {new_tokens})")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0 (got repeats={repeats}, warmup={warmup})")
    names = list(models)
    reports: dict = {name: {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats} for name in names}
    for batch_size in batch_sizes:
        prompt = timing_prompt(tokenizer, models[names[0]], batch_size=batch_size, prompt_tokens=prompt_tokens, seed=seed)
        prefill: dict = {name: [] for name in names}
        decode: dict = {name: [] for name in names}
        for round_index, name in _interleaved(names, warmup + repeats):
            model = models[name]
            seconds = prefill_seconds(model, prompt)
            decoding = generate_seconds(model, prompt, new_tokens) - generate_seconds(model, prompt, 1)
            if round_index >= warmup:
                prefill[name].append(seconds)
                decode[name].append(decoding)
        for name in names:
            reports[name][f"batch{batch_size}"] = {
                "prefill_tokens_per_s": batch_size * prompt_tokens / statistics.median(prefill[name]),
                "generation_ms_per_token": 1000 * max(statistics.median(decode[name]), 0.0) / (new_tokens - 1),
                "prefill_seconds_per_round": list(prefill[name]),
            }
    return reports

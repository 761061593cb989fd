"""Wall-clock inference speed: prefill throughput and per-token generation latency of several models,
measured side by side.

The models run interleaved (one run of each per round, the order rotated every round), so load from
other processes on the machine falls on all of them alike and their ratio stays fair. Every number
here is wall-clock and varies from run to run: it goes to timings.json, never results.json.

`SPEED_BATCH_SIZE` is the batch every speed comparison of the study reads (the pruning sweep of
notebook 02, the arms of notebook 04, the speed verdict); `batch_key` names a batch size's numbers
in a report. torch is imported by the functions that time a model, not by this module, so the
study's verdicts and summary read these two without it.
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Sequence

SPEED_BATCH_SIZE = 8  # prefill of a small server batch: the speed the study compares


def batch_key(batch_size: int) -> str:
    """The key of one batch size's numbers in time_inference's report (and timings.json): "batch8"."""
    return f"batch{batch_size}"


SPEED_BATCH = batch_key(SPEED_BATCH_SIZE)


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing_prompt(tokenizer, model, *, batch_size: int, prompt_tokens: int, seed: int = 0):
    """A (batch_size, prompt_tokens) batch of token ids drawn under a seed (the content does not change the cost)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    high = min(len(tokenizer), model.get_input_embeddings().weight.shape[0])
    return torch.randint(0, high, (batch_size, prompt_tokens), generator=generator)


def prefill_seconds(model, input_ids) -> float:
    """Seconds for one prefill: a forward pass over the prompt that returns the next token's logits."""
    import torch

    with torch.inference_mode():
        device = next(model.parameters()).device
        input_ids = input_ids.to(device)
        kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        _synchronize(device)
        start = time.perf_counter()
        model(input_ids=input_ids, use_cache=True, **kwargs)
        _synchronize(device)
        return time.perf_counter() - start


def prefill_timings(models: dict, tokenizer, *, prompt_tokens: int = 128, batch_size: int = SPEED_BATCH_SIZE,
                    repeats: int = 5, warmup: int = 1, seed: int = 0) -> dict:
    """Seconds of each of `repeats` prefills of each named model, on one shared prompt of
    (batch_size, prompt_tokens) tokens, after `warmup` unmeasured rounds, the models interleaved."""
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


def prefill_throughput(models: dict, tokenizer, *, prompt_tokens: int = 128, batch_size: int = SPEED_BATCH_SIZE,
                       **kw) -> dict:
    """Prefill throughput (tokens/s) of each named model: the median of prefill_timings' runs."""
    seconds = prefill_timings(models, tokenizer, prompt_tokens=prompt_tokens, batch_size=batch_size, **kw)
    return {name: batch_size * prompt_tokens / statistics.median(runs) for name, runs in seconds.items()}


def generate_seconds(model, input_ids, new_tokens: int) -> float:
    """Seconds for greedy generate() of exactly `new_tokens` tokens after the prompt (KV cache on)."""
    import torch

    with torch.inference_mode():
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
                   batch_sizes: Sequence[int] = (1, SPEED_BATCH_SIZE), repeats: int = 5, speed_rounds: int = 30,
                   warmup: int = 1, seed: int = 0) -> dict:
    """Prefill throughput (tokens/s) and per-token generation latency (ms) of each named model at each batch size.

    Returns {name: {batch_key(B): {"prefill_tokens_per_s", "generation_ms_per_token",
    "prefill_seconds_per_round"}, "prompt_tokens", "new_tokens", "repeats", "speed_rounds"}}: medians of the
    measured runs after `warmup` unmeasured ones, and the seconds of each measured prefill round (round i of
    every model ran in the same round, so their ratio is paired). The prefill at SPEED_BATCH_SIZE, which the
    speed verdict reads, gets `speed_rounds` short rounds (many, so that the paired ratio's interval decides on
    a quiet machine); every other prefill and the generation latency get `repeats`. The models run
    interleaved, as in prefill_timings, so machine load falls on all alike. Latency is (time to generate
    new_tokens - time to generate 1) / (new_tokens - 1): the decode steps alone.
    """
    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 to separate decoding from prefill (got {new_tokens})")
    if repeats < 1 or speed_rounds < 1 or warmup < 0:
        raise ValueError(f"repeats and speed_rounds must be >= 1 and warmup >= 0 (got repeats={repeats}, "
                         f"speed_rounds={speed_rounds}, warmup={warmup})")
    names = list(models)
    reports: dict = {name: {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
                            "speed_rounds": speed_rounds} for name in names}
    for batch_size in batch_sizes:
        prompt = timing_prompt(tokenizer, models[names[0]], batch_size=batch_size, prompt_tokens=prompt_tokens,
                               seed=seed)
        rounds = speed_rounds if batch_size == SPEED_BATCH_SIZE else repeats
        prefill: dict = {name: [] for name in names}
        for round_index, name in _interleaved(names, warmup + rounds):
            seconds = prefill_seconds(models[name], prompt)
            if round_index >= warmup:
                prefill[name].append(seconds)
        decode: dict = {name: [] for name in names}
        for round_index, name in _interleaved(names, warmup + repeats):
            decoding = (generate_seconds(models[name], prompt, new_tokens)
                        - generate_seconds(models[name], prompt, 1))
            if round_index >= warmup:
                decode[name].append(decoding)
        for name in names:
            reports[name][batch_key(batch_size)] = {
                "prefill_tokens_per_s": batch_size * prompt_tokens / statistics.median(prefill[name]),
                "generation_ms_per_token": 1000 * max(statistics.median(decode[name]), 0.0) / (new_tokens - 1),
                "prefill_seconds_per_round": list(prefill[name]),
            }
    return reports

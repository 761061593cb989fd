"""What each arm of the study costs and what it is good for: held-out perplexity (with a bootstrap
interval over records, and the per-record rows the verdicts pair across arms), parameter count, size
on disk, and inference speed.

Perplexity and sizes are deterministic (results.json); speed is wall-clock (timings.json), measured
side by side for the distinct architectures by `timing.time_inference` (see `arm_speeds`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ppt_core import models
from ppt_core.machine import timing
from ppt_core.pruning import flops
from ppt_core.run import arms, artifacts
from ppt_core.run.artifacts import rounded
from ppt_core.scoring import evaluation
from ppt_core.uncertainty import stats

TIMING_BATCH_SIZES = (1, timing.SPEED_BATCH_SIZE)  # one user, and a small server batch


def heldout_rows(model, tokenizer, texts: Sequence[str], *, max_length: int, batch_size: int = 16,
                 bf16: bool = False, progress: bool = True) -> np.ndarray:
    """Per record of `texts`: [summed log-probability (nats), scored tokens] (evaluation.record_logprob_rows)."""
    logprobs = evaluation.token_logprobs(model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
                                         bf16=bf16, progress=progress)
    return evaluation.record_logprob_rows(logprobs)


def perplexity_estimate(rows: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Token-weighted perplexity of heldout_rows and its 95% bootstrap interval over records:
    {"value", "low", "high", "records", "tokens"}."""
    estimate = stats.estimate(stats.perplexity_of_rows, [rows], n_boot=n_boot, seed=seed)
    return dict(estimate, records=len(rows), tokens=int(rows[:, 1].sum()))


def _weights_mb(folder: Path | None) -> float | None:
    if folder is None or not folder.is_dir():
        return None
    files = [f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")]
    return sum(f.stat().st_size for f in files) / 2**20 if files else None


def model_size(model, params: dict, arm: str) -> dict:
    """Parameters (unique tensors, tied ones once), their float32 size in MB, and the MB the arm's weight
    files take on disk (None for a model with no checkpoint folder, e.g. the tiny random one); for a
    fine-tuned arm also its LoRA adapter's MB."""
    unique = {id(p): p for p in model.parameters()}.values()
    spec = arms.checkpoint(params, arm)
    folder = Path(spec) if Path(spec).is_dir() else artifacts.cache_dir() / spec
    size = {
        "parameters": int(sum(p.numel() for p in unique)),
        "float32_mb": sum(p.numel() for p in unique) * 4 / 2**20,
        "disk_mb": _weights_mb(folder),
    }
    if arms.parse(arm).trained:
        size["adapter_mb"] = _weights_mb(artifacts.run_paths(params).model(arm) / "adapter")
    return size


def arm_utility(model, tokenizer, params: dict, arm: str, heldout: Sequence[str], *,
                progress: bool = True) -> tuple[dict, np.ndarray]:
    """(held-out perplexity with its interval and size of one arm, for results.json; its heldout_rows,
    which the verdicts pair across arms)."""
    rows = heldout_rows(model, tokenizer, heldout, max_length=params["max_length"],
                        batch_size=params["eval_batch_size"], bf16=evaluation.scoring_bf16(params, model),
                        progress=progress)
    return rounded({
        "heldout_perplexity": perplexity_estimate(rows, n_boot=params["n_bootstrap"], seed=params["seed"]),
        **model_size(model, params, arm),
    }), rows


def arm_speeds(starts: dict, tokenizer, params: dict, sizes: dict) -> dict:
    """Prefill tokens/s and generation ms per token at TIMING_BATCH_SIZES of every arm in `sizes`, for timings.json.

    A fine-tuned arm is its starting model with LoRA merged in: the same blocks, shapes and operations,
    so the same cost. The starting models (`starts`: base, pruned-noft) are timed once, side by side
    (timing.time_inference), and each arm gets its start's numbers; `sizes` (arm_utility's results)
    must show every arm with its start's parameter count.
    """
    arm_start = {arm: arms.parse(arm).start for arm in sizes}
    for arm, start in arm_start.items():
        if sizes[arm]["parameters"] != sizes[start]["parameters"]:
            raise ValueError(f"arm {arm!r} has {sizes[arm]['parameters']} parameters but its start {start!r} has "
                             f"{sizes[start]['parameters']}: time it on its own")
    speeds = timing.time_inference(
        starts, tokenizer, prompt_tokens=params["timing_prompt_tokens"], new_tokens=params["timing_new_tokens"],
        batch_sizes=TIMING_BATCH_SIZES, repeats=params["timing_repeats"], speed_rounds=params["timing_rounds"],
        seed=params["seed"])
    if "base" in starts:  # the ideal the measured speedup reads against: the FLOP ratio of the same prefill
        for name, model in starts.items():
            speeds[name][timing.SPEED_BATCH]["ideal_speedup"] = flops.ideal_speedup(
                starts["base"], model, params["timing_prompt_tokens"], logits_positions=1)
    return {arm: speeds[start] for arm, start in arm_start.items()}


def measure_arms(params: dict, arm_names: Sequence[str], heldout: Sequence[str], *,
                 progress: bool = True) -> tuple[dict, dict, dict]:
    """(results, timings, rows) of every arm: arm_utility of each, loaded once, then arm_speeds of the
    starting models kept from that pass; rows[arm] = its heldout_rows, the same records for every arm."""
    results, rows, starts, tokenizer = {}, {}, {}, None
    for arm in tqdm(arm_names, desc="arms", disable=not progress):
        model, tokenizer = models.load_arm(params, arm)
        results[arm], rows[arm] = arm_utility(model, tokenizer, params, arm, heldout, progress=False)
        if arms.parse(arm).start == arm:
            starts[arm] = model
    return results, arm_speeds(starts, tokenizer, params, results), rows


def utility_table(results: dict, timings: dict) -> pd.DataFrame:
    """One row per arm: perplexity with its interval, size, and speed."""
    rows = {}
    for arm, r in results.items():
        ppl, speed = r["heldout_perplexity"], timings.get(arm, {})
        row = {
            "held-out perplexity": ppl["value"],
            "95% interval": f"[{ppl['low']:.3g}, {ppl['high']:.3g}]",
            "parameters (M)": r["parameters"] / 1e6,
            "disk (MB)": r["disk_mb"],
        }
        for batch in TIMING_BATCH_SIZES:
            key = timing.batch_key(batch)
            if key in speed:
                row[f"prefill tok/s (b{batch})"] = speed[key]["prefill_tokens_per_s"]
                row[f"ms/token (b{batch})"] = speed[key]["generation_ms_per_token"]
        rows[arm] = row
    return pd.DataFrame(rows).T

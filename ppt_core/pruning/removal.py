"""Which blocks to remove, and removing them: the result is an ordinary, smaller transformers model.

Strategies (all return sorted block indices, 0-based; block l maps state l to state l+1 of S):
- `pairwise`  the paper's: the n blocks whose output is most similar to their input, S[l, l+1],
              chosen greedily from one S of the full model;
- `block`     the n consecutive blocks l..l+n-1 with the highest S[l, l+n], i.e. the smallest
              angular distance across the run (Gromov et al. 2024, "The Unreasonable Ineffectiveness
              of the Deeper Layers");
- `iterative` remove the most redundant block, measure S again on the pruned model, repeat;
- `last`      the n last blocks (a baseline);
- `random`    n blocks drawn uniformly under a seed (a baseline).

`prune_layers` never modifies the model it is given: it returns a pruned deep copy, so one loaded
model serves a whole sweep. It works on any decoder that passes `ppt_core.stages.conformance` (whose removal
and reload steps run these functions on a tiny model of the user's config): the stack of blocks is
found in the model itself, and everything that depends on a block's position follows the kept blocks. The copy has
`num_hidden_layers` and every per-layer config list shortened (`layer_types`, whose sliding and
full attention layers Gemma 2/3 and Qwen2/3 build their masks and KV cache from), Qwen's
`max_window_layers` boundary moved to the same blocks, and each module's `layer_idx` renumbered
0..L'-1 so the KV cache stores one entry per remaining block. `save_pretrained` then gives a
checkpoint that plain `AutoModelForCausalLM.from_pretrained` loads, without this package.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from tqdm.auto import tqdm

from ppt_core.machine.timing import SPEED_BATCH_SIZE
from ppt_core.models import architectures
from ppt_core.pruning import similarity as similarity_module
from ppt_core.run import artifacts

STRATEGIES = ("pairwise", "block", "iterative", "last", "random")


class PruningError(ValueError):
    """An impossible pruning request: bad strategy, count or block index, or an unsupported model."""


def n_blocks(model) -> int:
    """The number of transformer blocks of `model`."""
    return len(architectures.decoder_blocks(model))


def select_layers(similarity: np.ndarray, n_remove: int, strategy: str = "pairwise", *, seed: int = 0,
                  model=None, tokenizer=None, texts: Sequence[str] | None = None, **similarity_kw) -> list[int]:
    """The sorted indices of the `n_remove` blocks `strategy` would remove, given S of shape (L+1, L+1).

    `iterative` measures S again after each removal, so it also needs model, tokenizer and
    calibration texts (and takes layer_similarity's keyword arguments); S is used for its first step.
    """
    similarity = np.asarray(similarity, dtype=float)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1] or similarity.shape[0] < 2:
        raise PruningError(f"similarity must be a square (L+1, L+1) matrix with L >= 1 (got shape {similarity.shape})")
    depth = similarity.shape[0] - 1
    _check_count(n_remove, depth)
    if strategy == "pairwise":
        redundancy = similarity_module.block_redundancy(similarity, 1)
        return _top_blocks(redundancy, n_remove)
    if strategy == "block":
        start = int(np.argmax(similarity_module.block_redundancy(similarity, n_remove)))  # first on ties
        return list(range(start, start + n_remove))
    if strategy == "iterative":
        return sorted(iterative_order(model, tokenizer, texts, n_remove, first_similarity=similarity, **similarity_kw))
    if strategy == "last":
        return list(range(depth - n_remove, depth))
    if strategy == "random":
        return sorted(int(b) for b in np.random.default_rng(seed).choice(depth, size=n_remove, replace=False))
    raise PruningError(f"unknown pruning strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")


def iterative_order(model, tokenizer, texts: Sequence[str] | None, n_remove: int, *,
                    first_similarity: np.ndarray | None = None, progress: bool = True, **similarity_kw) -> list[int]:
    """Original indices of the blocks `iterative` removes, in the order it removes them.

    Each step removes the remaining block with the highest S[l, l+1], then measures S again on the
    pruned model. The first k entries are the iterative choice for k blocks, so one call serves a sweep.
    """
    if model is None or tokenizer is None or not texts:
        raise PruningError("strategy 'iterative' measures S again after each removal: pass model, tokenizer and texts")
    _check_count(n_remove, n_blocks(model))
    kept = list(range(n_blocks(model)))  # original index of each block of the current model
    removed: list[int] = []
    current, similarity = model, first_similarity
    for _ in tqdm(range(n_remove), desc="iterative pruning", disable=not progress, leave=False):
        if similarity is None:
            similarity = similarity_module.layer_similarity(current, tokenizer, texts, progress=False, **similarity_kw)
        position = _top_blocks(similarity_module.block_redundancy(similarity, 1), 1)[0]
        removed.append(kept.pop(position))
        current = prune_layers(model, removed)
        similarity = None
    return removed


def _top_blocks(redundancy: np.ndarray, n: int) -> list[int]:
    # A stable sort on the negated score: on ties the earlier block wins, so the choice is reproducible.
    order = np.argsort(-redundancy, kind="stable")
    return sorted(int(b) for b in order[:n])


def _check_count(n_remove, depth: int) -> None:
    if isinstance(n_remove, bool) or not isinstance(n_remove, (int, np.integer)):
        raise PruningError(f"n_remove must be an integer (got {n_remove!r})")
    if not 1 <= n_remove < depth:
        raise PruningError(f"n_remove must be between 1 and {depth - 1} for a model of {depth} blocks (got {n_remove})")


def prune_layers(model, layers: Sequence[int]):
    """A deep copy of `model` without the blocks `layers` (0-based); the input model is left unchanged.

    Returns a standard transformers model of the same class: config depth and per-layer config
    lists updated, attention `layer_idx` renumbered 0..L'-1 for the KV cache.
    """
    try:
        architectures.check_config(model.config, type(model).__name__)
    except architectures.ArchitectureError as err:
        raise PruningError(str(err)) from err
    depth = n_blocks(model)
    remove = sorted({int(layer) for layer in layers})
    if len(remove) != len(list(layers)):
        raise PruningError(f"layers to remove contain duplicates (got {list(layers)})")
    bad = [layer for layer in remove if not 0 <= layer < depth]
    if bad:
        raise PruningError(f"block indices {bad} are out of range: the model has blocks 0..{depth - 1}")
    _check_count(len(remove), depth)

    pruned = copy.deepcopy(model)
    keep = [index for index in range(depth) if index not in remove]
    path = architectures.blocks_path(pruned)
    blocks = pruned.get_submodule(path)
    kept_blocks = [blocks[index] for index in keep]
    for new_index, block in enumerate(kept_blocks):
        # The KV cache (and Gemma 3's decoder layer) index by layer_idx: it must be the block's new position.
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    parent, _, name = path.rpartition(".")
    setattr(pruned.get_submodule(parent), name, type(blocks)(kept_blocks))
    prune_config(pruned.config, keep, depth)
    return pruned


def per_layer_settings(config, depth: int) -> dict[str, list]:
    """The config's per-layer settings: every public list with one entry per block (layer_types, sliding or full
    attention per block in Gemma 2/3 and Qwen2/3, from which masks and cache layers are built; and any other)."""
    return {name: value for name, value in vars(config).items() if isinstance(value, list) and len(value) == depth
            and not (name.startswith("_") or name.endswith("token_id") or name == "architectures")}


def prune_config(config, keep: list[int], depth: int) -> None:
    """Shorten every per-layer setting of `config` to the kept blocks."""
    for name, value in per_layer_settings(config, depth).items():
        setattr(config, name, [value[index] for index in keep])
    # Qwen2: the first `max_window_layers` blocks use full attention; keep that boundary on the same blocks.
    if isinstance(getattr(config, "max_window_layers", None), int):
        config.max_window_layers = sum(1 for index in keep if index < config.max_window_layers)
    config.num_hidden_layers = len(keep)  # GPT-2's n_layer is an alias of this


def target_blocks(sweep_records: Sequence[dict], similarity: np.ndarray, n_remove: int, strategy: str,
                  **select_kw) -> list[int]:
    """The blocks `strategy` removes at `n_remove`: taken from a sweep that already chose them (iterative
    selection measures S again at every step, so it is not repeated), else chosen now by select_layers."""
    for record in sweep_records:
        if record["strategy"] == strategy and record["n_removed"] == n_remove:
            return list(record["removed_blocks"])
    return select_layers(similarity, n_remove, strategy, **select_kw)


def sweep(model, tokenizer, similarity: np.ndarray, *, strategies: Sequence[str], levels: Sequence[int],
          eval_texts: Sequence[str], calibration_texts: Sequence[str], seed: int = 0, max_length: int = 128,
          batch_size: int = 16, pooling: str = "mean", bf16: bool = False, progress: bool = True) -> list[dict]:
    """Zero-shot held-out perplexity of each strategy at each number of removed blocks (scored under bf16
    autocast with `bf16`: evaluation.next_token_logits).

    Returns one record per (strategy, level): {"strategy", "n_removed", "removed_blocks", "perplexity",
    "logprob_rows"}, the last the per-record [summed log-probability, tokens] of `eval_texts` that the
    verdicts pair across strategies. Level 0 is the unpruned model. A set of blocks chosen by several
    strategies is scored once.
    `iterative` runs once to the deepest level (its first k removals are its choice for k), measuring
    S again on `calibration_texts` after each removal.
    """
    from ppt_core.scoring import evaluation
    from ppt_core.uncertainty import stats

    levels = sorted(set(int(level) for level in levels))
    _check_count(max(levels + [1]), n_blocks(model))
    choices: dict[tuple[str, int], list[int]] = {}
    for strategy in strategies:
        if strategy == "iterative" and max(levels) > 0:
            order = iterative_order(model, tokenizer, calibration_texts, max(levels), first_similarity=similarity,
                                    max_length=max_length, batch_size=batch_size, pooling=pooling)
        for level in levels:
            if level == 0:
                choices[strategy, level] = []
            elif strategy == "iterative":
                choices[strategy, level] = sorted(order[:level])
            else:
                choices[strategy, level] = select_layers(similarity, level, strategy, seed=seed)
    scored: dict[tuple[int, ...], np.ndarray] = {}
    for removed in tqdm(sorted({tuple(c) for c in choices.values()}), desc="perplexity sweep", disable=not progress):
        pruned = prune_layers(model, removed) if removed else model
        scored[removed] = evaluation.record_logprob_rows(evaluation.token_logprobs(
            pruned, tokenizer, eval_texts, max_length=max_length, batch_size=batch_size, bf16=bf16, progress=False))
    return [
        {"strategy": strategy, "n_removed": level, "removed_blocks": removed,
         "perplexity": stats.perplexity_of_rows(scored[tuple(removed)]), "logprob_rows": scored[tuple(removed)]}
        for (strategy, level), removed in choices.items()
    ]


def pruning_record(similarity: np.ndarray, removed: Sequence[int], strategy: str, depth: int) -> dict:
    """What pruning.json keeps beside a pruned checkpoint: the removed and kept blocks, and why."""
    removed = sorted(int(b) for b in removed)
    return {
        "strategy": strategy,
        "removed_blocks": removed,
        "kept_blocks": [b for b in range(depth) if b not in removed],
        "original_depth": depth,
        "pruned_depth": depth - len(removed),
        # S[l, l+1] per block of the full model: the score the pairwise strategy ranks by.
        "block_redundancy": [round(float(s), 6) for s in similarity_module.block_redundancy(similarity, 1)],
    }


def record_results(paths, params: dict, record: dict, records: list[dict], speed, *, n_eval: int) -> None:
    """Write what notebook 02 publishes: to timings.json["pruning"] the measured prefill tokens/s per level
    (`speed`, flops.pruning_speed's table); to results.json["pruning"] the pruned model's `record`
    (pruning_record), each strategy's perplexity and removed blocks per level (`records`, sweep's), and the
    FLOP-ideal prefill speedup per level."""
    artifacts.update_timings(paths, "pruning", {
        "prompt_tokens": params["timing_prompt_tokens"], "batch_size": SPEED_BATCH_SIZE,
        "prefill_tokens_per_s": {str(k): v for k, v in zip(speed["blocks removed"], speed["prefill tokens/s"])},
    })
    artifacts.update_results(paths, "pruning", dict(
        record, n_eval=n_eval,
        perplexity={s: {str(r["n_removed"]): r["perplexity"] for r in records if r["strategy"] == s}
                    for s in params["prune_strategies"]},
        removed_by_strategy={s: {str(r["n_removed"]): r["removed_blocks"] for r in records if r["strategy"] == s}
                             for s in params["prune_strategies"]},
        ideal_prefill_speedup={str(k): round(v, 4) for k, v in zip(speed["blocks removed"], speed["ideal speedup"])},
    ))


def check_params(params: dict) -> None:
    """The profile's pruning settings make sense before any model is loaded (depth is checked on load)."""
    for key, values in (("prune_strategy", [params.get("prune_strategy", "pairwise")]),
                        ("prune_strategies", params.get("prune_strategies", []))):
        unknown = [s for s in values if s not in STRATEGIES]
        if unknown:
            raise PruningError(f"{key} has unknown strategy {unknown[0]!r}: choose from {', '.join(STRATEGIES)}")
    n_remove = params.get("n_remove", 1)
    if isinstance(n_remove, bool) or not isinstance(n_remove, int) or n_remove < 1:
        raise PruningError(f"n_remove must be an integer >= 1 (got {n_remove!r})")
    sweep = params.get("prune_sweep", [0])
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in sweep) or sweep != sorted(set(sweep)):
        raise PruningError(f"prune_sweep must be increasing integers >= 0, e.g. [0, 4, 8] (got {sweep})")
    if int(params.get("n_eval", 1)) < 1:
        raise PruningError(f"n_eval must be >= 1 (got {params['n_eval']})")
    if params.get("n_heldout") is not None and int(params.get("n_eval", 1)) > int(params["n_heldout"]):
        raise PruningError(f"n_eval ({params['n_eval']}) exceeds n_heldout ({params['n_heldout']}): lower n_eval")


def check_depth(params: dict, depth: int) -> None:
    """The profile's pruning levels fit a model of `depth` blocks (each must leave at least one block)."""
    deepest = max([params["n_remove"], *params.get("prune_sweep", [0])])
    if deepest >= depth:
        key = "n_remove" if params["n_remove"] >= depth else "prune_sweep"
        raise PruningError(
            f"{key} asks to remove {deepest} blocks but the model has only {depth}: "
            f"use values below {depth}"
        )

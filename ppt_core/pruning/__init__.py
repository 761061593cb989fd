"""Layer pruning by hidden-state cosine similarity: how much each block changes its input (`similarity`), which
blocks to remove and removing them (`removal`, whose functions and classes this package re-exports:
`pruning.select_layers(...)`, `pruning.prune_layers(...)`), and the ideal FLOPs a pruned model saves (`flops`).

Public API: the names in `__all__` below (from `removal`), and the modules `similarity` and `flops`."""

from ppt_core.pruning.removal import (
    STRATEGIES,
    PruningError,
    check_depth,
    check_params,
    iterative_order,
    n_blocks,
    per_layer_settings,
    prune_config,
    prune_layers,
    pruning_record,
    record_results,
    select_layers,
    sweep,
    target_blocks,
)

__all__ = [
    "STRATEGIES",
    "PruningError",
    "check_depth",
    "check_params",
    "iterative_order",
    "n_blocks",
    "per_layer_settings",
    "prune_config",
    "prune_layers",
    "pruning_record",
    "record_results",
    "select_layers",
    "sweep",
    "target_blocks",
]

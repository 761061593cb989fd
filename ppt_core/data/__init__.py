"""The study's data: the synthetic clinical-notes corpus or a user's file, the PII found in it, its splits
written to and read from a run's data folder with their card (`splits`, whose functions and classes this package
re-exports: `data.build_dataset(...)`, `data.load_splits(...)`), and records turned into token rows and batches.

Public API: the names in `__all__` below (from `splits`), and the modules `corpus`, `user_data`, `pii`, `tokens`
and `batching`."""

from ppt_core.data.splits import (
    SPLITS,
    DatasetSplits,
    build_dataset,
    check_canaries_fit,
    check_params,
    dataset_card,
    first_notes,
    known_pii_notes,
    load_splits,
    note_token_lengths,
    source_sentence,
    token_lengths,
    train_size,
)

__all__ = [
    "SPLITS",
    "DatasetSplits",
    "build_dataset",
    "check_canaries_fit",
    "check_params",
    "dataset_card",
    "first_notes",
    "known_pii_notes",
    "load_splits",
    "note_token_lengths",
    "source_sentence",
    "token_lengths",
    "train_size",
]

"""The setting errors that more than one module raises, at the bottom of the house so any module may.

Each is a ValueError: run_all.py turns every ValueError into one line naming the bad value and the
fix. An error that only one module raises lives in that module (PruningError in pruning, ModelSpecError
in models).
"""


class DataError(ValueError):
    """Bad user data or impossible data settings (data, corpus and user_data raise it)."""


class ArchitectureError(ValueError):
    """A model this study cannot prune or fine-tune, with the reason."""


class TrainingConfigError(ValueError):
    """A fine-tuning setting that cannot work (or cannot keep its privacy promise)."""

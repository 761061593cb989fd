"""PrunePrivyTune: prune redundant transformer blocks, heal with DP-LoRA, measure what leaks."""

__version__ = "0.1.0"

# The library's concept packages, lowest first: a module imports only from its own package or a lower one
# (tests/test_layers.py checks it, and that every package under ppt_core/ is named here). A new module joins the
# package of what it is.
PACKAGES = (
    "run",  # the study's settings, run folders, arms
    "uncertainty",  # intervals, ROC arithmetic, power
    "machine",  # precision, memory, timing, the measured machine kinds
    "models",  # loading a model spec, what a decoder is
    "data",  # the corpus or a user's file, PII, splits, tokens and batches
    "scoring",  # per-token log-probabilities, perplexity, BERTScore
    "pruning",  # block similarity, removal, FLOPs
    "dp",  # DP-SGD and LoRA fine-tuning
    "leakage",  # membership, canaries, extraction, synthetic data, audits
    "stages",  # the study's stages, on every arm
    "study",  # verdicts, pooling, report, figures, checks, tuning
)

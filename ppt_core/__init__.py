"""PrunePrivyTune: prune redundant transformer blocks, heal with DP-LoRA, measure what leaks."""

__version__ = "0.1.0"

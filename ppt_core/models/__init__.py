"""The models: resolving a model spec and loading (model, tokenizer), an arm of the study among them
(`loading`, whose functions and classes this package re-exports: `models.load_model(...)`), and what a decoder
is to this study, read from the model itself (`architectures`: its blocks and the projections LoRA adapts).

Public API: the names in `__all__` below (from `loading`), and the module `architectures`."""

from ppt_core.models.loading import (
    EMBEDDED_MODEL,
    TINY_LLAMA,
    TINY_MODEL,
    ModelSpecError,
    check_model_spec,
    check_params,
    check_tokenizer,
    embedded_config,
    load_arm,
    load_model,
    load_tokenizer,
    quiet_transformers,
    resolve_device,
)

__all__ = [
    "EMBEDDED_MODEL",
    "TINY_LLAMA",
    "TINY_MODEL",
    "ModelSpecError",
    "check_model_spec",
    "check_params",
    "check_tokenizer",
    "embedded_config",
    "load_arm",
    "load_model",
    "load_tokenizer",
    "quiet_transformers",
    "resolve_device",
]

"""The decoders this study can measure, prune and fine-tune, and how each is found inside a model.

Three stages look inside a model: similarity reads the residual stream at the boundaries of its
blocks, pruning removes blocks, and LoRA attaches to its projections. They agree on what a model is
because all three ask this module. `decoder_blocks` finds the stack of blocks from the model itself:
the one `ModuleList` of `num_hidden_layers` identical layers, wherever the model keeps it
(`model.layers`, `transformer.h`, `gpt_neox.layers`, ...). `SUPPORTED` is the one table of what
is supported: per model type, the LoRA target modules of "query+value", "attention" and
"attention+mlp".

Support is decided from the config alone, before any weights are loaded (`check_config`):
1. the model must be a decoder-only causal language model (no encoder, no cross-attention);
2. its model type must be in `SUPPORTED`: each row is tested on a tiny random model for the
   similarity shape, block removal, save and plain reload with equal logits, cached == uncached
   greedy decoding, per-layer config lists following the kept blocks, and one DP-LoRA step
   (tests/test_architectures.py). A new decoder is added by a row here and a config there;
3. its outputs must not depend on a block's absolute index in a way removal would change
   (`INDEX_DEPENDENT`): after pruning, the kept blocks are renumbered 0..L'-1, so a block whose
   computation reads its own index would compute something else.
`check_params` runs these checks on a profile's model before notebook 00, from its config and a
weightless (meta-device) skeleton built from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ppt_core.errors import ArchitectureError, TrainingConfigError

LORA_TARGET_SETS = ("query+value", "attention", "attention+mlp")


@dataclass(frozen=True)
class Architecture:
    """One supported decoder: its family name and the module names LoRA attaches to.

    query_value: the smallest useful set (Hu et al. 2021 adapt W_q and W_v); fused projections
    (Phi-3's qkv_proj, GPT-2's c_attn, GPT-NeoX's query_key_value) hold query and value together.
    Names that recur in a block (GPT-2 calls both output projections c_proj, GPT-NeoX's attention
    output is a `dense`) carry their parent module's name.
    """

    family: str
    query_value: tuple[str, ...]
    attention: tuple[str, ...]
    mlp: tuple[str, ...]

    def lora_targets(self, targets: str) -> list[str]:
        """The module names of the named target set (one of LORA_TARGET_SETS)."""
        if targets == "query+value":
            return list(self.query_value)
        return list(self.attention) + (list(self.mlp) if targets == "attention+mlp" else [])


_SEPARATE_QKV = dict(query_value=("q_proj", "v_proj"), attention=("q_proj", "k_proj", "v_proj", "o_proj"),
                     mlp=("gate_proj", "up_proj", "down_proj"))

SUPPORTED: dict[str, Architecture] = {
    "llama": Architecture("Llama", **_SEPARATE_QKV),
    "mistral": Architecture("Mistral", **_SEPARATE_QKV),
    "qwen2": Architecture("Qwen2", **_SEPARATE_QKV),
    "qwen3": Architecture("Qwen3", **_SEPARATE_QKV),
    "gemma": Architecture("Gemma", **_SEPARATE_QKV),
    "gemma2": Architecture("Gemma 2", **_SEPARATE_QKV),
    "gemma3_text": Architecture("Gemma 3 (text)", **_SEPARATE_QKV),
    "olmo2": Architecture("OLMo 2", **_SEPARATE_QKV),
    "phi3": Architecture("Phi-3", query_value=("qkv_proj",), attention=("qkv_proj", "o_proj"),
                         mlp=("gate_up_proj", "down_proj")),
    "gpt2": Architecture("GPT-2", query_value=("attn.c_attn",), attention=("attn.c_attn", "attn.c_proj"),
                         mlp=("mlp.c_fc", "mlp.c_proj")),
    "gpt_neox": Architecture("GPT-NeoX (Pythia)", query_value=("attention.query_key_value",),
                             attention=("attention.query_key_value", "attention.dense"),
                             mlp=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")),
}

# Config settings under which a block's computation reads its own absolute index: removing blocks
# renumbers the kept ones, so their outputs would change. Each is refused while it is on.
INDEX_DEPENDENT = {
    "scale_attn_by_inverse_layer_idx": "it divides each block's attention scores by (layer index + 1), "
                                       "so the kept blocks, renumbered, would compute different outputs",
}


# --- support, decided from the config -------------------------------------------------------------


def unsupported_reason(config) -> str | None:
    """Why a model with this config cannot be pruned and fine-tuned here, or None when it can."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        return "it is an encoder-decoder model; only decoder-only causal language models can be pruned here"
    if model_type not in SUPPORTED:
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
            kind = "it has no causal language-model class in transformers"
        elif type(config) in MODEL_FOR_MASKED_LM_MAPPING:
            kind = "it is an encoder (a masked language model), not a decoder-only causal language model"
        else:
            kind = "it is not one of the tested decoders"
        return f"{kind}; supported model types: {', '.join(SUPPORTED)}"
    if getattr(config, "add_cross_attention", False):
        return ("it has cross-attention (add_cross_attention=True); only decoder-only causal language models "
                "can be pruned here")
    for setting, why in INDEX_DEPENDENT.items():
        if getattr(config, setting, False):
            return f"{setting}=True: {why}"
    return None


def check_config(config, name: str | None = None) -> None:
    """Raise ArchitectureError, in one line naming the model and the reason, unless `config` is supported."""
    reason = unsupported_reason(config)
    if reason is not None:
        label = name or getattr(config, "_name_or_path", None) or type(config).__name__
        raise ArchitectureError(
            f"model {label} (model_type {getattr(config, 'model_type', None)!r}) cannot be pruned and fine-tuned "
            f"here: {reason}"
        )


def architecture(model_or_config) -> Architecture:
    """The table row of a supported model (or config); ArchitectureError with the reason otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    check_config(config, type(model_or_config).__name__ if hasattr(model_or_config, "config") else None)
    return SUPPORTED[config.model_type]


# --- where the blocks are ------------------------------------------------------------------------


def depth(config) -> int:
    """The number of decoder blocks the config declares (GPT-2's n_layer is an alias of num_hidden_layers)."""
    return int(config.num_hidden_layers)


def blocks_path(model) -> str:
    """Dotted name of the model's stack of decoder blocks: the one ModuleList of num_hidden_layers
    modules of one class (e.g. "model.layers", "transformer.h", "gpt_neox.layers")."""
    n = depth(model.config)
    found = [name for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) == n and len({type(b) for b in module}) == 1]
    if len(found) != 1:
        raise ArchitectureError(
            f"{type(model).__name__} is not supported: expected one list of {n} identical decoder blocks, "
            f"found {len(found)} ({', '.join(found) or 'none'})"
        )
    return found[0]


def decoder_blocks(model) -> nn.ModuleList:
    """The model's list of decoder blocks, in order (block l maps boundary state l to l+1)."""
    return model.get_submodule(blocks_path(model))


# --- LoRA targets --------------------------------------------------------------------------------


def lora_target_modules(model, targets: str | list[str] = "attention") -> list[str]:
    """Module names LoRA attaches to: the architecture's attention (and MLP) projections, checked to exist."""
    if isinstance(targets, str):
        if targets not in LORA_TARGET_SETS:
            raise TrainingConfigError(f"lora_targets must be one of {LORA_TARGET_SETS} or a list (got {targets!r})")
        model_type = getattr(model.config, "model_type", None)
        if model_type not in SUPPORTED:
            raise TrainingConfigError(
                f"no default LoRA targets for model type {model_type!r}: pass lora_targets as a list of module names "
                f"(its linear layers are {', '.join(_linear_names(model))})"
            )
        names = SUPPORTED[model_type].lora_targets(targets)
    else:
        names = list(targets)
    module_names = [name for name, _ in model.named_modules()]
    for name in names:
        if not any(m == name or m.endswith("." + name) for m in module_names):
            raise TrainingConfigError(
                f"LoRA target module {name!r} does not exist in {type(model).__name__}: "
                f"its linear layers are named {', '.join(_linear_names(model))}"
            )
    return names


def _linear_names(model) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"})


# --- the early check -----------------------------------------------------------------------------


def model_config(spec: str):
    """The config of a model spec, read without loading weights: the embedded model's from its GGUF file
    (or its converted cache), the tiny model's from its definition, any other's from its folder or id."""
    from transformers import AutoConfig, LlamaConfig

    from ppt_core import models

    if spec == models.TINY_MODEL:
        return LlamaConfig(**models.TINY_LLAMA)
    try:
        return models.embedded_config() if spec == models.EMBEDDED_MODEL else AutoConfig.from_pretrained(spec)
    except (OSError, ValueError, KeyError) as err:  # an unknown model_type is a ValueError or KeyError
        raise ArchitectureError(f"cannot read the config of model {spec!r}: {' '.join(str(err).split())}") from err


def skeleton(config):
    """A weightless model (every tensor on the meta device) built from `config`: names and structure only."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def check_params(params: dict):
    """The profile's model is a supported decoder with its LoRA targets; return its config (for the checks
    that depend on it, such as the pruning depth).

    Reads the config only (no weights), so an unsupported model stops before notebook 00.
    """
    config = model_config(params["model"])
    check_config(config, params["model"])
    model = skeleton(config)
    blocks_path(model)
    lora_target_modules(model, params["lora_targets"])
    return config

"""What a decoder is to this study, read from the model itself: its stack of blocks and the projections LoRA adapts.

Three stages look inside a model: similarity reads the residual stream at the boundaries of its
blocks, pruning removes blocks, and LoRA attaches to its projections. They agree on what a model is
because all three ask this module. `decoder_blocks` finds the stack of blocks from the model itself:
the one `ModuleList` of `num_hidden_layers` layers of one class, wherever the model keeps it
(`model.layers`, `transformer.h`, `gpt_neox.layers`, ...). `lora_roles` finds, in the first block, the
projections of "query+value", "attention" and "attention+mlp" by their role (separate, fused or low-rank
query/key/value projections; dense or mixture-of-experts MLPs); `TARGET_OVERRIDES` names them outright for
the model types whose names we pin, and tests that the names agree with what the roles find.

Whether a model can be pruned and fine-tuned is decided in two places, both before any weights load:
1. here, from the config (`check_config`): it must be a decoder-only causal language model (no
   encoder, no encoder-decoder, no cross-attention) with no setting under which a block reads its own
   absolute index (`INDEX_DEPENDENT`: after pruning, the kept blocks are renumbered 0..L'-1);
2. in `ppt_core.stages.conformance`, by running every operation the study relies on (similarity, removal,
   reload, KV cache, LoRA, per-record gradients, a DP step) on a tiny random model of the user's own
   config. There is no list of supported model types: a decoder that passes runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ppt_core.run.errors import ArchitectureError, TrainingConfigError

LORA_TARGET_SETS = ("query+value", "attention", "attention+mlp")


@dataclass(frozen=True)
class Architecture:
    """Where LoRA attaches in one decoder: the module names of each target set, and how they were found.

    query_value: the smallest useful set (Hu et al. 2021 adapt W_q and W_v); fused projections
    (Phi-3's qkv_proj, GPT-2's c_attn, GPT-NeoX's query_key_value) hold query and value together.
    Names that recur in a block (GPT-2 calls both output projections c_proj, GPT-NeoX's attention
    output is a `dense`) carry their parent module's name; PEFT matches a name as a suffix of a module's path.
    note: what a target set means for this block where it is not the plain one (a mixture-of-experts MLP).
    """

    family: str
    query_value: tuple[str, ...]
    attention: tuple[str, ...]
    mlp: tuple[str, ...]
    note: str = ""

    def lora_targets(self, targets: str) -> list[str]:
        """The module names of the named target set (one of LORA_TARGET_SETS)."""
        if targets == "query+value":
            return list(self.query_value)
        return list(self.attention) + (list(self.mlp) if targets == "attention+mlp" else [])


_SEPARATE_QKV = dict(query_value=("q_proj", "v_proj"), attention=("q_proj", "k_proj", "v_proj", "o_proj"),
                     mlp=("gate_proj", "up_proj", "down_proj"))

# Named LoRA targets of the model types whose names we pin (tests/test_architectures.py checks that each row
# names the modules `lora_roles` finds). Every other decoder gets the projections found by their role.
TARGET_OVERRIDES: dict[str, Architecture] = {
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
# renumbers the kept ones, so their outputs would change. Each is refused while it is on. (A block that reads
# its index without such a setting fails the conformance check's removal step instead.)
INDEX_DEPENDENT = {
    "scale_attn_by_inverse_layer_idx": "it divides each block's attention scores by (layer index + 1), "
                                       "so the kept blocks, renumbered, would compute different outputs",
}


# --- support, decided from the config -------------------------------------------------------------


def unsupported_reason(config) -> str | None:
    """Why a model with this config cannot be pruned and fine-tuned here, or None when nothing in the config
    refuses it (the conformance check then decides, `ppt_core.stages.conformance`)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

    if getattr(config, "is_encoder_decoder", False):
        return "it is an encoder-decoder model; only decoder-only causal language models can be pruned here"
    if type(config) in MODEL_FOR_MASKED_LM_MAPPING:
        return "it is an encoder (a masked language model), not a decoder-only causal language model"
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        return "it has no causal language-model class in transformers (AutoModelForCausalLM cannot build it)"
    if getattr(config, "add_cross_attention", False):
        return ("it has cross-attention (add_cross_attention=True); only decoder-only causal language models "
                "can be pruned here")
    if not isinstance(getattr(config, "num_hidden_layers", None), int):
        return ("its config has no num_hidden_layers (a multimodal or composite config?): pass the checkpoint of "
                "its text decoder")
    for setting, why in INDEX_DEPENDENT.items():
        if getattr(config, setting, False):
            return f"{setting}=True: {why}"
    return None


def check_config(config, name: str | None = None) -> None:
    """Raise ArchitectureError, in one line naming the model and the reason, where the config refuses it."""
    reason = unsupported_reason(config)
    if reason is not None:
        raise ArchitectureError(f"{describe(config, name)} cannot be pruned and fine-tuned here: {reason}")


def describe(config, name: str | None = None) -> str:
    """"model NAME (model_type 'TYPE')": how messages name a model."""
    label = name or getattr(config, "_name_or_path", None) or type(config).__name__
    return f"model {label} (model_type {getattr(config, 'model_type', None)!r})"


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
            f"{type(model).__name__} is not supported: expected one list of {n} decoder blocks of one class, "
            f"found {len(found)} ({', '.join(found) or 'none'})"
        )
    return found[0]


def decoder_blocks(model) -> nn.ModuleList:
    """The model's list of decoder blocks, in order (block l maps boundary state l to l+1)."""
    return model.get_submodule(blocks_path(model))


def block_hidden_states(output):
    """The residual stream a block outputs: the output itself, or the first of the tuple (Falcon) or list (GPT-1)
    some blocks return."""
    return output[0] if isinstance(output, (tuple, list)) else output


# --- LoRA targets, found by role -----------------------------------------------------------------

# A projection's role is read from its own name or its parent's (Moshi wraps each projection: q_proj.linear).
_ROLES = {
    "fused": r"c_attn|qkv|qkv_proj|qkv_linear|query_key_value|wqkv|w_pack|in_proj_qkv\w*",
    "query": r"q|q_proj|q_b_proj|query|wq|q_lin|project_q|linear_q",
    "value": r"v|v_proj|value|wv|v_lin|project_v|linear_v|kv_proj|kv_b_proj",  # kv_b_proj: MLA's key and value
}
_ATTENTION = re.compile(r".*(attn|attention).*", re.IGNORECASE)  # self_attn, attention, self_attention, linear_attn
_MLP = re.compile(r"mlp|mlp_block|feed_forward|ffn", re.IGNORECASE)
_EXPERTS = re.compile(r".*(expert|router).*", re.IGNORECASE)  # routed and shared experts, routers: an MoE


def _is_linear(module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's transposed Linear


def _role(path: str) -> str | None:
    for part in reversed(path.split(".")[-2:]):
        for role, pattern in _ROLES.items():
            if re.fullmatch(pattern, part, re.IGNORECASE):
                return role
    return None


def _is_mixture_of_experts(block) -> bool:
    return any(type(m).__name__.endswith("Experts") or _EXPERTS.fullmatch(name.rsplit(".", 1)[-1])
               for name, m in block.named_modules() if name)


def lora_roles(model) -> Architecture:
    """The LoRA target sets of `model`: its model type's row of TARGET_OVERRIDES, else found by role in its first
    block. ArchitectureError where its attention has no query and value projection to tell apart.

    - attention: every linear projection under the block's attention module (separate, fused or low-rank q/k/v
      and the output projection);
    - query+value: those of them that compute the query and the value, or the fused projection holding both;
    - mlp: the linear projections of a dense MLP (under `mlp`/`feed_forward`/`ffn`, or directly in the block, as
      OPT's fc1 and fc2). A mixture-of-experts MLP adds none (`note` says why).
    """
    model_type = getattr(model.config, "model_type", None)
    if model_type in TARGET_OVERRIDES:
        return TARGET_OVERRIDES[model_type]
    block = decoder_blocks(model)[0]
    linears = [name for name, module in block.named_modules() if _is_linear(module)]
    attention = [n for n in linears if _ATTENTION.fullmatch(n.split(".")[0])]
    by_role = {role: [n for n in attention if _role(n) == role] for role in _ROLES}
    if by_role["query"] and by_role["value"]:
        query_value = by_role["query"] + by_role["value"]
    elif by_role["fused"]:
        query_value = by_role["fused"]
    else:
        raise ArchitectureError(
            f"cannot find the query and value projections of {type(block).__name__} (its linear layers are "
            f"{', '.join(linears) or 'none'}): pass lora_targets as a list of module names"
        )
    mixture = _is_mixture_of_experts(block)
    mlp = [] if mixture else [n for n in linears if n not in attention and (
        "." not in n or _MLP.fullmatch(n.split(".")[0]))]
    note = (f"{type(block).__name__} has a mixture-of-experts MLP: 'attention+mlp' adapts its attention only. "
            "Its routed experts are fused expert tensors run on tokens regrouped across records, its router "
            "chooses which run, and its shared experts are frozen too (some models run them on the batch "
            "flattened, where a gradient is no longer one record's)") if mixture else ""
    return Architecture(f"{model_type} (found by role)", tuple(query_value), tuple(attention), tuple(mlp), note)


def lora_target_modules(model, targets: str | list[str] = "attention") -> list[str]:
    """Module names LoRA attaches to: the named target set of `lora_roles`, or a list, checked to exist."""
    if isinstance(targets, str):
        if targets not in LORA_TARGET_SETS:
            raise TrainingConfigError(f"lora_targets must be one of {LORA_TARGET_SETS} or a list (got {targets!r})")
        names = lora_roles(model).lora_targets(targets)
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
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if _is_linear(m)})


# --- the config of a model spec ------------------------------------------------------------------


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

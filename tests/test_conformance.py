"""The conformance check: a decoder is supported when the study's operations work on a tiny model of its config.

Each step is shown to fire on a model that breaks it (a block reading its index, a weight shared across depth,
an MLP that sees the batch flattened, blocks built from the model's depth, a multimodal config), and to pass
the decoders that work. The most used decoder types of transformers each pass the check and then go through
similarity, pruning, reload and DP-LoRA training end to end, or are refused with the step and the reason;
the slow tier does the same for every causal-LM type transformers registers.
"""

import tempfile
import time
from collections import Counter

import pytest
import torch
from conftest import CLINICAL_NOTES, save_config_only
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from ppt_core import pruning
from ppt_core.dp import train_config, training
from ppt_core.dp.privacy import DPConfig
from ppt_core.models import architectures
from ppt_core.pruning import similarity
from ppt_core.run import artifacts, errors
from ppt_core.stages import conformance

TEXTS = CLINICAL_NOTES[:6]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PPT_CACHE_DIR", str(tmp_path / "cache"))  # verdicts are cached: each test starts empty


def tiny_llama(**settings) -> LlamaConfig:
    return LlamaConfig(**{**dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
                          **settings})


# --- planted decoders that break one step each ---------------------------------------------------


class IndexReadingConfig(LlamaConfig):
    model_type = "planted_index_reading"


class IndexReadingLayer(LlamaDecoderLayer):
    """A block whose update is scaled by (its index + 1), read from the index the KV cache uses."""

    def forward(self, hidden_states, *args, **kwargs):
        out = super().forward(hidden_states, *args, **kwargs)
        return hidden_states + (out - hidden_states) * (1 + self.self_attn.layer_idx)


class IndexReadingModel(LlamaForCausalLM):
    config_class = IndexReadingConfig

    def __init__(self, config):
        super().__init__(config)
        self.model.layers = torch.nn.ModuleList(IndexReadingLayer(config, i) for i in range(config.num_hidden_layers))
        self.post_init()


class SharedMLPConfig(LlamaConfig):
    model_type = "planted_shared_mlp"


class SharedMLPModel(LlamaForCausalLM):
    """Every block runs block 0's MLP: one weight shared across depth."""

    config_class = SharedMLPConfig

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers[1:]:
            layer.mlp = self.model.layers[0].mlp


class FixedWidthConfig(LlamaConfig):
    model_type = "planted_fixed_width"


class FixedWidthModel(LlamaForCausalLM):
    """A decoder that only builds at its own hidden size (as models whose sizes depend on each other do)."""

    config_class = FixedWidthConfig

    def __init__(self, config):
        if config.hidden_size != 96:
            raise ValueError(f"hidden_size must be 96 (got {config.hidden_size})")
        super().__init__(config)


for config_class, model_class in ((IndexReadingConfig, IndexReadingModel), (SharedMLPConfig, SharedMLPModel),
                                  (FixedWidthConfig, FixedWidthModel)):
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)


def planted(config_class) -> LlamaConfig:
    return config_class(**tiny_llama().to_diff_dict())


@pytest.mark.parametrize("config, targets, step, fragment", [
    (planted(IndexReadingConfig), "attention+mlp", "removal", "differ from the full model's with block 1 skipped"),
    (planted(SharedMLPConfig), "attention+mlp", "blocks", "block 1's mlp.gate_proj.weight is block 0's"),
    # OPT's decoder layer flattens the batch before fc1/fc2: their adapters would get per-token gradients.
    (OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=4, num_attention_heads=4), "attention+mlp",
     "per-record", "the adapter of model.decoder.layers.0.fc1"),
    # DiffLlama's blocks set lambda_init from their index when built: a rebuilt smaller model differs.
    (CONFIG_MAPPING["diffllama"](num_hidden_layers=6), "attention", "reload", "derive something from their index"),
    (CONFIG_MAPPING["trocr"](), "attention", "blocks", "cross-attention (encoder_attn)"),
])
def test_each_step_fires_on_a_decoder_that_breaks_it(config, targets, step, fragment):
    verdict = conformance.run(config, targets)
    assert not verdict.passed and verdict.step == step and fragment in verdict.reason, verdict
    with pytest.raises(errors.ArchitectureError, match=f"failed the conformance check at step '{step}'"):
        conformance.check(config, targets)


def test_a_decoder_the_tiny_widths_break_is_checked_at_its_own_widths():
    verdict = conformance.run(FixedWidthConfig(**tiny_llama(hidden_size=96).to_diff_dict()))
    assert verdict.passed and verdict.tiny == "4 blocks, hidden 96: its own widths, which the tiny ones do not fit"
    huge = FixedWidthConfig(**tiny_llama(hidden_size=96, intermediate_size=400_000).to_diff_dict())
    refused = conformance.run(huge)  # too large to build at its own widths: the tiny failure stands
    assert not refused.passed and refused.step == "build" and "hidden_size must be 96" in refused.reason


def test_opt_passes_with_attention_adapters_only():
    verdict = conformance.run(OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=4, num_attention_heads=4),
                              "attention")
    assert verdict.passed and verdict.lora_targets == ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj",
                                                       "self_attn.out_proj"]


def test_a_mixture_of_experts_adapts_attention_and_says_so():
    verdict = conformance.run(CONFIG_MAPPING["mixtral"](), "attention+mlp")
    assert verdict.passed and verdict.frozen_cache
    assert verdict.lora_targets == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    assert "mixture-of-experts" in verdict.lora_note and "mixture-of-experts" in verdict.summary("mixtral")


def test_the_tiny_instance_keeps_the_type_and_covers_every_per_layer_setting():
    gemma3 = CONFIG_MAPPING["gemma3_text"](num_hidden_layers=26, sliding_window_pattern=6)
    tiny = conformance.tiny_config(gemma3)
    assert tiny.model_type == "gemma3_text" and tiny.hidden_size == 64 and tiny.vocab_size == 256
    assert tiny.layer_types == ["sliding_attention"] * 4 + ["full_attention"]  # blocks 0-3 and 5
    assert gemma3.num_hidden_layers == 26 and gemma3.hidden_size != 64  # the user's config is untouched
    qwen2 = CONFIG_MAPPING["qwen2"](num_hidden_layers=24, use_sliding_window=True, max_window_layers=2)
    assert conformance.tiny_config(qwen2).max_window_layers == 2  # the boundary stays on the same blocks


def test_the_verdict_is_kept_per_config_and_targets(monkeypatch):
    config = tiny_llama()
    first = conformance.check(config, "attention")
    assert first.passed and not first.cached
    with monkeypatch.context() as patched:
        patched.setattr(conformance, "run", lambda *a: pytest.fail("a kept verdict ran the check again"))
        assert conformance.check(config, "attention").cached
    assert not conformance.check(config, "query+value").cached  # another target set: another verdict
    assert not conformance.check(tiny_llama(hidden_size=48), "attention").cached  # another config too
    refused = planted(IndexReadingConfig)
    for _ in range(2):  # a refusal is kept too, and refuses again
        with pytest.raises(errors.ArchitectureError, match="step 'removal'"):
            conformance.check(refused, "attention")
    assert len(list((artifacts.cache_dir() / "conformance").glob("*.json"))) == 4


def test_a_lora_list_naming_missing_modules_is_a_setting_error_not_a_verdict():
    with pytest.raises(errors.TrainingConfigError, match="'c_attn' does not exist"):
        conformance.check(tiny_llama(), ["c_attn"])
    kept = artifacts.cache_dir() / "conformance"
    assert not kept.exists() or not any(kept.iterdir())


def test_profile_check_reads_the_config_only(smoke_params, tmp_path, capsys):
    conformance.check_params(smoke_params)  # the tiny Llama
    assert "passed the conformance check" in capsys.readouterr().out
    stablelm = CONFIG_MAPPING["stablelm"](num_hidden_layers=4)  # no named row: found by role
    conformance.check_params(dict(smoke_params, model=save_config_only(stablelm, tmp_path / "stablelm")))
    out = capsys.readouterr().out
    assert "stablelm (stablelm): passed" in out and "LoRA targets (stablelm (found by role)): self_attn.q_proj" in out
    with pytest.raises(errors.TrainingConfigError, match="'c_attn' does not exist"):
        conformance.check_params(dict(smoke_params, model=save_config_only(stablelm, tmp_path / "s2"),
                                      lora_targets=["c_attn"]))


# --- the decoders of transformers ----------------------------------------------------------------

# The most used decoder-only families on the Hugging Face hub, dense and mixture-of-experts, old and new.
MOST_USED = [
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
    "phi", "phi3", "phimoe", "gpt2", "gpt_neox", "gptj", "gpt_neo", "gpt_bigcode", "falcon", "bloom", "opt", "mpt",
    "codegen", "starcoder2", "stablelm", "olmo", "olmo2", "olmoe", "cohere", "cohere2", "granite", "granitemoe",
    "smollm3", "deepseek_v2", "deepseek_v3", "exaone4", "gpt_oss", "glm4", "helium", "persimmon", "xglm", "biogpt",
    "internlm3", "minicpm3", "diffllama", "jamba", "mamba", "rwkv", "recurrent_gemma", "llama4_text", "seed_oss",
]
# What each of these must come to (a regression in the check shows here as a changed outcome).
MUST_PASS = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
             "gemma3_text", "phi3", "gpt2", "gpt_neox", "falcon", "olmoe", "granitemoe", "smollm3", "starcoder2"}
MUST_REFUSE = {"opt": "per-record", "minicpm3": "reload", "diffllama": "reload", "deepseek_v3": "blocks",
               "mamba": "lora", "llama4_text": "reload"}
E2E_TARGETS = "attention+mlp"


def default_config(model_type: str):
    """transformers' default config of `model_type`, at least 6 blocks deep (Bloom's default has 2)."""
    config = CONFIG_MAPPING[model_type]()
    if isinstance(getattr(config, "num_hidden_layers", None), int) and config.num_hidden_layers < 6:
        config = CONFIG_MAPPING[model_type](num_hidden_layers=6)
    return config


def end_to_end(config, tokenizer, verdict) -> None:
    """The library's own path on a tiny model of the type: similarity, pairwise pruning, save and plain reload,
    one DP-LoRA step (frozen-block cache below the top 2 blocks) with the check's LoRA targets."""
    tiny = conformance.tiny_config(config)
    tiny.update(dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny).eval()
    S = similarity.layer_similarity(model, tokenizer, TEXTS[:3], batch_size=2, max_length=16, progress=False)
    depth = pruning.n_blocks(model)
    assert S.shape == (depth + 1, depth + 1)
    pruned = pruning.prune_layers(model, pruning.select_layers(S, 1, "pairwise"))
    with tempfile.TemporaryDirectory() as folder:
        pruned.save_pretrained(folder)
        reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert pruning.n_blocks(reloaded) == depth - 1
    config = train_config.TrainConfig(lora_rank=2, lora_alpha=4, lora_targets=E2E_TARGETS, lora_blocks=2,
                                      epochs=0.5, learning_rate=1e-2, expected_batch_size=3, physical_batch_size=2,
                                      max_length=16, bf16=False, progress=False,
                                      dp=DPConfig(target_epsilon=8, delta=1e-3, accountant="rdp"))
    _, result = training.finetune(reloaded, tokenizer, TEXTS, config)
    assert result.steps >= 1 and result.lora_targets == verdict.lora_targets


def sweep(model_types, tokenizer) -> Counter:
    outcomes, broken = {}, []
    for model_type in model_types:
        try:
            config = default_config(model_type)
        except Exception as err:  # noqa: BLE001 - a default config that cannot be built offline is not a decoder
            outcomes[model_type] = f"no default config ({type(err).__name__})"
            continue
        reason = architectures.unsupported_reason(config)
        if reason is not None:
            outcomes[model_type] = "refused by its config"
            continue
        verdict = conformance.run(config, E2E_TARGETS)
        if not verdict.passed:
            outcomes[model_type] = f"refused at {verdict.step}"
            continue
        try:
            end_to_end(config, tokenizer, verdict)
            outcomes[model_type] = "passed, then ran end to end"
        except Exception as err:  # noqa: BLE001 - the failure this test exists to find
            broken.append(f"{model_type}: {type(err).__name__}: {err}")
    counts = Counter(outcomes.values())
    print(f"\n{len(model_types)} decoder types: " + "; ".join(f"{n} {what}" for what, n in counts.most_common()))
    for model_type, outcome in sorted(outcomes.items()):
        print(f"  {model_type}: {outcome}")
    assert not broken, "passed the conformance check but failed later:\n" + "\n".join(broken)
    return outcomes


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return tiny[1]  # the SmolLM2 tokenizer, loaded once per session


def test_the_most_used_decoders_pass_and_run_or_are_refused_with_the_step(tokenizer, one_thread):
    assert len(MOST_USED) >= 30 and set(MOST_USED) <= set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    started = time.perf_counter()
    outcomes = sweep(MOST_USED, tokenizer)
    assert {t for t in MUST_PASS if outcomes[t] != "passed, then ran end to end"} == set()
    assert {t: outcomes[t] for t in MUST_REFUSE if outcomes[t] != f"refused at {MUST_REFUSE[t]}"} == {}
    print(f"{time.perf_counter() - started:.0f} s")


@pytest.mark.slow
def test_every_registered_causal_lm_type(tokenizer, one_thread):
    outcomes = sweep(sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), tokenizer)
    assert sum(o == "passed, then ran end to end" for o in outcomes.values()) >= 60

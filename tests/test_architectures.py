"""What a decoder is to the study, read from the model: its blocks, its per-layer settings, its LoRA targets.

On a tiny random model of each type of TARGET_OVERRIDES: the blocks are found where the model keeps them;
pruning keeps the right blocks and moves every per-layer setting (layer_idx, layer_types, Qwen's
max_window_layers) with them; the frozen-block cache replays exactly. The override rows name the modules the
role search finds, and the role search finds the right projections in decoders without a row (fused, nested,
low-rank, top-level MLPs, mixtures of experts). What the config alone refuses stops before any work.
(The conformance check, which decides every other type, is tests/test_conformance.py.)
"""

import json

import pytest
import torch
from conftest import CLINICAL_NOTES as TEXTS
from conftest import REPO, run_all, run_all_in_process, save_config_only
from transformers import (
    CONFIG_MAPPING,
    AutoModelForCausalLM,
    BertConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    OPTConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
    T5Config,
)

from ppt_core import models, pruning
from ppt_core.data import batching
from ppt_core.dp import frozen_prefix, head_loss, train_config, training
from ppt_core.models import architectures
from ppt_core.pruning import similarity
from ppt_core.run import profiles
from ppt_core.stages import conformance

REMOVE = [1, 4]
KEEP = [0, 2, 3, 5]


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer(models.EMBEDDED_MODEL)


def tiny_configs(vocab_size: int) -> dict:
    """One tiny config per supported model type: 6 blocks, hidden 32, sliding windows shorter than a test prompt."""
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, vocab_size=vocab_size)
    common = dict(ids, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
    return {
        "llama": LlamaConfig(**common),
        "mistral": MistralConfig(**common, sliding_window=4),
        # Blocks 0-2 full attention, 3-5 sliding: removing 1 and 4 moves the boundary.
        "qwen2": Qwen2Config(**common, use_sliding_window=True, sliding_window=4, max_window_layers=3),
        "qwen3": Qwen3Config(**common, head_dim=8, use_sliding_window=True, sliding_window=4, max_window_layers=3),
        "gemma": GemmaConfig(**common, head_dim=8),
        "gemma2": Gemma2Config(**common, head_dim=8, sliding_window=4, query_pre_attn_scalar=8),
        # Pattern 3: sliding, sliding, full, sliding, sliding, full.
        "gemma3_text": Gemma3TextConfig(**common, head_dim=8, sliding_window=4, sliding_window_pattern=3,
                                        query_pre_attn_scalar=8),
        "olmo2": Olmo2Config(**common),
        "phi3": Phi3Config(**common),
        "gpt2": GPT2Config(**ids, n_embd=32, n_layer=6, n_head=4, n_positions=128),
        "gpt_neox": GPTNeoXConfig(**ids, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                                  num_attention_heads=4, max_position_embeddings=128),
    }


BLOCKS_PATH = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers"}


def test_every_override_has_a_tiny_model_here():
    assert set(tiny_configs(97)) == set(architectures.TARGET_OVERRIDES)


@pytest.fixture(scope="module", params=list(architectures.TARGET_OVERRIDES))
def arch(request, tokenizer):
    """(model_type, full model, model with blocks 1 and 4 removed) of one supported architecture."""
    config = tiny_configs(len(tokenizer))[request.param]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
    return request.param, model, pruning.prune_layers(model, REMOVE)


def prompt():
    return torch.tensor([[5, 17, 33, 8, 61, 12, 40, 3, 77, 21]])  # longer than every sliding window


def layer_types(config):
    return getattr(config, "layer_types", None)


def test_blocks_are_found_in_the_model(arch):
    model_type, model, _ = arch
    assert architectures.blocks_path(model) == BLOCKS_PATH.get(model_type, "model.layers")
    assert len(similarity.decoder_blocks(model)) == 6


def test_pruning_keeps_the_blocks_and_their_per_layer_settings(arch):
    model_type, model, pruned = arch
    assert pruning.n_blocks(pruned) == 4 and pruned.config.num_hidden_layers == 4
    assert pruning.n_blocks(model) == 6 and model.config.num_hidden_layers == 6  # the input is untouched
    blocks, original = similarity.decoder_blocks(pruned), similarity.decoder_blocks(model)
    for new, old in zip(blocks, [original[i] for i in KEEP]):
        assert all(torch.equal(a, b) for a, b in zip(new.parameters(), old.parameters()))
    for position, block in enumerate(blocks):  # the KV cache is indexed by layer_idx
        indices = {m.layer_idx for m in block.modules() if isinstance(getattr(m, "layer_idx", None), int)}
        assert indices == {position}
    if layer_types(model.config) is not None:
        assert layer_types(pruned.config) == [model.config.layer_types[i] for i in KEEP]
        # Each kept attention module still computes its own kind of attention, now at its new position.
        for position, block in enumerate(blocks):
            kinds = {m.layer_type for m in block.modules() if isinstance(getattr(m, "layer_type", None), str)}
            assert kinds <= {pruned.config.layer_types[position]}
    if model_type in ("qwen2", "qwen3"):
        assert pruned.config.max_window_layers == 2  # blocks 0 and 2 of the first three remain
    if model_type == "gpt2":
        assert pruned.config.n_layer == 4


def test_sliding_and_full_layers_follow_the_kept_blocks():
    # The architectures whose per-layer attention kinds pruning must move, stated outright.
    configs = tiny_configs(97)
    for model_type, full_types in (("gemma2", ["sliding_attention", "full_attention"] * 3),
                                   ("gemma3_text", ["sliding_attention", "sliding_attention", "full_attention"] * 2),
                                   ("qwen3", ["full_attention"] * 3 + ["sliding_attention"] * 3)):
        model = AutoModelForCausalLM.from_config(configs[model_type])
        assert model.config.layer_types == full_types
        assert pruning.prune_layers(model, REMOVE).config.layer_types == [full_types[i] for i in KEEP]


def resolved(model, names) -> set[str]:
    """The modules of `model` that PEFT attaches LoRA to for target names `names` (a name matches as a suffix)."""
    return {m for m, _ in model.named_modules() if any(m == n or m.endswith("." + n) for n in names)}


def test_each_override_names_what_the_roles_find(arch):
    """The named rows are overrides, not the source of support: each names exactly the projections the role
    search finds in the same model (so a row could be deleted without changing what LoRA adapts)."""
    model_type, model, _ = arch
    override = architectures.TARGET_OVERRIDES.pop(model_type)
    try:
        found = architectures.lora_roles(model)
    finally:
        architectures.TARGET_OVERRIDES[model_type] = override
    assert found.family.endswith("(found by role)") and not found.note
    for targets in architectures.LORA_TARGET_SETS:
        expected = resolved(model, override.lora_targets(targets))
        assert expected and resolved(model, found.lora_targets(targets)) == expected, targets


def test_the_frozen_block_cache_replays_exactly_or_is_not_used(arch, tokenizer, one_thread):
    """LoRA on the top 2 of the pruned model's 4 blocks: where nothing drops out below them, the cache of the lower
    blocks gives the computed forward's logits; where something does (GPT-2's default pdrop), there is no cache."""
    _, _, pruned = arch
    config = train_config.TrainConfig(lora_rank=2, lora_blocks=2, lora_targets="query+value", max_length=16,
                                      bf16=False, progress=False)
    peft_model = training.lora_model(pruned, config, torch.device("cpu"))
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    prefix = training._frozen_prefix(peft_model, dataset, config)
    if frozen_prefix.frozen_dropout(peft_model.get_base_model(), 2):
        assert prefix is None
    else:
        assert prefix is not None and prefix.replay_error(dataset, [0, 1, 2]) < 1e-5


def test_the_chunked_head_loss_is_the_logits_loss_or_is_not_used(arch, tokenizer, one_thread):
    """Every supported decoder: the training loss read through its output head in chunks gives its logits'
    per-record losses, or (a forward that soft-caps its logits: Gemma 2, whose cap the tiny model's small logits
    would not show) the logits path stays."""
    model_type, _, pruned = arch
    config = train_config.TrainConfig(lora_rank=2, lora_targets="query+value", max_length=16, bf16=False,
                                      progress=False)
    peft_model = training.lora_model(pruned, config, torch.device("cpu"))
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    head = head_loss.install(peft_model, bf16=False, logits_losses=training.record_losses)
    if getattr(pruned.config, "final_logit_softcapping", None):
        assert head is None
        return
    assert head is not None
    input_ids, attention_mask, labels = batching.collate(dataset, range(3))
    peft_model.eval()  # GPT-2 drops out
    with torch.no_grad():
        expected = training.record_losses(peft_model(input_ids=input_ids, attention_mask=attention_mask).logits,
                                          labels)
        with head.hidden_out():
            hidden = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.allclose(head.record_losses(hidden, labels), expected, atol=1e-5), model_type
    head_loss.uninstall(peft_model, head)
    assert peft_model.get_base_model().get_output_embeddings() is head.head


# --- LoRA targets found by role, in decoders without a row ------------------------------------------


def skeleton(model_type: str):
    """A weightless tiny model of `model_type`'s default config (the structure is what the role search reads)."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(conformance.tiny_config(CONFIG_MAPPING[model_type]()))


@pytest.mark.parametrize("model_type, query_value, mlp", [
    ("opt", ["self_attn.q_proj", "self_attn.v_proj"], ["fc1", "fc2"]),  # the MLP sits in the block itself
    ("falcon", ["self_attention.query_key_value"], ["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]),  # fused
    ("mpt", ["attn.Wqkv"], ["ffn.up_proj", "ffn.down_proj"]),
    ("gpt_neo", ["attn.attention.q_proj", "attn.attention.v_proj"], ["mlp.c_fc", "mlp.c_proj"]),  # nested
    ("moshi", ["self_attn.q_proj.linear", "self_attn.v_proj.linear"], ["mlp.fc1", "mlp.fc2"]),  # wrapped
    ("deepseek_v2", ["self_attn.q_b_proj", "self_attn.kv_b_proj"], None),  # MLA: value in kv_b_proj; an MoE
    ("glm4_moe_lite", ["self_attn.q_b_proj", "self_attn.kv_b_proj"], ["mlp.gate_proj", "mlp.up_proj",
                                                                     "mlp.down_proj"]),  # low-rank query
    ("mixtral", ["self_attn.q_proj", "self_attn.v_proj"], None),
    ("qwen2_moe", ["self_attn.q_proj", "self_attn.v_proj"], None),  # shared expert frozen too
])
def test_lora_targets_are_found_by_role(model_type, query_value, mlp):
    found = architectures.lora_roles(skeleton(model_type))
    assert found.family == f"{model_type} (found by role)"
    assert list(found.query_value) == query_value
    assert set(query_value) < set(found.attention) and all(name.split(".")[0] in (
        "self_attn", "self_attention", "attn") for name in found.attention)
    if mlp is None:  # a mixture of experts: attention+mlp is attention, and the note says why
        assert found.mlp == () and "mixture-of-experts" in found.note
        assert found.lora_targets("attention+mlp") == found.lora_targets("attention")
    else:
        assert list(found.mlp) == mlp and not found.note


def test_a_block_without_attention_projections_is_refused_naming_its_layers():
    with pytest.raises(architectures.ArchitectureError, match="query and value projections of MambaBlock.*"
                                                              "mixer.in_proj.*pass lora_targets as a list"):
        architectures.lora_roles(skeleton("mamba"))


# --- refused before any work ---------------------------------------------------------------------


@pytest.mark.parametrize("config, reason", [
    (BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
     "is an encoder"),
    (T5Config(vocab_size=97, d_model=32, num_layers=2, num_heads=4), "encoder-decoder"),
    (GPT2Config(n_embd=32, n_layer=4, n_head=4, scale_attn_by_inverse_layer_idx=True),
     "scale_attn_by_inverse_layer_idx=True: it divides each block's attention scores by (layer index + 1)"),
    (GPT2Config(n_embd=32, n_layer=4, n_head=4, add_cross_attention=True), "cross-attention"),
    (CONFIG_MAPPING["gemma3"](), "has no num_hidden_layers"),  # multimodal: its text decoder is gemma3_text
])
def test_unsupported_configs_are_refused_with_the_reason(config, reason):
    assert reason in architectures.unsupported_reason(config)
    with pytest.raises(architectures.ArchitectureError, match=f"model_type '{config.model_type}'"):
        architectures.check_config(config)


def test_a_decoder_without_a_row_is_not_refused_by_its_config():
    assert architectures.unsupported_reason(OPTConfig(hidden_size=32, num_hidden_layers=4)) is None


def test_pruning_and_similarity_refuse_what_the_table_refuses(tokenizer):
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=97, n_embd=32, n_layer=4, n_head=4,
                                                       scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(pruning.PruningError, match="scale_attn_by_inverse_layer_idx"):
        pruning.prune_layers(gpt2, [1])
    with pytest.raises(architectures.ArchitectureError, match="scale_attn_by_inverse_layer_idx"):
        similarity.layer_similarity(gpt2, tokenizer, TEXTS[:1], progress=False)


@pytest.mark.parametrize("config, fragment", [
    (BertConfig(num_hidden_layers=2), "is an encoder"),
    (GPT2Config(n_layer=6, scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=True"),
    # The smoke profile adapts attention+mlp: OPT's fc1 and fc2 see the batch flattened (tests/test_conformance.py).
    (OPTConfig(hidden_size=32, num_hidden_layers=4, ffn_dim=64, num_attention_heads=4),
     "failed the conformance check at step 'per-record'"),
])
def test_run_all_stops_before_notebook_00_with_one_line(run_name, tmp_path, config, fragment):
    folder = save_config_only(config, tmp_path / "model")
    result = run_all_in_process("--profile", "smoke", "--model", folder, "--run-name", run_name)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert folder in lines[0]
    assert not (REPO / "runs" / run_name).exists()


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["qwen3", "gpt_neox", "mixtral"])
def test_smoke_pipeline_runs_on_a_local_checkpoint(run_name, tmp_path, tokenizer, model_type):
    """A new user's tiny local Qwen3, Pythia-style or Mixtral checkpoint goes through every notebook (Mixtral has
    no named row: its mixture-of-experts blocks prune whole and LoRA adapts the attention found by role)."""
    if model_type == "mixtral":
        config = CONFIG_MAPPING["mixtral"](vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                                           num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128)
    else:
        config = tiny_configs(len(tokenizer))[model_type]
        config.hidden_size, config.intermediate_size = 64, 128
    if model_type == "qwen3":
        config.head_dim = 16
    config.update(dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    folder = tmp_path / model_type
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    result = run_all("--profile", "smoke", "--model", str(folder), "--run-name", run_name, "--force")
    assert result.returncode == 0, result.stderr[-3000:]
    root = REPO / "runs" / run_name
    notebooks = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(p.name for p in (root / "notebooks").glob("*.ipynb")) == notebooks
    pruned = json.loads((root / "models" / "pruned-noft" / "config.json").read_text())
    assert pruned["model_type"] == model_type
    assert pruned["num_hidden_layers"] == 6 - profiles.get_profile("smoke")["n_remove"]
    assert {"data", "training"} <= set(json.loads((root / "results.json").read_text()))

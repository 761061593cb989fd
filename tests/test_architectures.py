"""Every supported decoder, on a tiny random model: similarity, block removal, reload, KV cache, DP-LoRA.

Each row of ppt_core.architectures.SUPPORTED is tested here the same way: S has shape (L+1, L+1);
pruning keeps the right blocks and moves every per-layer setting (layer_idx, layer_types, Qwen's
max_window_layers) with them; the pruned model saves, reloads with plain from_pretrained with
equal logits, and decodes greedily with its KV cache exactly as without; LoRA trains one DP-SGD
step through the public finetune(). A model that is not a supported decoder stops before any work.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_all, run_all_in_process
from transformers import (
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

from ppt_core import (
    architectures,
    batching,
    checks,
    errors,
    frozen_prefix,
    models,
    privacy,
    profiles,
    pruning,
    similarity,
    train_config,
    training,
)

TEXTS = [
    "Patient admitted with community-acquired pneumonia and discharged on amoxicillin.",
    "Follow-up in two weeks with the cardiology clinic; continue apixaban 5 mg twice daily.",
    "The patient tolerated the procedure well.",
    "Atrial fibrillation with rapid ventricular response, rate controlled with metoprolol.",
    "Discharge note for a fall at home; no fracture on imaging.",
    "Sepsis of urinary origin, treated with ceftriaxone, afebrile at discharge.",
    "Asthma exacerbation, nebulised salbutamol, oral prednisolone for five days.",
    "Chest pain ruled out for acute coronary syndrome; outpatient stress test booked.",
]
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


def test_every_supported_type_has_a_tiny_model_here():
    assert set(tiny_configs(97)) == set(architectures.SUPPORTED)


@pytest.fixture(scope="module", params=list(architectures.SUPPORTED))
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
    assert architectures.architecture(model).family


def test_similarity_has_one_row_per_block_boundary(arch, tokenizer, one_thread):
    _, model, pruned = arch
    for lm, depth in ((model, 6), (pruned, 4)):
        S = similarity.layer_similarity(lm, tokenizer, TEXTS[:3], batch_size=2, max_length=24, progress=False)
        assert S.shape == (depth + 1, depth + 1)
        np.testing.assert_allclose(np.diag(S), 1.0)
        assert np.all(np.abs(S) <= 1 + 1e-6) and not np.allclose(S, 1.0)


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


def test_cached_greedy_decoding_equals_uncached(arch):
    _, _, pruned = arch
    ids = prompt()
    with torch.no_grad():
        cached = pruned.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, min_new_tokens=8,
                                 do_sample=False, use_cache=True, pad_token_id=0)
        assert len(pruned(input_ids=ids, use_cache=True).past_key_values.layers) == 4  # one entry per block
        sequence = ids
        for _ in range(8):  # plain greedy decoding, recomputing the whole prefix each step
            logits = pruned(input_ids=sequence, use_cache=False).logits[:, -1]
            logits[:, pruned.generation_config.eos_token_id] = -float("inf")  # as min_new_tokens does
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, sequence)


def test_save_and_plain_reload_keep_the_logits_and_the_config(arch, tmp_path):
    _, _, pruned = arch
    pruned.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(pruned) and loaded.config.num_hidden_layers == 4
    assert layer_types(loaded.config) == layer_types(pruned.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=prompt()).logits, pruned(input_ids=prompt()).logits,
                                   rtol=0, atol=1e-5)


def test_every_lora_target_set_names_existing_modules(arch):
    _, model, _ = arch
    names = {name for name, _ in model.named_modules()}
    for targets in architectures.LORA_TARGET_SETS:
        chosen = architectures.lora_target_modules(model, targets)
        assert chosen and all(any(n == t or n.endswith("." + t) for n in names) for t in chosen)


def test_one_dp_lora_step_trains_the_pruned_model(arch, tokenizer, one_thread):
    _, _, pruned = arch
    # One step at q = 1/4 (the RDP accountant is the quicker one to calibrate at this q).
    config = train_config.TrainConfig(lora_rank=2, lora_alpha=4, lora_targets="query+value", epochs=0.25,
                                  learning_rate=1e-2, expected_batch_size=2, physical_batch_size=4, max_length=16,
                                  progress=False, dp=privacy.DPConfig(target_epsilon=8, delta=1e-3, accountant="rdp"))
    peft_model, result = training.finetune(pruned, tokenizer, TEXTS, config)
    assert result.steps == 1 and result.noise_multiplier > 0 and 0 < result.epsilon <= 8 + 1e-6
    assert result.batch_sizes[0] > 0  # records went through the forward and backward pass, not noise alone
    assert result.lora_targets == architectures.SUPPORTED[pruned.config.model_type].lora_targets("query+value")
    assert result.trainable_parameters > 0


def test_the_frozen_block_cache_replays_exactly_or_is_not_used(arch, tokenizer, one_thread):
    """LoRA on the top 2 of the pruned model's 4 blocks: where nothing drops out below them, the cache of the lower
    blocks gives the computed forward's logits; where something does (GPT-2's default pdrop), there is no cache."""
    _, _, pruned = arch
    config = train_config.TrainConfig(lora_rank=2, lora_blocks=2, lora_targets="query+value", max_length=16,
                                      bf16=False, progress=False)
    peft_model = training._lora_model(pruned, config, torch.device("cpu"))
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    prefix = training._frozen_prefix(peft_model, dataset, config)
    if frozen_prefix.frozen_dropout(peft_model.get_base_model(), 2):
        assert prefix is None
    else:
        assert prefix is not None and prefix.replay_error(dataset, [0, 1, 2]) < 1e-5


# --- refused before any work ---------------------------------------------------------------------


@pytest.mark.parametrize("config, reason", [
    (BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
     "is an encoder"),
    (T5Config(vocab_size=97, d_model=32, num_layers=2, num_heads=4), "encoder-decoder"),
    (OPTConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4), "not one of the tested"),
    (GPT2Config(n_embd=32, n_layer=4, n_head=4, scale_attn_by_inverse_layer_idx=True),
     "scale_attn_by_inverse_layer_idx=True: it divides each block's attention scores by (layer index + 1)"),
    (GPT2Config(n_embd=32, n_layer=4, n_head=4, add_cross_attention=True), "cross-attention"),
])
def test_unsupported_configs_are_refused_with_the_reason(config, reason):
    assert reason in architectures.unsupported_reason(config)
    with pytest.raises(architectures.ArchitectureError, match=f"model_type '{config.model_type}'"):
        architectures.check_config(config)


def test_pruning_and_similarity_refuse_what_the_table_refuses(tokenizer):
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=97, n_embd=32, n_layer=4, n_head=4,
                                                       scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(pruning.PruningError, match="scale_attn_by_inverse_layer_idx"):
        pruning.prune_layers(gpt2, [1])
    with pytest.raises(architectures.ArchitectureError, match="scale_attn_by_inverse_layer_idx"):
        similarity.layer_similarity(gpt2, tokenizer, TEXTS[:1], progress=False)


def save_config_only(config, folder: Path) -> str:
    config.save_pretrained(folder)  # a checkpoint folder without weights: the early check reads only this
    return str(folder)


def test_profile_check_reads_the_config_only(smoke_params, tmp_path):
    architectures.check_params(smoke_params)  # the tiny Llama
    qwen3 = tiny_configs(97)["qwen3"]
    architectures.check_params(dict(smoke_params, model=save_config_only(qwen3, tmp_path / "qwen3")))
    bert = save_config_only(BertConfig(num_hidden_layers=2), tmp_path / "bert")
    with pytest.raises(architectures.ArchitectureError, match="is an encoder"):
        checks.check_params(dict(smoke_params, model=bert))
    with pytest.raises(errors.TrainingConfigError, match="'c_attn' does not exist"):
        architectures.check_params(dict(smoke_params, model=save_config_only(qwen3, tmp_path / "q"),
                                        lora_targets=["c_attn"]))


@pytest.mark.parametrize("config, fragment", [
    (BertConfig(num_hidden_layers=2), "is an encoder"),
    (GPT2Config(n_layer=6, scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=True"),
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
@pytest.mark.parametrize("model_type", ["qwen3", "gpt_neox"])
def test_smoke_pipeline_runs_on_a_local_checkpoint(run_name, tmp_path, tokenizer, model_type):
    """A new user's tiny local Qwen3 or Pythia-style checkpoint goes through every notebook."""
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

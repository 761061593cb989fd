"""DP-LoRA fine-tuning: the mechanics the privacy guarantee rests on, on the tiny random Llama.

Clipping bounds each record's pull on the weights, the noise has std sigma*C, the loader is Poisson,
the reported epsilon is the accountant's, training really moves the LoRA weights (opacus#820), the
base weights never move, a seed reproduces the adapter, and bad settings stop before training.
"""

import json

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from ppt_core import arms, artifacts, evaluation, training

MAX_LENGTH = 24
TEXTS = [
    f"Patient {name} (MRN {1000 + 7 * i}) was admitted for {reason} and discharged on day {i % 5 + 1}."
    for i, (name, reason) in enumerate(
        (n, r)
        for n in ("Ada Stone", "Ben Ortiz", "Cai Lin", "Dee Park", "Eli Ruiz", "Fay Moss")
        for r in ("pneumonia", "sepsis", "a fall", "chest pain", "asthma")
    )
]  # 30 records


def small_config(**overrides) -> training.TrainConfig:
    """A config that trains the tiny model in about a second."""
    values = dict(lora_rank=4, lora_alpha=8, lora_targets=["q_proj", "v_proj"], epochs=1.0, learning_rate=1e-2,
                  expected_batch_size=6, physical_batch_size=4, max_length=MAX_LENGTH, seed=0, progress=False)
    values.update(overrides)
    return training.TrainConfig(**values)


def dp_config(**overrides) -> training.DPConfig:
    values = dict(target_epsilon=8.0, delta=1e-3, max_grad_norm=1.0, accountant="rdp", grad_sample_mode="hooks")
    values.update(overrides)
    return training.DPConfig(**values)


def prepared(tiny, config, texts=TEXTS) -> training.Training:
    model, tokenizer = tiny
    torch.manual_seed(config.seed)
    peft_model = training._lora_model(model, config, torch.device("cpu"))
    return training.prepare(peft_model, training._record_dataset(tokenizer, texts, config.max_length), config)


def lora_vector(trained: training.Training) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in trained.lora_params])


def mean_record_loss(model, tokenizer, texts) -> float:
    return float(np.mean([-lp.mean() for lp in evaluation.token_logprobs(model, tokenizer, texts,
                                                                           max_length=MAX_LENGTH, progress=False)]))


# --- the guarantee's mechanics -------------------------------------------------------------------


@pytest.mark.parametrize("bf16", [False, True])
def test_clipping_bounds_each_records_pull(tiny, bf16):
    """With sigma = 0 and plain SGD, one step moves the LoRA weights by lr * sum(clipped g_i) / B,
    so at most lr * C * |batch| / B, however large the records' gradients are."""
    lr, clip = 0.5, 1e-3
    config = small_config(optimizer="sgd", learning_rate=lr, lr_schedule="constant", bf16=bf16,
                          dp=dp_config(max_grad_norm=clip))
    trained = prepared(tiny, config)
    trained.optimizer.noise_multiplier = 0.0  # isolate clipping
    before = lora_vector(trained)
    _, batch_sizes, _, _ = training.run_steps(trained, steps=1)
    moved = float((lora_vector(trained) - before).norm())
    bound = lr * clip * batch_sizes[0] / config.expected_batch_size
    assert batch_sizes[0] > 0
    assert moved <= bound * (1 + 1e-4)

    # The same step without clipping moves the weights far more: the bound above did the work.
    plain = prepared(tiny, small_config(optimizer="sgd", learning_rate=lr, lr_schedule="constant"))
    before = lora_vector(plain)
    _, plain_sizes, _, _ = training.run_steps(plain, steps=1)
    unclipped = float((lora_vector(plain) - before).norm())
    assert unclipped > 20 * lr * clip * plain_sizes[0] / config.expected_batch_size


def test_noise_std_is_sigma_times_clip_bound(tiny):
    """An empty Poisson batch makes a noise-only step: the gradient is N(0, (sigma*C)^2) / B per coordinate."""
    sigma, clip = 0.7, 0.5
    config = small_config(optimizer="sgd", learning_rate=1.0, lr_schedule="constant",
                          dp=dp_config(max_grad_norm=clip))
    trained = prepared(tiny, config)
    trained.optimizer.noise_multiplier = sigma
    training._empty_batch_gradients(trained.lora_params, config.dp)
    trained.optimizer.step()
    noise = torch.cat([p.grad.reshape(-1) for p in trained.lora_params]) * config.expected_batch_size
    n = noise.numel()
    assert n > 5000
    # std of a sample std is about std / sqrt(2n): 6 of those is far beyond chance.
    assert abs(float(noise.std()) / (sigma * clip) - 1) < 6 / np.sqrt(2 * n)
    assert abs(float(noise.mean())) < 6 * sigma * clip / np.sqrt(n)


def test_loader_is_poisson(tiny):
    """Batch sizes vary around q*N, and over many draws every record is drawn."""
    config = small_config(dp=dp_config())
    trained = prepared(tiny, config)
    sampler = trained.loader.batch_sampler
    sizes, seen = [], set()
    for _ in range(40):
        for indices in sampler:
            sizes.append(len(indices))
            seen.update(indices)
    expected = trained.sample_rate * len(TEXTS)
    assert len(set(sizes)) > 3  # sizes vary
    assert abs(np.mean(sizes) - expected) < 4 * np.sqrt(expected / len(sizes))
    assert seen == set(range(len(TEXTS)))


@pytest.mark.parametrize("dp", [dp_config(), None], ids=["dp", "nonprivate"])
def test_logical_batches_are_poisson_then_ordered_by_length(tiny, dp):
    """Opacus's Poisson sampler draws each logical batch; only then are its records ordered by length,
    so the physical batches BatchMemoryManager cuts from it hold records of similar length."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    texts = [t if i % 3 else "Short note." for i, t in enumerate(TEXTS)]
    trained = prepared(tiny, small_config(dp=dp), texts)
    sampler = trained.loader.batch_sampler
    assert isinstance(sampler.logical_batches, UniformWithReplacementSampler)
    assert sampler.logical_batches.sample_rate == trained.sample_rate
    lengths = trained.loader.dataset.tensors[1].sum(1).tolist()
    batches = [batch for _ in range(10) for batch in sampler]
    assert all([lengths[i] for i in batch] == sorted(lengths[i] for i in batch) for batch in batches)
    assert any(lengths[batch[0]] < lengths[batch[-1]] for batch in batches if batch)


def test_empty_poisson_batches_train(tiny):
    """With q = 1/N many logical batches are empty; they still count as (noise-only) DP steps."""
    config = small_config(expected_batch_size=1, epochs=0.5, dp=dp_config(target_epsilon=50.0))
    _, result = training.finetune(*tiny, TEXTS, config)
    assert 0 in result.batch_sizes
    assert result.steps == int(config.epochs / result.sample_rate)
    assert all(loss is None for loss, size in zip(result.losses, result.batch_sizes) if size == 0)


@pytest.mark.parametrize("accountant, accountant_class", [("prv", PRVAccountant), ("rdp", RDPAccountant)])
def test_epsilon_is_the_accountants(tiny, accountant, accountant_class):
    """epsilon reported <= target, and within 1% of a fresh accountant for the same (q, sigma, steps, delta)."""
    config = small_config(epochs=0.5, dp=dp_config(accountant=accountant, target_epsilon=4.0))
    _, result = training.finetune(*tiny, TEXTS, config)
    independent = accountant_class()
    independent.history = [(result.noise_multiplier, result.sample_rate, result.steps)]
    expected = independent.get_epsilon(delta=config.dp.delta)
    assert result.epsilon <= config.dp.target_epsilon
    assert result.epsilon == pytest.approx(expected, rel=0.01)
    assert result.epsilon > 0.9 * config.dp.target_epsilon  # sigma is calibrated, not merely safe
    assert result.epsilon_curve(points=4)[-1][1] == pytest.approx(result.epsilon, rel=0.01)


@pytest.mark.parametrize("private", [False, True])
def test_training_moves_lora_and_lowers_loss(tiny, private):
    """Guards against opacus#820: LoRA weights change and the training records' loss falls."""
    model, tokenizer = tiny
    config = small_config(epochs=3.0, learning_rate=2e-2, dp=dp_config(target_epsilon=30.0) if private else None)
    before = mean_record_loss(model, tokenizer, TEXTS)
    peft_model, result = training.finetune(model, tokenizer, TEXTS, config)
    after = mean_record_loss(peft_model, tokenizer, TEXTS)
    lora_b = [p for name, p in peft_model.named_parameters() if "lora_B" in name]
    assert lora_b and all(float(p.abs().max()) > 0 for p in lora_b)  # B starts at zero
    assert after < before - 0.05, (before, after)
    assert (result.epsilon is not None) == private


def test_base_weights_frozen_bit_for_bit(tiny):
    model, tokenizer = tiny
    original = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model, _ = training.finetune(model, tokenizer, TEXTS, small_config(dp=dp_config()))
    for key, value in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(value, original[key]), key
    trained = {k.replace("base_model.model.", "", 1).replace(".base_layer", ""): v
               for k, v in peft_model.state_dict().items() if "lora_" not in k}
    assert set(trained) == set(original)
    for key, value in trained.items():
        assert torch.equal(value, original[key]), key
    assert all(("lora_" in n) == p.requires_grad for n, p in peft_model.named_parameters())


def test_same_seed_same_adapter_and_ghost_equals_hooks(tiny):
    model, tokenizer = tiny

    def adapter(**dp):
        peft_model, result = training.finetune(model, tokenizer, TEXTS, small_config(dp=dp_config(**dp)))
        return {n: p.detach() for n, p in peft_model.named_parameters() if "lora_" in n}, result

    first, result = adapter()
    second, _ = adapter()
    assert all(torch.equal(first[k], second[k]) for k in first)
    ghost, ghost_result = adapter(grad_sample_mode="ghost")
    # Ghost clipping computes the same clipped sum without materialising per-record gradients.
    assert all(torch.allclose(first[k], ghost[k], atol=1e-5) for k in first)
    assert ghost_result.batch_sizes == result.batch_sizes


def test_lora_targets_per_architecture(tiny):
    model, _ = tiny
    assert training.lora_target_modules(model, "attention") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert training.lora_target_modules(model, "attention+mlp")[-3:] == ["gate_proj", "up_proj", "down_proj"]


# --- bad settings stop before training -----------------------------------------------------------


@pytest.mark.parametrize("config, message", [
    (small_config(dp=dp_config(target_epsilon=0.0)), "target_epsilon must be > 0 (got 0.0)"),
    (small_config(dp=dp_config(target_epsilon=-1.0)), "target_epsilon must be > 0"),
    (small_config(dp=dp_config(delta=1 / 30)), "delta must be in (0, 1/N_train)"),
    (small_config(expected_batch_size=31), "expected_batch_size (31) is larger than the 30 training records"),
    (small_config(dp=dp_config(accountant="rdp", target_epsilon=0.01)), "cannot be reached"),
    (small_config(lora_targets=["q_proj", "query_key_value"]), "'query_key_value' does not exist"),
    (small_config(bf16=True, dp=dp_config(grad_sample_mode="ghost")), "bf16=True works with grad_sample_mode='hooks'"),
    (small_config(dp=dp_config(accountant="gdp")), "accountant must be one of"),
])
def test_bad_settings_stop_before_training(tiny, monkeypatch, config, message):
    def no_training(*args, **kwargs):
        raise AssertionError("training started despite a bad setting")

    monkeypatch.setattr(training, "_lora_model", no_training)
    with pytest.raises(training.TrainingConfigError) as err:
        training.finetune(*tiny, TEXTS, config)
    assert message in str(err.value)


def test_profile_checks(smoke_params):
    training.check_params(smoke_params)
    with pytest.raises(training.TrainingConfigError, match="delta must be in"):
        training.check_params(dict(smoke_params, delta=0.5))
    with pytest.raises(training.TrainingConfigError, match="target_epsilon must be > 0"):
        training.check_params(dict(smoke_params, epsilons=[8, 0]))
    config = training.config_from_params(smoke_params, 8)
    assert config.dp.target_epsilon == 8 and config.dp.delta == smoke_params["delta"]
    assert training.config_from_params(smoke_params).dp is None


# --- saving --------------------------------------------------------------------------------------


def test_save_arm_loads_with_plain_transformers_and_peft(tiny, smoke_params):
    import copy
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny
    config = small_config(dp=dp_config())
    peft_model, result = training.finetune(model, tokenizer, TEXTS, config)
    try:
        folder = training.save_arm(smoke_params, "full-dp8", peft_model, tokenizer, result, config)
        record = json.loads((folder / "training.json").read_text())
        assert record["epsilon"] == pytest.approx(result.epsilon, rel=1e-5)
        for key in ("delta", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "base_model"):
            assert record[key] is not None, key
        ids = torch.tensor([tokenizer("Patient Ada Stone was admitted")["input_ids"]])
        with torch.no_grad():
            expected = peft_model(input_ids=ids).logits
            merged = AutoModelForCausalLM.from_pretrained(folder / "merged")
            assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
            adapter = PeftModel.from_pretrained(copy.deepcopy(model), folder / "adapter")  # it edits its base
            assert torch.allclose(adapter(input_ids=ids).logits, expected, atol=1e-4)
        assert arms.checkpoint(smoke_params, "full-dp8") == str(folder / "merged")
    finally:
        shutil.rmtree(artifacts.run_paths(smoke_params).root, ignore_errors=True)

"""DP-LoRA fine-tuning: the mechanics the privacy guarantee rests on, on the tiny random Llama.

Clipping bounds each record's pull on the weights, the noise has std sigma*C, the loader is Poisson,
the reported epsilon is the accountant's, training really moves the LoRA weights (opacus#820), the
base weights never move, a seed reproduces the adapter, and bad settings stop before training.
"""

import math

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from training_helpers import MAX_LENGTH, TEXTS, dp_config, lora_vector, prepared, record_gradient, small_config

from ppt_core.data import batching, tokens
from ppt_core.dp import privacy, training
from ppt_core.machine import precision
from ppt_core.run import errors
from ppt_core.scoring import evaluation

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny model runs faster on one thread of a shared CPU

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
    batch_sizes = training.run_steps(trained, steps=1).batch_sizes
    moved = float((lora_vector(trained) - before).norm())
    bound = lr * clip * batch_sizes[0] / config.expected_batch_size
    assert batch_sizes[0] > 0
    assert moved <= bound * (1 + 1e-4)

    # The same step without clipping moves the weights far more: the bound above did the work.
    plain = prepared(tiny, small_config(optimizer="sgd", learning_rate=lr, lr_schedule="constant"))
    before = lora_vector(plain)
    plain_sizes = training.run_steps(plain, steps=1).batch_sizes
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
    """Opacus's Poisson sampler draws each logical batch at exactly q, ceil(N/B) batches per pass; only
    then are its records ordered by length, so the physical batches cut from it hold similar lengths."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    texts = [t if i % 3 else "Short note." for i, t in enumerate(TEXTS)]
    trained = prepared(tiny, small_config(dp=dp), texts)
    sampler = trained.loader.batch_sampler
    assert isinstance(sampler, UniformWithReplacementSampler)
    assert sampler.sample_rate == trained.sample_rate == 1 / math.ceil(len(texts) / 6)
    assert len(trained.loader) == math.ceil(len(texts) / 6)
    lengths = trained.loader.dataset.tensors[1].sum(1).tolist()
    batches = list(batching.logical_batches(trained.loader, 50))
    assert len(batches) == 50
    assert all([lengths[i] for i in batch] == sorted(lengths[i] for i in batch) for batch in batches)
    assert any(lengths[batch[0]] < lengths[batch[-1]] for batch in batches if batch)


def test_record_loss_is_the_mean_next_token_loss_over_its_own_real_tokens():
    """Each record's loss, from a batch with padding of several widths, equals the mean of -log softmax(logits at t)
    [token t + 1] over its own real targets, computed on the record alone; padding and the last position never
    count, and a record's loss does not depend on the others in its batch."""
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50, dtype=torch.bfloat16)
    labels = torch.randint(0, 50, (3, 7))
    labels[1, 5:] = tokens.IGNORE_INDEX
    labels[2, 2:] = tokens.IGNORE_INDEX
    expected = []
    for record in range(3):
        real = int((labels[record] != tokens.IGNORE_INDEX).sum())
        logprobs = torch.log_softmax(logits[record, : real - 1].float(), dim=-1)
        expected.append(-logprobs[torch.arange(real - 1), labels[record, 1:real]].mean())
    losses = training.record_losses(logits, labels)
    assert losses.dtype == torch.float32
    assert torch.allclose(losses, torch.stack(expected), atol=1e-6)
    assert torch.allclose(training.record_losses(logits[2:], labels[2:]), losses[2:], atol=1e-6)


def test_split_logical_batch_is_one_step_of_clipped_sum_plus_one_noise_draw(tiny):
    """A logical batch cut into physical batches gives the update of one physical batch: with sigma = 0,
    exactly lr * sum_i clip(g_i) / B from per-record backward passes; with noise, the same update as
    the uncut batch (one noise draw per logical batch, not one per physical batch)."""
    lr, clip = 0.5, 1e-2
    config = small_config(optimizer="sgd", learning_rate=lr, lr_schedule="constant", expected_batch_size=10,
                          dp=dp_config(max_grad_norm=clip))

    def one_step(physical_batch_size, sigma):
        trained = prepared(tiny, small_config(**{**config.__dict__, "physical_batch_size": physical_batch_size}))
        trained.optimizer.noise_multiplier = sigma
        before = lora_vector(trained)
        torch.manual_seed(123)  # the noise's generator
        log = training.run_steps(trained, steps=1)
        return trained, before, lora_vector(trained) - before, log

    trained, before, update, log = one_step(2, 0.0)
    members = [i for i, count in enumerate(log.sample_counts) if count]
    assert len(members) == log.batch_sizes[0] > 2  # cut into several physical batches
    model = trained.peft_model
    with torch.no_grad():  # back to the starting adapter for the per-record gradients
        for p, value in zip(trained.lora_params, torch.split(before, [p.numel() for p in trained.lora_params])):
            p.copy_(value.view_as(p))
    trained.module.cleanup()
    clipped = [g * min(1.0, clip / (float(g.norm()) + 1e-6)) for g in
               (record_gradient(model, trained.loader.dataset, i) for i in members)]
    expected = -lr * torch.stack(clipped).sum(0) / trained.plan.expected_batch_size
    assert torch.allclose(update, expected, rtol=1e-3, atol=1e-9)

    _, _, split, split_log = one_step(2, 0.7)
    _, _, whole, whole_log = one_step(64, 0.7)
    assert split_log.batch_sizes == whole_log.batch_sizes == log.batch_sizes
    assert torch.allclose(split, whole, rtol=1e-4, atol=1e-8)
    # The noise dominates this update (sigma*C*sqrt(d)/B against at most |batch|*C/B of signal).
    assert float((split - update).norm()) > 3 * float(update.norm())


def test_empty_poisson_batches_train(tiny):
    """With q = 1/N many logical batches are empty; they still count as (noise-only) DP steps."""
    config = small_config(expected_batch_size=1, epochs=0.5, dp=dp_config(target_epsilon=50.0))
    _, result = training.finetune(*tiny, TEXTS, config)
    assert 0 in result.batch_sizes
    assert result.steps == math.floor(config.epochs * len(TEXTS))
    assert all(loss is None for loss, size in zip(result.losses, result.batch_sizes) if size == 0)


@pytest.mark.parametrize("accountant, accountant_class", [("prv", PRVAccountant), ("rdp", RDPAccountant)])
def test_epsilon_is_the_accountants(tiny, accountant, accountant_class):
    """epsilon reported <= target, and within 1% of a fresh accountant for the same (q, sigma, steps, delta);
    the group epsilon at k = 1 and the composition of this one arm are that same epsilon."""
    config = small_config(epochs=0.5, dp=dp_config(accountant=accountant, target_epsilon=4.0))
    _, result = training.finetune(*tiny, TEXTS, config)
    independent = accountant_class()
    independent.history = [(result.noise_multiplier, result.sample_rate, result.steps)]
    expected = independent.get_epsilon(delta=config.dp.delta)
    assert result.epsilon <= config.dp.target_epsilon
    assert result.epsilon == pytest.approx(expected, rel=0.01)
    assert result.epsilon > 0.9 * config.dp.target_epsilon  # sigma is calibrated, not merely safe
    assert result.epsilon_curve(points=4)[-1][1] == pytest.approx(result.epsilon, rel=0.01)
    mechanism = (result.noise_multiplier, result.sample_rate, result.steps)
    assert privacy.group_epsilon(*mechanism, config.dp.delta, 1, accountant) == pytest.approx(result.epsilon, rel=1e-6)
    assert privacy.composed_epsilon([mechanism], config.dp.delta, accountant) == pytest.approx(result.epsilon, rel=1e-6)


def test_a_target_far_above_any_claim_is_calibrated_and_accounted_by_rdp(tiny):
    """A dose arm (ε = 10,000) puts σ below where prv's grid holds: asked for prv, the arm is calibrated, trained
    and accounted by rdp instead, says so, and stays within its target; at ε = 4 prv is kept."""
    config = small_config(epochs=0.5, dp=dp_config(accountant="prv", target_epsilon=1e4))
    _, result = training.finetune(*tiny, TEXTS, config)
    assert result.accountant == "rdp" and result.noise_multiplier < privacy.PRV_MIN_NOISE_MULTIPLIER
    assert 0.9e4 < result.epsilon <= 1e4
    plan = batching.schedule(len(TEXTS), 6, 0.5)
    assert privacy.for_schedule(dp_config(accountant="prv", target_epsilon=4.0), plan.sample_rate, plan.steps
                                ).accountant == "prv"


def test_epsilon_stays_within_target_where_opacus_loader_length_falls_short(tiny):
    """N = 93, B = 1: Opacus's own loader would have int(1/(1/93)) = 92 batches per pass and charge its
    accountant q = 1/92 for noise calibrated at 1/93 (epsilon above target). Here q is exactly 1/93."""
    texts = [f"{text} Visit {j}." for j in range(4) for text in TEXTS][:93]
    config = small_config(expected_batch_size=1, epochs=0.2, dp=dp_config(target_epsilon=8.0, delta=1e-3))
    _, result = training.finetune(*tiny, texts, config)
    assert result.sample_rate == 1 / 93 and result.steps == math.floor(0.2 * 93)
    assert result.epsilon <= config.dp.target_epsilon
    one_short = privacy.accountant_epsilon(result.noise_multiplier, 1 / 92, result.steps, 1e-3, "rdp")
    assert one_short > result.epsilon  # the rate Opacus's loader would have charged costs more


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

    monkeypatch.setattr(training, "lora_model", no_training)
    with pytest.raises(errors.TrainingConfigError) as err:
        training.finetune(*tiny, TEXTS, config)
    assert message in str(err.value)


def test_secure_mode_trains_or_refuses_naming_the_fix(tiny, monkeypatch):
    """secure_mode=True goes to Opacus's PrivacyEngine(secure_mode=True), which needs torchcsprng."""
    import importlib.util

    config = small_config(dp=dp_config(secure_mode=True))
    if importlib.util.find_spec("torchcsprng") is None:
        monkeypatch.setattr(training, "lora_model", lambda *a, **k: pytest.fail("training started"))
        with pytest.raises(errors.TrainingConfigError, match="secure_mode=True needs the torchcsprng package"):
            training.finetune(*tiny, TEXTS, config)
        return
    _, result = training.finetune(*tiny, TEXTS, config)
    assert result.secure_mode and result.epsilon <= config.dp.target_epsilon


def test_frozen_weights_stored_in_bf16_give_the_autocast_products(tiny):
    """Under bf16 autocast a frozen float32 weight is cast to bf16 in every pass; storing it in bf16 once gives the
    same losses and per-record gradients, bit for bit, and the float32 weights come back after training."""
    model, tokenizer = tiny
    config = small_config(bf16=True, lora_targets="attention+mlp", dp=dp_config())
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    outcomes = []
    for stored in (False, True):
        torch.manual_seed(0)
        peft_model = training.lora_model(model, config, torch.device("cpu"))
        kept = evaluation.frozen_weights_in_bf16(peft_model) if stored else []
        run = training.prepare(peft_model, dataset, config)
        run.module.train()
        loss = training.physical_step(run, batching.collate(dataset, range(4)))
        outcomes.append((loss, [p.grad_sample.clone() for p in run.lora_params]))
        if stored:
            assert kept and all(m.weight.dtype == torch.bfloat16 for m, _ in kept)
            evaluation.restore_weights(kept)
            base = dict(model.named_parameters())
            for name, p in peft_model.get_base_model().named_parameters():
                if not p.requires_grad:
                    assert p.dtype == torch.float32 and torch.equal(p, base[name.replace(".base_layer", "")])
    (loss_cast, grads_cast), (loss_stored, grads_stored) = outcomes
    assert loss_cast == loss_stored
    assert all(torch.equal(a, b) for a, b in zip(grads_cast, grads_stored))


def test_a_bf16_run_on_a_cpu_trains_with_eager_attention_which_gives_sdpas_per_record_gradients(tiny):
    """training_attention: eager for bf16 on a CPU (torch's CPU flash-attention backward is the slow part of a bf16
    step), the model's own otherwise. The two implementations compute the same function: in float32 the same
    loss and per-record clipped-before gradients (Opacus's grad_sample) up to rounding, so the guarantee's
    mechanics are untouched."""
    model, tokenizer = tiny
    cpu = torch.device("cpu")
    assert model.config._attn_implementation == "sdpa"
    assert training.lora_model(model, small_config(bf16=True), cpu).config._attn_implementation == "eager"
    assert training.lora_model(model, small_config(bf16=False), cpu).config._attn_implementation == "sdpa"
    assert training.training_attention(small_config(bf16=True), torch.device("cuda")) is None
    native = precision.choose(cpu).bf16  # "auto" settles on the device: eager only where bf16 is native
    assert training.training_attention(small_config(bf16="auto"), cpu) == ("eager" if native else None)
    config = small_config(dp=dp_config(), lora_targets="attention+mlp")
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    outcomes = []
    for attention in ("sdpa", "eager"):
        torch.manual_seed(0)
        peft_model = training.lora_model(model, config, cpu)
        peft_model.get_base_model().set_attn_implementation(attention)
        run = training.prepare(peft_model, dataset, config)
        run.module.train()
        loss = training.physical_step(run, batching.collate(dataset, range(4)))
        outcomes.append((loss, [p.grad_sample.clone() for p in run.lora_params]))
    (loss_sdpa, grads_sdpa), (loss_eager, grads_eager) = outcomes
    assert loss_eager == pytest.approx(loss_sdpa, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads_sdpa, grads_eager))
    assert any(g.abs().max() > 1e-4 for g in grads_sdpa)  # gradients that could differ

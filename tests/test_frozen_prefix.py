"""The frozen-block cache: LoRA on the upper blocks trains to the same adapter, under the same DP-SGD, whether
the blocks below are computed in every pass or once per record and replayed."""

import copy

import pytest
import torch
from training_helpers import TEXTS, dp_config, lora_vector, small_config

from ppt_core.data import batching
from ppt_core.dp import frozen_prefix, training
from ppt_core.machine import precision
from ppt_core.models.architectures import decoder_blocks

pytestmark = pytest.mark.usefixtures("one_thread")

UPPER = dict(lora_blocks=2, lora_targets="attention+mlp", physical_batch_size=3)  # the tiny model has 6 blocks


def trained_once(tiny, config, *, cached: bool, sigma: float | None = None, steps: int = 3):
    """(Training, its LoRA vector after `steps` logical steps) with the frozen blocks cached or computed."""
    model, tokenizer = tiny
    torch.manual_seed(config.seed)
    peft_model = training.lora_model(model, config, torch.device("cpu"))
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    prefix = training._frozen_prefix(peft_model, dataset, config) if cached else None
    run = training.prepare(peft_model, dataset, config, prefix=prefix)
    if sigma is not None:
        run.optimizer.noise_multiplier = sigma
    torch.manual_seed(123)  # the noise's generator
    training.run_steps(run, steps=steps)
    return run, lora_vector(run)


def test_lora_sits_only_on_the_upper_blocks(tiny):
    run, _ = trained_once(tiny, small_config(**UPPER), cached=True, steps=1)
    adapted = {int(name.split("layers.")[1].split(".")[0]) for name, p in run.peft_model.named_parameters()
               if p.requires_grad}
    assert adapted == {4, 5}
    assert run.prefix is not None and run.prefix.n_frozen == 4


@pytest.mark.parametrize("private", [False, True])
def test_cached_loop_trains_the_same_adapter_as_the_uncached_one(tiny, private):
    """Same draws, same per-record clipping and noise: the adapters agree to float rounding, with and without DP
    (sigma 0: the clipped sum alone; sigma 0.7: one noise draw per logical batch, as uncached)."""
    dp = dp_config(max_grad_norm=1e-2) if private else None
    config = small_config(**UPPER, optimizer="sgd", learning_rate=0.5, lr_schedule="constant", dp=dp)
    for sigma in ([0.0, 0.7] if private else [None]):
        cached_run, cached = trained_once(tiny, config, cached=True, sigma=sigma)
        _, computed = trained_once(tiny, config, cached=False, sigma=sigma)
        start = trained_once(tiny, config, cached=False, sigma=sigma, steps=0)[1]
        assert cached_run.prefix is not None
        assert float((computed - start).norm()) > 0  # the adapter moved
        assert torch.allclose(cached, computed, rtol=1e-4, atol=1e-6)


def test_frozen_blocks_run_once_per_record_not_once_per_pass(tiny):
    model, tokenizer = tiny
    config = small_config(**UPPER, epochs=3.0)
    torch.manual_seed(0)
    peft_model = training.lora_model(model, config, torch.device("cpu"))
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    rows_through = {"bottom": 0, "top": 0}

    def counter(key):
        return lambda module, args, output: rows_through.__setitem__(key, rows_through[key] + len(args[0]))

    blocks = decoder_blocks(peft_model.get_base_model())
    blocks[0].register_forward_hook(counter("bottom"))
    blocks[5].register_forward_hook(counter("top"))
    run = training.prepare(peft_model, dataset, config, prefix=training._frozen_prefix(peft_model, dataset, config))
    after_cache = dict(rows_through)
    log = training.run_steps(run)
    drawn = sum(log.batch_sizes)
    assert drawn > len(TEXTS)  # three passes: records are drawn about 3 times each
    assert rows_through["bottom"] == after_cache["bottom"]  # no training step ran block 0 again
    assert rows_through["top"] - after_cache["top"] == drawn  # every drawn record went through the top block


def test_dropout_in_the_frozen_blocks_means_no_cache(tiny):
    model, tokenizer = tiny
    dropping = copy.deepcopy(model)
    dropping.config.attention_dropout = 0.1
    config = small_config(**UPPER)
    peft_model = training.lora_model(dropping, config, torch.device("cpu"))
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    assert frozen_prefix.frozen_dropout(peft_model.get_base_model(), 4) == ["config.attention_dropout = 0.1"]
    assert training._frozen_prefix(peft_model, dataset, config) is None


def test_replayed_forward_matches_the_computed_one_and_restores_the_blocks(tiny):
    model, tokenizer = tiny
    config = small_config(**UPPER)
    peft_model = training.lora_model(model, config, torch.device("cpu"))
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    prefix = frozen_prefix.FrozenPrefix(peft_model, dataset, 4, batch_size=4, bf16=False)
    before = list(decoder_blocks(peft_model.get_base_model()))
    assert prefix.replay_error(dataset, [3, 7, 11]) < 1e-5
    assert list(decoder_blocks(peft_model.get_base_model())) == before  # the real blocks are back
    with pytest.raises(ValueError, match="n_frozen"):
        frozen_prefix.FrozenPrefix(peft_model, dataset, 6, batch_size=4, bf16=False)


def test_the_setup_check_reads_no_training_record_and_catches_a_stack_that_does_not_replay(tiny, capsys):
    """The check runs on seeded random tokens, never on the training records; a model whose upper block
    reads state a frozen block leaves behind (a cross-block shortcut the replay skips) fails it and trains uncached."""
    model, tokenizer = tiny
    config = small_config(**UPPER)
    peft_model = training.lora_model(model, config, torch.device("cpu"))
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    checked = []
    original = frozen_prefix.FrozenPrefix.replay_error

    def spy(self, checked_on, rows):
        checked.append(checked_on)
        return original(self, checked_on, rows)

    frozen_prefix.FrozenPrefix.replay_error = spy
    try:
        assert frozen_prefix.replay_check_error(peft_model, 4, bf16=False) < frozen_prefix.REPLAY_TOLERANCE
        assert frozen_prefix.replay_check_error(peft_model, 4, bf16=True) < frozen_prefix.replay_tolerance(True)
        assert training._frozen_prefix(peft_model, dataset, config) is not None
    finally:
        frozen_prefix.FrozenPrefix.replay_error = original
    assert checked and all(d is not dataset and not d.tensors[0].shape == dataset.tensors[0].shape for d in checked)

    blocks = decoder_blocks(peft_model.get_base_model())
    left_behind = {}
    hooks = [blocks[0].register_forward_hook(lambda m, a, out: left_behind.update(h=out[0] if isinstance(out, tuple)
                                                                                   else out)),
             blocks[-1].register_forward_pre_hook(lambda m, args: (args[0] + left_behind.pop("h", 0),) + args[1:])]
    try:
        assert frozen_prefix.replay_check_error(peft_model, 4, bf16=False) > 100 * frozen_prefix.REPLAY_TOLERANCE
        assert training._frozen_prefix(peft_model, dataset, config) is None
    finally:
        for hook in hooks:
            hook.remove()
    assert "not cached" in capsys.readouterr().out


def test_bf16_training_with_the_cache_and_the_audit_probe(tiny):
    """The study's bf16 loop end to end on the tiny model: frozen weights stored in bf16, the lower blocks cached,
    and the audit probe scoring through the float32 head after every pass (the smoke profile runs float32, so
    only this test reads these paths together)."""
    from ppt_core.stages import arm_training

    model, tokenizer = tiny
    config = small_config(**UPPER, bf16=True, epochs=2.0)
    audit = [{"text": f"zebra quartz {i} lumen", "secret_tokens": 2} for i in range(6)]
    peft_model, result = training.finetune(model, tokenizer, TEXTS, config,
                                           pass_probe=arm_training.audit_probe(tokenizer, audit, config))
    assert result.bf16 and len(result.pass_probes) == 3  # before training and after each of the 2 passes
    assert all(len(values) == len(audit) for _, values in result.pass_probes)
    assert all(p.dtype == torch.float32 for p in peft_model.parameters())  # the weights are float32 again


@pytest.mark.parametrize("bf16", [False, True])
def test_audit_probe_replaying_the_frozen_blocks_scores_as_the_computed_one(tiny, bf16):
    """The audit over training replays the frozen blocks' output on the audit canaries, kept once: after training
    moved the upper blocks' adapter, its scores equal those of the full forward (to float, or bf16, rounding),
    and a mutation that replays another canary's rows would not."""
    from ppt_core.stages import arm_training

    model, tokenizer = tiny
    config = small_config(**UPPER, bf16=bf16, optimizer="sgd", learning_rate=0.5)
    audit = [{"text": f"zebra quartz {'lumen ' * (i % 3)}{i}", "secret_tokens": 2} for i in range(7)]
    probe = arm_training.audit_probe(tokenizer, audit, config)
    run, _ = trained_once(tiny, config, cached=True, steps=0)
    run.peft_model.eval()
    before = probe(run.peft_model, run.prefix.n_frozen)  # keeps the frozen blocks' output on the canaries
    run.module.train()
    training.run_steps(run, steps=2)
    run.peft_model.eval()
    replayed = probe(run.peft_model, run.prefix.n_frozen)
    computed = probe(run.peft_model, None)
    assert not torch.allclose(torch.tensor(before), torch.tensor(computed), atol=1e-3)  # the adapter moved them
    tolerance = 5e-2 if bf16 else 1e-4
    assert abs(replayed - computed).max() < tolerance
    assert abs(replayed[::-1] - computed).max() > 10 * tolerance  # the test can tell rows apart


def test_audit_probe_settles_a_profiles_auto_bf16_on_the_models_device(tiny):
    """Notebook 03 hands the probe the profile's config, whose bf16 is "auto" (training settles its own copy): the
    probe scores as the setting resolved on the model's device, replayed or computed, and never takes the string
    for True (the quick run failed on it in notebook 03)."""
    from ppt_core.leakage import membership
    from ppt_core.stages import arm_training

    model, tokenizer = tiny
    audit = [{"text": f"zebra quartz {'lumen ' * (i % 3)}{i}", "secret_tokens": 2} for i in range(5)]
    run, _ = trained_once(tiny, small_config(**UPPER), cached=True, steps=0)
    run.peft_model.eval()
    resolved = precision.resolve_bf16("auto", torch.device("cpu"))
    for frozen_blocks in (run.prefix.n_frozen, None):
        automatic = arm_training.audit_probe(tokenizer, audit, small_config(**UPPER, bf16="auto"))
        settled = arm_training.audit_probe(tokenizer, audit, small_config(**UPPER, bf16=resolved))
        assert abs(automatic(run.peft_model, frozen_blocks) - settled(run.peft_model, frozen_blocks)).max() == 0
    with pytest.raises(TypeError, match="'auto'"):
        membership.audit_logprobs(run.peft_model, tokenizer, audit, bf16="auto", progress=False)

"""Saving a study arm: a standard checkpoint, the guarantee beside it, and nothing noiseless of a DP arm
published; the per-record sample counts kept beside it for the attacks, never in the published files; the audit
canaries scored after every pass; an arm that diverged stops the study, named, with nothing saved."""

import copy
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import run_all_in_process
from training_helpers import TEXTS, dp_config, small_config

from ppt_core.data import batching
from ppt_core.dp import privacy, training
from ppt_core.run import arms, artifacts
from ppt_core.stages import arm_training

pytestmark = pytest.mark.usefixtures("one_thread")

HELDOUT = [f"Patient {name} was seen in clinic for {reason}." for name in ("Gus Hale", "Ida Voss")
           for reason in ("a rash", "a cough", "back pain")]


@pytest.fixture(scope="module")
def trained_pair(tiny):
    """A DP arm and its non-private twin, with held-out loss curves (and a DP arm without one)."""
    model, tokenizer = tiny
    dp = training.finetune(model, tokenizer, TEXTS, small_config(dp=dp_config(), loss_curve_points=2), HELDOUT)
    plain = training.finetune(model, tokenizer, TEXTS, small_config(loss_curve_points=2), HELDOUT)
    dp_without_curve = training.finetune(model, tokenizer, TEXTS, small_config(dp=dp_config()))
    return dp, plain, dp_without_curve


def test_sample_counts_are_the_samplers_draws(tiny, trained_pair):
    (_, dp), (_, plain), _ = trained_pair
    assert len(dp.sample_counts) == len(TEXTS)
    assert sum(dp.sample_counts) == sum(dp.batch_sizes)
    # Replay the Poisson sampler from the seed: the counts are its draws, and an undrawn record has 0.
    config = small_config()
    dataset = batching.record_dataset(tiny[1], TEXTS, config.max_length)
    plan = batching.schedule(len(TEXTS), config.expected_batch_size, config.epochs)
    for result, private in ((dp, True), (plain, False)):
        generator = torch.Generator().manual_seed(batching.sampling_seed(config.seed, private=private))
        replay = np.zeros(len(TEXTS), dtype=int)
        for batch in batching.logical_batches(batching.poisson_loader(dataset, plan, generator), plan.steps):
            replay[batch] += 1
        assert result.sample_counts == replay.tolist()
    assert 0 in dp.sample_counts  # 5 steps at q = 1/5: some record is never drawn
    # The twins draw independently: the non-private twin's published batch sizes say nothing of the DP arm's.
    assert plain.sample_counts != dp.sample_counts and plain.batch_sizes != dp.batch_sizes


def test_heldout_curve_is_measured_without_touching_training(trained_pair):
    (dp_model, dp), (_, plain), (without_model, _) = trained_pair
    for result in (dp, plain):
        assert [step for step, _ in result.heldout_losses] == [0, round(result.steps / 2), result.steps]
        assert all(np.isfinite(loss) for _, loss in result.heldout_losses)
    assert dp.heldout_losses[0] == plain.heldout_losses[0]  # the same starting model
    for (name, p), q in zip(dp_model.named_parameters(), without_model.parameters()):
        assert torch.equal(p, q), name  # measuring the curve changes no weight and no random draw


def test_published_records_hold_nothing_noiseless_of_a_dp_arm(trained_pair):
    (_, dp), (_, plain), _ = trained_pair
    trainer_only = {"losses", "batch_sizes", "first_loss", "final_loss", "sample_counts", "counts"}
    for record in (arm_training.result_record(dp), arm_training.training_record(dp, arm="full-dp8", base_model="m")):
        assert not trainer_only & set(record), record.keys()
        assert len(record["heldout_losses"]) == 3 and record["epsilon"] > 0
    published = arm_training.result_record(plain)
    assert published["losses"] and published["batch_sizes"] and "final_loss" in published
    assert "sample_counts" not in published


def test_save_arm_loads_with_plain_transformers_and_peft(tiny, smoke_params, trained_pair):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny
    (peft_model, result), _, _ = trained_pair
    config = small_config(dp=dp_config())
    try:
        folder = arm_training.save_arm(smoke_params, "full-dp8", peft_model, tokenizer, result, config)
        record = json.loads((folder / "training.json").read_text())
        assert record["epsilon"] == pytest.approx(result.epsilon, rel=1e-5)
        for key in ("delta", "noise_multiplier", "sample_rate", "steps", "max_grad_norm", "base_model"):
            assert record[key] is not None, key
        assert "final_loss" not in record and "sample_counts" not in record
        counts = json.loads((folder / "sample_counts.json").read_text())
        assert counts["counts"] == result.sample_counts and "never released" in counts["note"]
        assert arm_training.load_sample_counts(smoke_params, "full-dp8").tolist() == result.sample_counts
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


def test_group_privacy_table(smoke_params, trained_pair):
    (_, dp), (_, plain), _ = trained_pair
    twin = copy.copy(dp)
    params = dict(smoke_params, accountant="rdp", dose_epsilons=[1e5])
    dose = arms.dose_arm_names(params)[0]  # an instrument, never released: not composed with the claimed arms
    table = arm_training.group_privacy(params, {"a-dp": dp, "b-dp": twin, dose: copy.copy(dp), "nodp": plain})
    assert set(table) == {"a-dp", "b-dp", dose, "claimed DP arms together"}
    assert table["a-dp"]["k=1"] == pytest.approx(dp.epsilon, rel=1e-6)
    mechanism = (dp.noise_multiplier, dp.sample_rate, dp.steps)
    assert table["claimed DP arms together"]["k=1"] == pytest.approx(
        privacy.composed_epsilon([mechanism, mechanism], params["delta"], "rdp"), rel=1e-6)
    assert table["claimed DP arms together"]["k=1"] > table["a-dp"]["k=1"]
    assert table["a-dp"]["accountant"] == "rdp (k = 1, 4, 16, 64)"


def test_the_audit_curve_scores_every_audit_canary_before_training_and_after_each_pass(tiny, smoke_params):
    from ppt_core.data import corpus
    from ppt_core.leakage import membership

    model, tokenizer = tiny
    audit = corpus.audit_canary_records(dict(smoke_params, n_audit_canaries=6), tokenizer)
    config = small_config(epochs=3.0)
    peft_model, result = training.finetune(model, tokenizer, TEXTS, config,
                                           pass_probe=arm_training.audit_probe(tokenizer, audit, config))
    curve = arm_training.audit_curve(result)
    per_pass = result.batches_per_pass
    assert curve["steps"] == [0, per_pass, 2 * per_pass, 3 * per_pass] and curve["passes"] == [0, 1, 2, 3]
    assert all(len(values) == len(audit) for values in curve["logprobs"])
    # point 0 is the starting model (LoRA starts at zero), the last one the returned adapter
    assert np.allclose(curve["logprobs"][0], membership.audit_logprobs(model, tokenizer, audit, progress=False))
    assert np.allclose(curve["logprobs"][-1], membership.audit_logprobs(peft_model, tokenizer, audit, progress=False))
    _, without = training.finetune(model, tokenizer, TEXTS, config)
    assert without.sample_counts == result.sample_counts and without.pass_probes == []  # probing draws nothing


def test_a_diverged_arm_stops_with_its_name():
    result = training.TrainResult(losses=[], batch_sizes=[], sample_counts=[], steps=10, sample_rate=0.1,
                                  expected_batch_size=3, n_records=30, learning_rate=1e3,
                                  heldout_losses=[(0, 3.2), (5, 2.0), (10, 3.3)])
    with pytest.raises(arm_training.TrainingDiverged, match=r"'full-nodp' diverged.*3\.2 .* 3\.3 .*1000"):
        arm_training.check_converged("full-nodp", result)
    arm_training.check_converged("full-nodp", dataclasses.replace(result, heldout_losses=[(0, 3.2), (10, 3.1)]))
    with pytest.raises(arm_training.TrainingDiverged, match="nan"):
        arm_training.check_converged("pruned-dp8", dataclasses.replace(result, heldout_losses=[(0, 3.2), (10, np.nan)]))


def test_a_planted_learning_rate_stops_notebook_03_naming_the_arm(smoke_run, copy_run, run_name):
    # The output head in the adapter: the tiny random model's frozen head keeps its logits near uniform whatever
    # its blocks do, so only a head that moves shows the divergence (10.8 nats per token to about 3e8).
    paths = copy_run(smoke_run, "data", "models/pruned-noft")
    result = run_all_in_process("--profile", "smoke", "--run-name", run_name, "--only", "03",
                                "--set", "nodp_learning_rate=1000",
                                "--set", 'lora_targets=["q_proj", "v_proj", "lm_head"]')
    assert result.returncode == 1, result.stderr[-2000:]
    assert "TrainingDiverged" in result.stderr and "'full-nodp' diverged" in result.stderr, result.stderr[-2000:]
    assert not (paths.models / "full-nodp").exists()  # nothing of the failed arm is saved


def test_the_arms_of_one_family_compute_their_shared_work_once_with_the_same_numbers(tiny, smoke_params,
                                                                                    monkeypatch):
    """The frozen blocks' outputs on the training records and on the audit canaries, and the starting model's audit
    read, are computed by a family's first arm and replayed by the next: every probe value and adapter weight is
    what each arm gives alone, bit for bit."""
    from test_frozen_prefix import UPPER

    from ppt_core.data import corpus
    from ppt_core.dp import frozen_prefix
    from ppt_core.leakage import membership

    model, tokenizer = tiny
    audit = corpus.audit_canary_records(dict(smoke_params, n_audit_canaries=6), tokenizer)
    computed = []
    outputs = frozen_prefix.FrozenPrefix._outputs
    monkeypatch.setattr(frozen_prefix.FrozenPrefix, "_outputs",
                        lambda self, *a, **k: computed.append(len(a[0])) or outputs(self, *a, **k))
    reads = []
    original_read = membership.audit_logprobs
    monkeypatch.setattr(membership, "audit_logprobs", lambda *a, **k: reads.append(1) or original_read(*a, **k))
    family: dict = {}
    for config in (small_config(epochs=2.0, **UPPER), small_config(epochs=2.0, dp=dp_config(), **UPPER)):
        alone_model, alone = training.finetune(model, tokenizer, TEXTS, config,
                                               pass_probe=arm_training.audit_probe(tokenizer, audit, config))
        computed.clear(), reads.clear()
        shared_model, shared = training.finetune(model, tokenizer, TEXTS, config, family=family,
                                                 pass_probe=arm_training.audit_probe(tokenizer, audit, config, family))
        assert shared.pass_probes == alone.pass_probes and shared.heldout_losses == alone.heldout_losses
        for a, b in zip(alone_model.parameters(), shared_model.parameters()):
            assert torch.equal(a, b)
        first = config.dp is None
        # the setup check's batch always; the records' and the canaries' outputs by the family's first arm only
        assert len(computed) == (3 if first else 1)
        assert len(reads) == len(shared.pass_probes) - (0 if first else 1)  # the starting model read once

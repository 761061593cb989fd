"""Perplexity, FLOP counting and inference timing."""

import numpy as np
import pytest
import torch

from ppt_core import evaluation, pruning, tokens

TEXTS = ["A short note.", "Discharged home on metformin 500 mg twice daily after an uneventful stay.", "Stable."]


def test_perplexity_is_token_weighted_and_ignores_padding(tiny):
    model, tokenizer = tiny
    nll, count = 0.0, 0
    for text in TEXTS:  # one text at a time: no padding at all
        batch = tokens.encode(tokenizer, [text], 64)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
        nll += torch.nn.functional.cross_entropy(logits, batch["input_ids"][0, 1:], reduction="sum").item()
        count += batch["input_ids"].shape[1] - 1
    expected = np.exp(nll / count)
    for batch_size in (1, 3):
        got = evaluation.perplexity(model, tokenizer, TEXTS, max_length=64, batch_size=batch_size, progress=False)
        assert got == pytest.approx(expected, rel=1e-4)


def test_forward_flops_match_a_closed_form_for_llama(tiny):
    model, _ = tiny
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    q_width, kv_width = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    per_block = 2 * (c.hidden_size * q_width + 2 * c.hidden_size * kv_width + q_width * c.hidden_size
                     + 3 * c.hidden_size * c.intermediate_size)
    head = 2 * c.hidden_size * c.vocab_size
    T = 10
    attention = 4 * q_width * T * (T + 1) / 2
    expected = c.num_hidden_layers * (per_block * T + attention) + head * T
    assert evaluation.forward_flops(model, T) == pytest.approx(expected)
    assert evaluation.forward_flops(model, T, logits_positions=1) == pytest.approx(expected - head * (T - 1))
    pruned = pruning.prune_layers(model, [1, 2])
    assert evaluation.forward_flops(pruned, T) == pytest.approx(expected - 2 * (per_block * T + attention))
    # The ideal speedup is below L / L' because the LM head is not pruned.
    speedup = evaluation.ideal_speedup(model, pruned, T)
    assert 1 < speedup < c.num_hidden_layers / (c.num_hidden_layers - 2)


def test_time_inference_times_every_model_side_by_side(tiny):
    model, tokenizer = tiny
    models = {"full": model, "pruned": pruning.prune_layers(model, [0, 5])}
    reports = evaluation.time_inference(models, tokenizer, prompt_tokens=8, new_tokens=3, batch_sizes=(1, 2),
                                        repeats=2, warmup=0)
    assert set(reports) == {"full", "pruned"}
    for report in reports.values():
        assert report["repeats"] == 2
        for key in ("batch1", "batch2"):
            assert report[key]["prefill_tokens_per_s"] > 0
            assert report[key]["generation_ms_per_token"] >= 0
            assert len(report[key]["prefill_seconds_per_round"]) == 2
    with pytest.raises(ValueError, match="new_tokens must be >= 2"):
        evaluation.time_inference(models, tokenizer, new_tokens=1)


def test_prefill_timings_interleave_every_model(tiny):
    model, tokenizer = tiny
    models = {"full": model, "pruned": pruning.prune_layers(model, [0, 5])}
    seconds = evaluation.prefill_timings(models, tokenizer, prompt_tokens=8, batch_size=2, repeats=2, warmup=1)
    assert set(seconds) == {"full", "pruned"} and all(len(runs) == 2 and min(runs) > 0 for runs in seconds.values())
    throughput = evaluation.prefill_throughput(models, tokenizer, prompt_tokens=8, batch_size=2, repeats=1)
    assert all(value > 0 for value in throughput.values())


def test_arm_speeds_refuses_an_arm_whose_architecture_differs_from_its_start():
    """Arms report their starting model's timing only when they have its parameter count."""
    from ppt_core import profiles, utility

    sizes = {"base": {"parameters": 10}, "full-nodp": {"parameters": 12}}
    with pytest.raises(ValueError, match="'full-nodp' has 12 parameters but its start 'base' has 10"):
        utility.arm_speeds({}, None, profiles.get_profile("smoke"), sizes)


# Tolerances of bf16 scoring against float32, on the embedded model (measured on an emulated-bf16 CPU:
# perplexity 36.030 vs 36.041, largest per-record difference 0.0083 nats, split-half AUC 0.4785 vs 0.4775).
BF16_PERPLEXITY_RTOL = 0.005  # relative
BF16_RECORD_ATOL = 0.03  # nats per token, any one record's mean log-probability
BF16_AUC_ATOL = 0.02


@pytest.mark.embedded
def test_bf16_scoring_agrees_with_float32_on_the_embedded_model(smollm, smoke_params, tmp_path):
    from ppt_core import data
    from ppt_core.attacks import roc_auc

    model, tokenizer = smollm
    texts = data.build_dataset(dict(smoke_params, n_heldout=48), tmp_path, tokenizer=tokenizer).texts("heldout")
    scored = {}
    for bf16 in (False, True):
        logprobs = evaluation.token_logprobs(model, tokenizer, texts, max_length=64, bf16=bf16, progress=False)
        scored[bf16] = evaluation.record_logprob_rows(logprobs)
    fp32, bf16 = scored[False], scored[True]
    assert not np.array_equal(fp32, bf16)  # bf16 really ran: it rounds
    assert evaluation.perplexity_of_rows(bf16) == pytest.approx(evaluation.perplexity_of_rows(fp32), rel=BF16_PERPLEXITY_RTOL)
    mean_fp32, mean_bf16 = fp32[:, 0] / fp32[:, 1], bf16[:, 0] / bf16[:, 1]
    assert np.abs(mean_fp32 - mean_bf16).max() < BF16_RECORD_ATOL
    half = len(texts) // 2  # a membership AUC between two halves, by the loss score, both ways
    auc = {name: roc_auc(-m[:half], -m[half:]) for name, m in (("fp32", mean_fp32), ("bf16", mean_bf16))}
    assert abs(auc["fp32"] - auc["bf16"]) < BF16_AUC_ATOL

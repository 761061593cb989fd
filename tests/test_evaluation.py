"""Perplexity: token-weighted, padding ignored; what bf16 scoring changes; the arms' speed taken from their starts."""

import copy

import numpy as np
import pytest
import torch

from ppt_core.data import tokens
from ppt_core.machine import precision
from ppt_core.scoring import evaluation
from ppt_core.uncertainty import stats

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


@pytest.mark.parametrize("bf16", [False, True])
def test_the_last_tokens_alone_are_the_whole_scores_last_tokens(tiny, bf16):
    """`last`: each text's last k log-probabilities, the head reading only where they are predicted, are those of
    the whole scoring, for texts of different lengths (one shorter than k), plain and through a PEFT model."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"]))
    for scored in (model, peft_model):
        whole = evaluation.token_logprobs(scored, tokenizer, TEXTS, max_length=64, bf16=bf16, progress=False)
        tail = evaluation.token_logprobs(scored, tokenizer, TEXTS, max_length=64, bf16=bf16, last=4, progress=False)
        assert len(whole[2]) < 4 and [len(t) for t in tail] == [min(4, len(w)) for w in whole]
        for w, t in zip(whole, tail):
            np.testing.assert_allclose(t, w[-4:], atol=1e-4 if bf16 else 1e-5)


def test_scoring_from_bf16_stored_weights_is_autocasts_bit_for_bit(tiny):
    """bf16_weights stores the frozen Linear weights (not the output head) in bf16 for its block and puts the same
    float32 tensors back after; the log-probabilities are autocast's exactly, and a weight that requires grad stays."""
    model, tokenizer = tiny
    model = copy.deepcopy(model).requires_grad_(False)
    before = dict(model.named_parameters())
    score = dict(max_length=64, batch_size=3, bf16=True, progress=False)
    cast = evaluation.token_logprobs(model, tokenizer, TEXTS, **score)
    with evaluation.bf16_weights(model, True):
        assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
        assert model.get_output_embeddings().weight.dtype == torch.float32  # scoring reads the head in float32
        stored = evaluation.token_logprobs(model, tokenizer, TEXTS, **score)
    assert all(p is before[name] for name, p in model.named_parameters())
    for c, s in zip(cast, stored):
        np.testing.assert_array_equal(c, s)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(True)
    with evaluation.bf16_weights(model, True):
        assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.float32


# Tolerances of bf16 scoring against float32, on the embedded model (measured on an emulated-bf16 CPU:
# perplexity 36.030 vs 36.041, largest per-record difference 0.0083 nats, split-half AUC 0.4785 vs 0.4775).
BF16_PERPLEXITY_RTOL = 0.005  # relative
BF16_RECORD_ATOL = 0.03  # nats per token, any one record's mean log-probability
BF16_AUC_ATOL = 0.02


@pytest.mark.skipif(not precision.choose("cpu").bf16,
                    reason="this CPU has no native bf16 (AVX-512 BF16 or AMX): the study scores in float32 here, and "
                           "emulated bf16 on the 135M model would only slow the slow tier down")
def test_bf16_scoring_agrees_with_float32_on_the_embedded_model(smollm, smoke_params, tmp_path):
    from ppt_core import data
    from ppt_core.uncertainty.roc import roc_auc

    model, tokenizer = smollm
    texts = data.build_dataset(dict(smoke_params, n_heldout=48), tmp_path, tokenizer=tokenizer).texts("heldout")
    scored = {}
    for bf16 in (False, True):
        logprobs = evaluation.token_logprobs(model, tokenizer, texts, max_length=64, bf16=bf16, progress=False)
        scored[bf16] = evaluation.record_logprob_rows(logprobs)
    fp32, bf16 = scored[False], scored[True]
    assert not np.array_equal(fp32, bf16)  # bf16 really ran: it rounds
    assert stats.perplexity_of_rows(bf16) == pytest.approx(stats.perplexity_of_rows(fp32), rel=BF16_PERPLEXITY_RTOL)
    mean_fp32, mean_bf16 = fp32[:, 0] / fp32[:, 1], bf16[:, 0] / bf16[:, 1]
    assert np.abs(mean_fp32 - mean_bf16).max() < BF16_RECORD_ATOL
    half = len(texts) // 2  # a membership AUC between two halves, by the loss score, both ways
    auc = {name: roc_auc(-m[:half], -m[half:]) for name, m in (("fp32", mean_fp32), ("bf16", mean_bf16))}
    assert abs(auc["fp32"] - auc["bf16"]) < BF16_AUC_ATOL


def test_bf16_scoring_reads_an_adapter_during_training(tiny):
    """The trainer scores its PEFT model of the moment (the audit over training): under bf16 the blocks run
    with the adapter in them, and the head in float32, as for a merged model."""
    from ppt_core.dp import train_config, training

    model, tokenizer = tiny
    config = train_config.TrainConfig(lora_rank=4, lora_targets=["q_proj", "v_proj"], bf16=False, progress=False)
    peft_model = training.lora_model(model, config, torch.device("cpu"))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    batch = tokens.encode(tokenizer, ["Patient portal access code: 123456."], 16)
    args = (batch["input_ids"], batch["attention_mask"])
    exact = evaluation.next_token_logits(peft_model, *args)
    rounded = evaluation.next_token_logits(peft_model, *args, bf16=True)
    base = evaluation.next_token_logits(model, *args)
    assert torch.allclose(rounded, exact, atol=0.1) and not torch.allclose(base, exact, atol=0.1)

"""The training loss read through the frozen head in chunks (ppt_core.dp.head_loss) is the logits path's: the same
per-record losses, the same gradient with respect to every hidden state, the same per-record gradients of the
LoRA weights for Opacus to clip; a model whose logits are not its head's product keeps the logits path."""

import pytest
import torch
from torch import nn
from training_helpers import TEXTS, dp_config, small_config

from ppt_core.data import batching, tokens
from ppt_core.dp import head_loss, training

pytestmark = pytest.mark.usefixtures("one_thread")


def _padded_labels(batch: int, width: int, vocabulary: int, real: list[int]) -> torch.Tensor:
    labels = torch.randint(0, vocabulary, (batch, width))
    for row, n in enumerate(real):
        labels[row, n:] = tokens.IGNORE_INDEX
    return labels


@pytest.mark.parametrize("bias", [False, True])
def test_losses_and_hidden_gradients_equal_the_logits_paths_across_chunks(bias):
    """Over more positions than one chunk, with padding of several widths and a record of one token (nothing to
    predict): each record's loss and the gradient of any weighting of them with respect to every hidden state are
    those of training.record_losses on the head's logits, in float32 up to summation order."""
    torch.manual_seed(0)
    batch, width, hidden_size, vocabulary = 4, 90, 16, 50
    head = nn.Linear(hidden_size, vocabulary, bias=bias).requires_grad_(False)
    labels = _padded_labels(batch, width, vocabulary, [90, 61, 7, 1])
    assert int((labels[:, 1:] != tokens.IGNORE_INDEX).sum()) > head_loss.CHUNK
    weights = torch.rand(batch)  # an upstream gradient per record, as a clipped DP-SGD backward gives
    results = []
    for chunked in (False, True):
        hidden = torch.randn(batch, width, hidden_size, generator=torch.Generator().manual_seed(1), requires_grad=True)
        losses = (head_loss.OutputHead(head, bf16=False).record_losses(hidden, labels) if chunked
                  else training.record_losses(head(hidden), labels))
        (losses * weights).sum().backward()
        results.append((losses.detach(), hidden.grad))
    (expected, expected_grad), (got, got_grad) = results
    assert torch.allclose(got, expected, atol=1e-5) and got[3] == 0
    assert torch.allclose(got_grad, expected_grad, atol=1e-6)
    assert expected_grad.abs().max() > 1e-3 and not got_grad[2, 7:].any()  # padding gets no gradient


def test_bf16_losses_are_the_autocast_logits_paths_within_bf16_rounding():
    torch.manual_seed(0)
    head = nn.Linear(32, 200, bias=False).requires_grad_(False)
    hidden = torch.randn(3, 20, 32)
    labels = _padded_labels(3, 20, 200, [20, 12, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = training.record_losses(head(hidden), labels)
        output_head = head_loss.OutputHead(head, bf16=True)
        assert output_head(hidden).dtype == torch.bfloat16 and torch.equal(output_head(hidden), head(hidden))
        got = output_head.record_losses(hidden, labels)
    assert output_head(hidden).dtype == torch.float32  # outside autocast: the float32 head, as scoring reads it
    assert torch.allclose(got, expected, atol=2e-2) and not torch.equal(expected, training.record_losses(
        head(hidden), labels))  # bf16 moved the losses: the tolerance is bf16's, not a test of nothing


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_opacus_sees_the_same_per_record_gradients_and_the_same_step(tiny, mode):
    """One DP physical step of the tiny model through the chunked head and through the logits: the same loss,
    the same per-record gradients of every LoRA weight (hooks) and the same clipped, noised update (both modes,
    same noise seed); the head is put back after training."""
    model, tokenizer = tiny
    config = small_config(dp=dp_config(grad_sample_mode=mode), lora_targets="attention+mlp")
    dataset = batching.record_dataset(tokenizer, TEXTS, config.max_length)
    outcomes = []
    for chunked in (False, True):
        torch.manual_seed(0)
        peft_model = training.lora_model(model, config, torch.device("cpu"))
        run = training.prepare(peft_model, dataset, config, chunked_head=chunked)
        assert (run.head is not None) == chunked
        run.module.train()
        loss = training.physical_step(run, batching.collate(dataset, range(4)))
        samples = [p.grad_sample.clone() for p in run.lora_params] if mode == "hooks" else []
        run.optimizer.zero_grad()
        before = [p.detach().clone() for p in run.lora_params]
        torch.manual_seed(1)
        training.logical_step(run, list(range(6)), dataset.tensors[1].sum(1).tolist())
        update = [p.detach() - b for p, b in zip(run.lora_params, before)]
        outcomes.append((loss, samples, update))
    (loss_logits, samples_logits, update_logits), (loss_chunked, samples_chunked, update_chunked) = outcomes
    assert loss_chunked == pytest.approx(loss_logits, rel=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(samples_logits, samples_chunked))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(update_logits, update_chunked))
    assert any(u.abs().max() > 1e-4 for u in update_chunked)


def test_finetune_returns_the_model_with_its_own_head(tiny):
    model, tokenizer = tiny
    peft_model, _ = training.finetune(model, tokenizer, TEXTS, small_config())
    causal_lm = peft_model.get_base_model()
    assert type(causal_lm.get_output_embeddings()) is nn.Linear
    if model.config.tie_word_embeddings:
        assert causal_lm.get_output_embeddings().weight is causal_lm.get_input_embeddings().weight


def test_a_model_whose_logits_are_not_its_heads_product_keeps_the_logits_path(tiny, capsys):
    """A forward that reshapes the logits after the head (here: Gemma 2's soft cap, tanh(logits / cap) * cap)
    fails the setup check: the head stays, and the run says why."""
    model, _ = tiny
    config = small_config()
    peft_model = training.lora_model(model, config, torch.device("cpu"))
    causal_lm = peft_model.get_base_model()
    head = causal_lm.get_output_embeddings()
    forward = causal_lm.forward

    def soft_capped(*args, **kwargs):
        output = forward(*args, **kwargs)
        output.logits = torch.tanh(output.logits / 2.0) * 2.0
        return output

    causal_lm.forward = soft_capped
    assert head_loss.install(peft_model, bf16=False, logits_losses=training.record_losses) is None
    assert causal_lm.get_output_embeddings() is head
    assert "reads the whole logits" in capsys.readouterr().out

"""The training loss read through the frozen output head a chunk of positions at a time, on the positions that
have a target only.

A physical batch's logits are the largest tensors of a training step: one row of the vocabulary (49,152 for
SmolLM2) per position. Computed whole, as a causal LM's forward returns them, they are cast to float32, put
through a log-softmax, its backward and a cast back, each a pass over B x T x vocabulary values in memory; on a
CPU those passes cost as much as the head's two matmuls, and the padded positions and every record's
last position (which predict nothing) paid for all of it. Here the model's forward stops before its head
(`OutputHead` passes the final hidden states through while `hidden_out` is on), and `record_losses` reads the
head only on the positions with a target, `CHUNK` rows at a time: logits, their log-sum-exp and the gradient
of each position's loss with respect to its hidden state, (softmax - one-hot) @ W, computed while the chunk is
in cache; the backward scales that gradient by each position's upstream gradient (the loss is linear in
them). The same numbers as the logits path up to float summation order (the setup check and the tests compare
both); under bf16 autocast the head multiplies in bf16 and the log-softmax runs in float32, as autocast runs
the logits path.

Only a frozen head takes this path: its weight gets no gradient (LoRA never adapts it). Privacy is untouched:
each record's loss and its gradient with respect to each of its own hidden states are what they were, so the
LoRA layers below see the same per-record gradients for Opacus to clip and noise (the test compares the
per-sample gradients of both paths). `install` puts the head in place only where a check on a few records of
random tokens (never the training records) gives the logits path's per-record losses and the config names no
reshaping of the logits after the head (Gemma's soft cap, a logit scale); any other model keeps the logits
path, said, not hidden.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ppt_core.data import tokens

CHUNK = 128  # positions per chunk: 25 MB of float32 logits at 49,152 words; 64-256 trained as fast on 2 cores
# Config settings by which a forward reshapes its logits after the head (Gemma 2 and 3's soft cap, Cohere's and
# Granite's scales): on a check's records such a reshaping can be too small to see (a random model's logits are
# near 0, where tanh is the identity), so these keep the logits path by name.
LOGIT_RESHAPING = ("final_logit_softcapping", "logit_scale", "logits_scaling")
CHECK_TOLERANCE = 1e-4  # max |per-record loss difference| (nats) of the setup check in float32; 16x in bf16


class _HeadCrossEntropy(torch.autograd.Function):
    """Per-position cross-entropy of `hidden` (N, d) through the head (`weight` (V, d), `bias`), and its
    gradient with respect to `hidden`, computed in the forward a chunk at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        losses = torch.empty(len(hidden), dtype=torch.float32, device=hidden.device)
        wanted = ctx.needs_input_grad[0]
        gradient = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if wanted else None
        # Two chunk-sized buffers, reused by every chunk: a fresh 25 MB tensor per chunk and operation (the
        # product, its float32 copy, logsumexp's shifted copy) is fresh memory the OS must map in each time.
        product = hidden.new_empty((min(CHUNK, len(hidden)), weight.shape[0]), dtype=weight.dtype)
        in_float32 = weight.dtype == torch.float32  # then the product is the logits' buffer itself
        logits = product if in_float32 else product.new_empty(product.shape, dtype=torch.float32)
        for start in range(0, len(hidden), CHUNK):
            rows = slice(start, start + CHUNK)
            chunk = hidden[rows]
            chunk_product, chunk_logits = product[: len(chunk)], logits[: len(chunk)]
            if bias is None:
                torch.mm(chunk, weight.t(), out=chunk_product)
            else:
                torch.addmm(bias, chunk, weight.t(), out=chunk_product)
            if not in_float32:
                chunk_logits.copy_(chunk_product)  # float32 for the log-softmax, as autocast runs the logits path
            target = targets[rows].unsqueeze(1)
            picked = chunk_logits.gather(1, target)
            normaliser, sums = tokens.logsumexp_in_place(chunk_logits)  # the logits become exp(logit - max)
            losses[rows] = (normaliser - picked).squeeze(1)
            if wanted:
                probabilities = chunk_logits.div_(sums)
                probabilities.scatter_add_(1, target, torch.full_like(target, -1, dtype=torch.float32))
                if not in_float32:
                    chunk_product.copy_(probabilities)
                gradient[rows] = torch.mm(chunk_product, weight)
        ctx.save_for_backward(gradient)
        ctx.hidden_dtype = hidden.dtype
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        (gradient,) = ctx.saved_tensors
        return (gradient * grad_losses.unsqueeze(1)).to(ctx.hidden_dtype), None, None, None


class OutputHead(nn.Module):
    """Stands in for a causal LM's frozen output head during training: the head itself (under bf16 autocast
    through a bf16 copy of its weight made once: the product autocast would compute from a fresh cast in every
    pass), or, inside `hidden_out`, the identity, so the forward returns the final hidden states in place of
    logits for `record_losses` to read."""

    def __init__(self, head: nn.Linear, bf16: bool):
        super().__init__()
        self.head = head
        # a plain attribute, not a parameter or buffer: never saved, synchronised or seen by Opacus
        self.bf16_weight = head.weight.detach().to(torch.bfloat16) if bf16 else None
        self.passes_hidden = False

    def forward(self, hidden):
        if self.passes_hidden:
            return hidden
        if self.bf16_weight is not None and torch.is_autocast_enabled(hidden.device.type):
            return F.linear(hidden.to(torch.bfloat16), *self._training_weights())
        return self.head(hidden)  # float32, as scoring reads it (evaluation.next_token_logits)

    def _training_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) as training multiplies them: in bf16 under a bf16 run, as autocast would."""
        bias = self.head.bias
        if self.bf16_weight is None:
            return self.head.weight, bias
        return self.bf16_weight, None if bias is None else bias.to(torch.bfloat16)

    @contextmanager
    def hidden_out(self):
        """Inside: the model's forward returns its final hidden states as its `logits`."""
        self.passes_hidden = True
        try:
            yield
        finally:
            self.passes_hidden = False

    def record_losses(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B,) mean next-token cross-entropy (nats) over each record's own real tokens, as
        training.record_losses computes it from the logits, here from the final hidden states (B, T, d)."""
        targets = tokens.next_token_targets(labels)
        real = targets != tokens.IGNORE_INDEX
        positions = real.reshape(-1).nonzero().squeeze(1)
        weight, bias = self._training_weights()
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions).to(weight.dtype)
            losses = _HeadCrossEntropy.apply(picked, weight, bias, targets.reshape(-1)[positions])
        per_token = torch.zeros(real.numel(), dtype=torch.float32, device=hidden.device).index_put(
            (positions,), losses).view(real.shape)
        return tokens.record_means(per_token, targets)


def install(peft_model, *, bf16: bool, logits_losses) -> OutputHead | None:
    """Put an OutputHead in place of `peft_model`'s frozen output head and return it, where its per-record losses
    on a check batch (`tokens.check_batch`) match `logits_losses(logits, labels)` (the logits path) within tolerance;
    else leave the model as it was, say why, and return None. `uninstall` puts the head back."""
    causal_lm = peft_model.get_base_model()
    head = causal_lm.get_output_embeddings()
    if not isinstance(head, nn.Linear) or head.weight.requires_grad:
        return None  # a trainable or unusual head: the logits path
    reshaping = [f"{key} = {value}" for key in LOGIT_RESHAPING if (value := getattr(causal_lm.config, key, None))]
    if reshaping:
        print(f"the training loss reads the whole logits: this model's forward reshapes them after its head "
              f"({', '.join(reshaping)})")
        return None
    output_head = OutputHead(head, bf16)
    device = head.weight.device
    input_ids, attention_mask, labels = tokens.check_batch(head.weight.shape[0], device)
    was_training = peft_model.training
    peft_model.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            expected = logits_losses(peft_model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
            causal_lm.set_output_embeddings(output_head)
            with output_head.hidden_out():
                hidden = peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
            error = float((output_head.record_losses(hidden, labels) - expected).abs().max())
    except Exception:
        causal_lm.set_output_embeddings(head)
        raise
    finally:
        peft_model.train(was_training)
    if not error <= CHECK_TOLERANCE * (16 if bf16 else 1):
        causal_lm.set_output_embeddings(head)
        print(f"the training loss reads the whole logits: this model's differ from its output head's product by "
              f"up to {error:.3g} nats per record (its forward reshapes them after the head)")
        return None
    return output_head


def uninstall(peft_model, output_head: OutputHead | None) -> None:
    """Put the original head back: the returned model is a plain causal LM again."""
    if output_head is not None:
        peft_model.get_base_model().set_output_embeddings(output_head.head)

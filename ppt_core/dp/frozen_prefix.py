"""The frozen lower blocks of a LoRA model, computed once per record and replayed in every training pass.

Where LoRA sits only on the upper blocks (`TrainConfig.lora_blocks`), the blocks below the lowest adapted one
are frozen, and what they output for a record is a fixed function of the record and the public starting
model: the same in every pass. `FrozenPrefix` runs them once over every training record (no gradient, the
training autocast) and keeps the last frozen block's output; in a training step `replaying(rows)` stands two
modules in for those blocks: the first frozen blocks pass their input through untouched (`_Skip`) and the last
returns the kept output of the batch's records (`_Replay`). The embedding, masks and positions are still
computed by the model as usual, so the adapted blocks see exactly what they would see without the cache.

Nothing about DP-SGD changes: the adapted blocks, the loss, each record's gradient, its clipping and the noise
are computed as before, from the same numbers (the test compares both loops). The kept outputs are the
trainer's, like the records themselves; nothing is published from them.

The cache is used only where it is exact (`training.finetune` decides, and says when it does not): no dropout in
the frozen blocks or the config (a dropped-out pass differs from pass to pass), and a check at setup that a
replayed forward gives the computed forward's logits (`replay_check_error` within `replay_tolerance`);
otherwise training runs uncached. The check asks a structural question (do this model's blocks replay as a plain
stack?), so it keeps and replays the blocks' output on one seeded batch of random tokens: the same batch shape in
both forwards, because in bf16 a record's logits already differ between batch shapes (on a CPU with AMX, 0.5 in a
logit of SmolLM2-135M between the same 4 records alone and in a batch of 16, uncached), which says nothing about
the stack; and no training record is read outside DP-SGD.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager, suppress

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ppt_core.data import batching, tokens
from ppt_core.models.architectures import block_hidden_states, decoder_blocks

REPLAY_TOLERANCE = 1e-3  # max |logit difference| of the setup check in float32 (summation order); 16x that in bf16


class _PrefixComputed(Exception):
    """Raised by the last frozen block's hook while the outputs are kept: nothing above it needs computing."""


def _as_block_output(hidden: torch.Tensor, tuple_length: int):
    """`hidden` in the form the model's blocks return: the tensor, or a tuple of `tuple_length` led by it (Falcon's
    blocks return (hidden, attention weights); the model reads only the first unless asked for attentions)."""
    return (hidden, *(None,) * (tuple_length - 1)) if tuple_length else hidden


class _Skip(nn.Module):
    """A frozen block below the last one: its input passes through (the replayed output replaces all of them)."""

    def __init__(self, block: nn.Module, tuple_length: int):
        super().__init__()
        self.attention_type = getattr(block, "attention_type", None)  # read by some models' mask selection
        self.tuple_length = tuple_length

    def forward(self, hidden_states, *args, **kwargs):
        return _as_block_output(hidden_states, self.tuple_length)


class _Replay(nn.Module):
    """The last frozen block: returns the kept output of the current batch's records."""

    def __init__(self, block: nn.Module, output: torch.Tensor, tuple_length: int):
        super().__init__()
        self.attention_type = getattr(block, "attention_type", None)
        self.output, self.tuple_length = output, tuple_length

    def forward(self, hidden_states, *args, **kwargs):
        replayed = self.output[:, : hidden_states.shape[1]].to(hidden_states.dtype)  # the batch's width
        return _as_block_output(replayed, self.tuple_length)


def frozen_dropout(model, n_frozen: int) -> list[str]:
    """What would make the frozen part differ from pass to pass: dropout modules with p > 0 anywhere but in the
    adapted blocks (embedding dropout included), and the config's dropout rates above 0."""
    blocks = decoder_blocks(model)
    adapted = {id(m) for block in blocks[n_frozen:] for m in block.modules()}
    active = [name for name, m in model.named_modules()
              if isinstance(m, nn.Dropout) and m.p > 0 and id(m) not in adapted]
    active += [f"config.{key} = {value}" for key, value in vars(model.config).items()  # functional dropout
               if key.endswith(("dropout", "pdrop")) and not key.startswith("classifier")  # (a classifier head's)
               and isinstance(value, (int, float)) and value > 0]
    return active


class FrozenPrefix:
    """The output of the lower `n_frozen` blocks of `peft_model` for every record of `dataset`, kept in float32.

    `kept`: a dict the caller holds for one starting model (the arms of one family train from the same frozen
    blocks on the same records): the outputs computed by the first FrozenPrefix of the same records, blocks, batch
    size and autocast are taken from it instead of computed again (the same computation: the same numbers), and a
    new one's are put in it."""

    def __init__(self, peft_model, dataset: TensorDataset, n_frozen: int, *, batch_size: int, bf16: bool,
                 kept: dict | None = None):
        self.model, self.n_frozen = peft_model, n_frozen
        self.blocks = decoder_blocks(peft_model.get_base_model())
        if not 0 < n_frozen < len(self.blocks):
            raise ValueError(f"n_frozen must be between 1 and {len(self.blocks) - 1} (got {n_frozen})")
        for block in self.blocks[:n_frozen]:
            if any(p.requires_grad for p in block.parameters()):
                raise ValueError("a block below the adapted ones has trainable parameters: it cannot be cached")
        self.device = next(peft_model.parameters()).device
        self.bf16 = bf16
        self.tuple_length = 0  # the form of a block's output, seen while the outputs are kept
        self.dataset = dataset  # the records whose rows `replaying` takes
        key = (_records_digest(dataset), n_frozen, batch_size, bf16)
        if kept is not None and key in kept:
            self.outputs, self.tuple_length = kept[key]
        else:
            self.outputs = self._outputs(dataset, batch_size)
            if kept is not None:
                kept[key] = self.outputs, self.tuple_length

    @torch.no_grad()
    def _outputs(self, dataset: TensorDataset, batch_size: int) -> torch.Tensor:
        kept = []

        def keep(module, args, output):  # the last frozen block's output: kept, and the forward stops there
            self.tuple_length = len(output) if isinstance(output, (tuple, list)) else 0  # Falcon's, GPT-1's
            kept.append(block_hidden_states(output).float())
            raise _PrefixComputed

        hook = self.blocks[self.n_frozen - 1].register_forward_hook(keep)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(dataset), batch_size):
                rows = range(start, min(len(dataset), start + batch_size))
                input_ids, attention_mask, _ = (t.to(self.device) for t in batching.collate(dataset, rows))
                # The decoder without the output head, stopped after the last frozen block.
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16), \
                        suppress(_PrefixComputed):
                    self.model.get_base_model().base_model(input_ids=input_ids, attention_mask=attention_mask,
                                                           use_cache=False)
        finally:
            hook.remove()
            self.model.train(was_training)
        width = dataset.tensors[0].shape[1]
        return torch.cat([nn.functional.pad(k, (0, 0, 0, width - k.shape[1])) for k in kept])

    @contextmanager
    def replaying(self, rows):
        """Inside: the model's frozen blocks return the kept outputs of dataset rows `rows` (a training batch,
        trimmed to the batch's width by the forward pass that reads them)."""
        frozen = list(self.blocks[: self.n_frozen])
        output = self.outputs[torch.as_tensor(list(rows), dtype=torch.long)].to(self.device)
        replay = _Replay(frozen[-1], output, self.tuple_length)
        for i in range(self.n_frozen - 1):
            self.blocks[i] = _Skip(frozen[i], self.tuple_length)
        self.blocks[self.n_frozen - 1] = replay
        try:
            yield
        finally:
            for i, block in enumerate(frozen):
                self.blocks[i] = block

    @torch.no_grad()
    def replay_error(self, dataset: TensorDataset, rows) -> float:
        """max |logits replayed - logits computed| over the real tokens of dataset rows `rows` (eval mode, the
        kept outputs' autocast)."""
        input_ids, attention_mask, _ = (t.to(self.device) for t in batching.collate(dataset, rows))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                computed = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
                with self.replaying(rows):
                    replayed = self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        finally:
            self.model.train(was_training)
        return float((computed - replayed)[attention_mask.bool()].abs().max())


def _records_digest(dataset: TensorDataset) -> str:
    """What identifies a dataset's records for the cache: every tensor's bytes."""
    digest = hashlib.sha256()
    for tensor in dataset.tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def replay_check_error(peft_model, n_frozen: int, *, bf16: bool) -> float:
    """The setup check: replay_error of the lower `n_frozen` blocks kept and replayed on one seeded batch of random
    tokens (tokens.check_batch), in the training autocast; compare with replay_tolerance(bf16)."""
    vocabulary = peft_model.get_base_model().get_input_embeddings().weight.shape[0]
    check = TensorDataset(*(t.cpu() for t in tokens.check_batch(vocabulary, next(peft_model.parameters()).device)))
    prefix = FrozenPrefix(peft_model, check, n_frozen, batch_size=len(check), bf16=bf16)
    return prefix.replay_error(check, range(len(check)))


def replay_tolerance(bf16: bool) -> float:
    """The largest replay_check_error that is float summation order, not a different computation."""
    return REPLAY_TOLERANCE * (16 if bf16 else 1)

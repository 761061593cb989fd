"""LoRA fine-tuning, under DP-SGD through Opacus or non-private, in one loop.

The heal step of the method. Only the LoRA matrices are trained; every weight of the (pruned)
model stays frozen, so the privacy guarantee covers exactly the parameters that saw private data
and the update is small enough to clip and noise per record.

With `config.dp` set, Opacus does all of DP-SGD (`ppt_core.dp.privacy`): per-record gradients of the
LoRA parameters, clipping of each record's gradient to `max_grad_norm`, Gaussian noise of std
sigma * max_grad_norm on the summed gradient once per logical batch, and its accountant, which turns
(q, sigma, steps) into the epsilon reported after training. Each Poisson logical batch
(`ppt_core.data.batching`) is cut into physical batches that fit in memory; the loop tells the optimizer
which physical batch ends its logical batch with Opacus's public `signal_skip_step`.

Without `dp` the same loader (Poisson at the same q and steps, on an independent stream:
`batching.sampling_seed`), physical batching and loop run with no clipping and no noise, so the only
difference between a DP arm and its non-private twin is the mechanism and its own draw of batches.

Four things make the loop fast without changing a record's gradient, its clipping or the noise. With LoRA
on the last `lora_blocks` blocks only, the frozen blocks below are computed once per record and replayed in
every pass (`ppt_core.dp.frozen_prefix`). Each logical batch is cut into physical batches by width, so the
canaries do not pad to a note's length. The loss is read through the frozen output head a chunk of positions
at a time, on the positions with a target only, instead of from the whole logits (`ppt_core.dp.head_loss`). On a
bf16 device the frozen weights are stored in bf16 once instead of being cast in every pass.

Privacy unit: one record (one note or one canary copy). Each record's loss is the mean next-token
loss over its own real tokens (padding carries label -100 and never counts), so a record's gradient
never depends on the other records of its batch. A DP arm publishes nothing computed from its
training records without noise: its training losses, batch sizes and per-record sample counts stay
with the trainer; its published loss curve is measured on held-out records (`heldout_loss`).

Known trap (opacus#820): a LoRA model that is moved to its device after PEFT wrapping (or after
Opacus attached its hooks) trains with a falling loss and a growing epsilon while the LoRA weights
never move. Here the model is on its device before `get_peft_model`, the optimizer holds exactly the
wrapped model's trainable parameters, and `finetune` refuses to return an adapter that did not move.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from ppt_core.data import batching, tokens
from ppt_core.dp import distributed, frozen_prefix, head_loss, privacy
from ppt_core.dp.privacy import DPConfig
from ppt_core.dp.train_config import TrainConfig, check_config
from ppt_core.machine import precision
from ppt_core.machine.memory import PeakMemory
from ppt_core.models.architectures import blocks_path, decoder_blocks, lora_target_modules
from ppt_core.scoring import evaluation

EPSILON_CURVE_POINTS = 20  # steps at which a DP arm's epsilon curve is read (the progress bar shows the same)


def epsilon_curve_steps(steps: int, points: int = EPSILON_CURVE_POINTS) -> list[int]:
    """The steps, up to `points` of them spread evenly to the last, at which an epsilon curve reads the accountant."""
    return sorted({max(1, round(steps * k / points)) for k in range(1, points + 1)})


@dataclass
class TrainResult:
    """What a fine-tuning run did. Losses are nats per token; `epsilon` is the accountant's after the
    last step (None without DP).

    Trainer-only for a DP arm (computed from training records without noise, never published):
    `losses`, `batch_sizes` and `sample_counts`. Publishable for every arm: `heldout_losses`.
    """

    losses: list[float | None]  # one per logical step: mean over its records; None for an empty batch
    batch_sizes: list[int]  # records in each logical batch
    sample_counts: list[int]  # per training record (in the order of `texts`): logical batches that drew it
    heldout_losses: list[tuple[int, float]]  # (step, mean held-out loss after that step); step 0 = before training
    steps: int
    sample_rate: float
    expected_batch_size: int
    n_records: int
    learning_rate: float = 0.0
    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    accountant: str | None = None
    grad_sample_mode: str | None = None
    secure_mode: bool | None = None
    lora_targets: list[str] = field(default_factory=list)
    trainable_parameters: int = 0
    seconds_per_step: float = 0.0
    seconds_total: float = 0.0
    seconds_heldout_loss: float = 0.0  # of seconds_total: measuring the held-out loss curve and the pass probes
    peak_memory_mb: float = 0.0
    bf16: bool = False
    batches_per_pass: int = 0  # logical batches in one expected pass over the records (1 / q)
    pass_probes: list[tuple[int, list[float]]] = field(default_factory=list)  # (step, pass_probe's values) at
    #                                   step 0 and after every expected pass: publishable (a function of the model)
    implementation_audit: dict | None = None  # what the step hook reported (implementation_audit.TrainingHook)

    @property
    def private(self) -> bool:
        return self.noise_multiplier is not None

    def epsilon_after(self, steps: int) -> float | None:
        """The accountant's epsilon after the first `steps` steps of this run (None without DP)."""
        if not self.private:
            return None
        return privacy.accountant_epsilon(self.noise_multiplier, self.sample_rate, steps, self.delta, self.accountant)

    def epsilon_curve(self, points: int = EPSILON_CURVE_POINTS) -> list[tuple[int, float]]:
        """(step, epsilon spent after that step) at up to `points` steps, from the same accountant."""
        if not self.private:
            return []
        return [(s, self.epsilon_after(s)) for s in epsilon_curve_steps(self.steps, points)]


# --- LoRA ----------------------------------------------------------------------------------------


def lora_model(model, config: TrainConfig, device: torch.device):
    """A deep copy of `model` on `device`, frozen, with fresh LoRA adapters (the only trainable weights)."""
    # Device first, PEFT second (opacus#820): hooks and the optimizer must see the final parameters.
    model = copy.deepcopy(model).to(device=device, dtype=torch.float32)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    attention = training_attention(config, device)
    if attention is not None and attention != model.config._attn_implementation:
        model.set_attn_implementation(attention)
    depth = len(decoder_blocks(model))
    upper = {} if config.lora_blocks is None or config.lora_blocks >= depth else dict(
        layers_to_transform=list(range(depth - config.lora_blocks, depth)),
        layers_pattern=blocks_path(model).rsplit(".", 1)[-1])
    lora = LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=lora_target_modules(model, config.lora_targets), bias="none", task_type="CAUSAL_LM", **upper,
    )
    with warnings.catch_warnings():  # peft 0.21 reads an attribute transformers 5 deprecates; nothing to act on
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, lora)


def training_attention(config: TrainConfig, device: torch.device) -> str | None:
    """The attention implementation a run trains with: "eager" (matmuls and a float32 softmax) for bf16 on a CPU,
    else None (the model's own, sdpa for most). torch's CPU flash attention spends several times its forward's
    time in its backward on the study's short records, so a bf16 step trains faster on eager, a float32 one
    about the same (bench/train_throughput.py's `+sdpa` row measures it side by side). Attention holds no trained
    weights: per-sample gradients, clipping and noise are the same computations either way. A config's
    bf16="auto" settles on the device first (precision.resolve_bf16), as `finetune` settles it."""
    return "eager" if device.type == "cpu" and precision.resolve_bf16(config.bf16, device) else None


# --- the loss of a record ------------------------------------------------------------------------


def record_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean next-token cross-entropy (nats) over each record's own real tokens, in float32.

    Position t predicts token t + 1: the targets are the labels shifted left, the last position's ignored, so
    the log-softmax runs over the vocabulary as the logits lie in memory, one row per position. (Over a
    (B, vocabulary, T) view, the layout cross_entropy takes for sequences, it strides across memory: with
    SmolLM2's 49k vocabulary on a 2-core CPU, its forward and backward took about 30% of a training step and
    1.7 times as long as this.)"""
    targets = tokens.next_token_targets(labels)
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                ignore_index=tokens.IGNORE_INDEX, reduction="none").view(targets.shape)
    return tokens.record_means(per_token, targets)


class RecordLoss(nn.Module):
    """Loss of a batch as Opacus expects it: `reduction` over records of `record_losses`, read from the logits,
    or with `head` (a head_loss.OutputHead) from the final hidden states the forward returns in their place."""

    def __init__(self, reduction: str = "mean", head: head_loss.OutputHead | None = None):
        super().__init__()
        self.reduction, self.head = reduction, head

    def forward(self, outputs, labels):
        losses = record_losses(outputs, labels) if self.head is None else self.head.record_losses(outputs, labels)
        if self.reduction == "none":
            return losses
        return losses.sum() if self.reduction == "sum" else losses.mean()


# --- the objects one run trains with -------------------------------------------------------------


def _lr_lambda(config: TrainConfig, steps: int):
    warmup = round(config.warmup_fraction * steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, steps - warmup)
        if config.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        if config.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


@dataclass
class Training:
    """The objects one run trains with: Opacus-wrapped (DP) or plain (non-private), same loader and loop."""

    peft_model: nn.Module
    module: nn.Module  # what the loop calls: Opacus's GradSampleModule under DP, else peft_model
    optimizer: object  # Opacus DPOptimizer, or batching.VirtualSteps around the same torch optimizer
    criterion: object  # RecordLoss, or Opacus's ghost-clipping wrapper of it
    loader: object  # Poisson logical batches (batching.poisson_loader)
    scheduler: torch.optim.lr_scheduler.LRScheduler
    lora_params: list
    config: TrainConfig
    plan: batching.Schedule
    engine: object = None  # Opacus PrivacyEngine (its accountant) under DP
    world: distributed.World | None = None  # this process's place under torchrun; None in one process
    prefix: frozen_prefix.FrozenPrefix | None = None  # the frozen lower blocks' outputs, replayed (lora_blocks)
    head: head_loss.OutputHead | None = None  # the loss read through the head in chunks (None: from the logits)

    @property
    def sample_rate(self) -> float:
        return self.plan.sample_rate

    @property
    def steps(self) -> int:
        return self.plan.steps


def prepare(peft_model, dataset: TensorDataset, config: TrainConfig, world: distributed.World | None = None,
            prefix: frozen_prefix.FrozenPrefix | None = None, chunked_head: bool = True) -> Training:
    """Wire a LoRA model, its records and the config into a Training (Opacus's make_private under DP), with
    `prefix` (its frozen blocks' cache, `_frozen_prefix`) replayed in every step where given, and, with
    `chunked_head`, the loss read through the frozen head in chunks where the model passes head_loss.install's
    check (`finetune` puts the head back with head_loss.uninstall).

    Under torchrun (`world`), the model goes into Opacus's DPDDP, this process draws its share of every
    Poisson batch, and Opacus gives its DistributedDPOptimizer with the per-process expected batch
    B / world_size (`ppt_core.dp.distributed` explains why the guarantee is the single-process one).
    """
    plan = batching.schedule(len(dataset), config.expected_batch_size, config.epochs)
    head = head_loss.install(peft_model, bf16=config.bf16, logits_losses=record_losses) if chunked_head else None
    seed = batching.sampling_seed(config.seed, private=config.dp is not None)
    lora_params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer_class = torch.optim.SGD if config.optimizer == "sgd" else torch.optim.AdamW
    optimizer = optimizer_class(lora_params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, plan.steps))
    if world is None:
        # A seeded generator of its own, on the private or the non-private stream: a DP arm and its
        # non-private twin draw independent batches. (In secure mode Opacus swaps in its cryptographic one.)
        loader = batching.poisson_loader(dataset, plan, torch.Generator().manual_seed(seed))
        module, virtual_steps, batch_per_process = peft_model, batching.VirtualSteps, plan.expected_batch_size
    else:
        distributed.check_world(world.world_size, len(dataset), config.expected_batch_size)
        loader = distributed.poisson_loader(dataset, plan, world, seed)
        module, virtual_steps = distributed.wrap_model(peft_model), distributed.SummedVirtualSteps
        batch_per_process = plan.expected_batch_size / world.world_size
    criterion, dp = RecordLoss("mean", head), config.dp
    if dp is None:
        return Training(peft_model, module, virtual_steps(optimizer), criterion, loader, scheduler,
                        lora_params, config, plan, world=world, prefix=prefix, head=head)
    sigma = privacy.noise_multiplier(dp, plan.sample_rate, plan.steps)  # for the global (q, steps)
    private = privacy.make_private(module, optimizer, criterion, loader, dp, sigma, batch_per_process)
    if world is not None:
        distributed.check_distributed_optimizer(private.optimizer)
    return Training(peft_model, private.module, private.optimizer, private.criterion, private.loader, scheduler,
                    lora_params, config, plan, private.engine, world, prefix, head)


# --- the loop ------------------------------------------------------------------------------------


def physical_step(training: Training, batch) -> float:
    """Forward and backward one physical batch (gradients accumulate until the optimizer steps);
    return the sum of its records' losses (nats per token)."""
    config, dp = training.config, training.config.dp
    device = training.lora_params[0].device
    input_ids, attention_mask, labels = (tensor.to(device) for tensor in batch)
    n = len(input_ids)
    if n == 0:
        _empty_batch_gradients(training.lora_params, dp)
        return 0.0
    hidden_out = training.head.hidden_out() if training.head is not None else contextlib.nullcontext()
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16), hidden_out:
        outputs = training.module(input_ids=input_ids, attention_mask=attention_mask).logits  # or hidden states
    if dp is None:
        # Sum over records / expected batch: the scale DP-SGD's "mean" reduction uses.
        loss = RecordLoss("sum", training.head)(outputs, labels) / training.plan.expected_batch_size
        loss_sum = float(loss.detach()) * training.plan.expected_batch_size
    else:
        loss = training.criterion(outputs, labels)
        loss_sum = float(loss.item()) * n
    loss.backward()
    if config.bf16 and dp is not None:
        _grad_samples_to_float32(training.lora_params)
    return loss_sum


def logical_step(training: Training, indices: list[int], lengths=None) -> float:
    """One logical batch (dataset rows `indices`, shortest first): cut into physical batches (by width when
    `lengths` gives every record's tokens, else by count: batching.physical_batches), each forward and backward
    with the frozen blocks replayed where they are cached, signalled to the optimizer, which steps once at the
    end; return the sum of the records' losses."""
    loss_sum, chunks = 0.0, batching.physical_batches(indices, training.config.physical_batch_size, lengths)
    for i, chunk in enumerate(chunks):
        replay = training.prefix.replaying(chunk) if training.prefix is not None else contextlib.nullcontext()
        with replay:
            loss_sum += physical_step(training, batching.collate(training.loader.dataset, chunk))
        training.optimizer.signal_skip_step(do_skip=i < len(chunks) - 1)
        training.optimizer.step()
        training.optimizer.zero_grad()
    return loss_sum


@torch.no_grad()
def heldout_loss(training: Training, heldout: TensorDataset) -> float:
    """Mean over `heldout` records of each record's loss (nats per token) under the current adapter:
    eval mode, no gradient, the training autocast. Touches no training record."""
    device, config = training.lora_params[0].device, training.config
    training.peft_model.eval()
    losses = []
    for start in range(0, len(heldout), config.physical_batch_size):
        rows = range(start, min(len(heldout), start + config.physical_batch_size))
        input_ids, attention_mask, labels = (t.to(device) for t in batching.collate(heldout, rows))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16):
            logits = training.peft_model(input_ids=input_ids, attention_mask=attention_mask).logits
        losses.append(record_losses(logits, labels))
    training.module.train()
    return float(torch.cat(losses).mean())


@dataclass
class StepLog:
    """What `run_steps` saw: per logical step, per training record, and the held-out curve."""

    losses: list  # mean training loss per logical step (None: empty batch); trainer-only under DP
    batch_sizes: list  # trainer-only under DP
    sample_counts: list  # per record: logical batches that drew it; trainer-only
    heldout_losses: list  # (step, held-out loss)
    pass_probes: list  # (step, values of the pass probe): step 0 and after every expected pass
    seconds: float
    seconds_heldout: float
    peak_mb: float


def run_steps(training: Training, steps: int | None = None, heldout: TensorDataset | None = None,
              pass_probe=None, step_hook=None) -> StepLog:
    """Train `steps` logical steps (default: the schedule's), measuring the held-out loss curve on `heldout`
    and calling `pass_probe(peft_model, frozen_blocks)` (eval mode, no gradient) before the first step and after
    every expected pass (every `batches_per_pass` steps, and the last step), and `step_hook.step(training)`
    after every logical step.

    Each Poisson logical batch is cut into physical batches of similar widths (batching.physical_batches);
    every physical batch is signalled to the optimizer (skip: not the last of its logical batch), so it clips
    and sums them and steps once per logical batch. An empty logical batch still makes a (noise-only) DP step.
    """
    config = training.config
    steps = training.steps if steps is None else steps
    points = config.loss_curve_points if heldout is not None else 0
    curve_at = {round(steps * k / points) for k in range(points + 1)} if points else set()
    probe_at = {0, steps} | set(range(0, steps + 1, training.plan.batches_per_pass)) if pass_probe else set()
    log = StepLog([], [], [0] * training.plan.n_records, [], [], 0.0, 0.0, 0.0)
    bar = tqdm(total=steps, desc="DP-LoRA" if config.dp else "LoRA", disable=not config.progress, leave=False)
    lengths = training.loader.dataset.tensors[1].sum(1).tolist()  # tokens per record: physical batches by width
    started = time.perf_counter()
    with PeakMemory(training.lora_params[0].device) as memory:
        if 0 in curve_at:
            _measure_heldout(training, heldout, 0, log)
        if 0 in probe_at:
            _probe(training, pass_probe, 0, log)
        training.module.train()
        for step, indices in enumerate(batching.logical_batches(training.loader, steps), start=1):
            loss_sum = logical_step(training, indices, lengths)
            training.scheduler.step()
            if step_hook is not None:
                step_hook.step(training)
            for i in indices:
                log.sample_counts[i] += 1
            log.losses.append(loss_sum / len(indices) if indices else None)
            log.batch_sizes.append(len(indices))
            if step in curve_at:
                _measure_heldout(training, heldout, step, log)
            if step in probe_at:
                _probe(training, pass_probe, step, log)
            bar.update()
            bar.set_postfix(_progress(training, log, step, steps))
    bar.close()
    log.seconds, log.peak_mb = time.perf_counter() - started, memory.peak_mb
    if training.world is not None:  # the run's log from every process's local batches; times stay this process's
        log.losses, log.batch_sizes, log.sample_counts = distributed.sum_over_processes(
            log.losses, log.batch_sizes, log.sample_counts)
    return log


def _measure_heldout(training: Training, heldout: TensorDataset, step: int, log: StepLog) -> None:
    started = time.perf_counter()
    log.heldout_losses.append((step, heldout_loss(training, heldout)))
    log.seconds_heldout += time.perf_counter() - started


def _probe(training: Training, pass_probe, step: int, log: StepLog) -> None:
    """pass_probe's values on the current adapter, in eval mode without gradients (its time counts with the
    held-out curve's: neither is training). The probe is told how many lower blocks training replays (None:
    none), so it may replay them too."""
    started = time.perf_counter()
    training.peft_model.eval()
    with torch.no_grad():
        frozen_blocks = training.prefix.n_frozen if training.prefix is not None else None
        values = [float(v) for v in pass_probe(training.peft_model, frozen_blocks)]
    training.module.train()
    log.pass_probes.append((step, values))
    log.seconds_heldout += time.perf_counter() - started


def _progress(training: Training, log: StepLog, step: int, steps: int) -> dict:
    """The progress bar's postfix: held-out loss and epsilon spent. Never a DP arm's training loss:
    executed notebooks keep the bar's text."""
    postfix = {}
    if log.heldout_losses:
        postfix["heldout"] = f"{log.heldout_losses[-1][1]:.3f}"
    if training.config.dp is None and log.losses[-1] is not None:
        postfix["loss"] = f"{log.losses[-1]:.3f}"
    dp = training.config.dp
    # at the epsilon curve's steps: privacy.composed_epsilon keeps each answer, so the curve costs nothing more
    if dp is not None and training.config.progress and step in epsilon_curve_steps(steps):
        sigma = float(training.optimizer.noise_multiplier)
        postfix["eps"] = f"{privacy.accountant_epsilon(sigma, training.sample_rate, step, dp.delta, dp.accountant):.2f}"
    return postfix


def finetune(model, tokenizer, texts, config: TrainConfig, heldout_texts=None, pass_probe=None, step_hook=None,
             family=None):
    """(peft_model, TrainResult): LoRA fine-tuned copy of `model` on `texts` (`model` is left untouched).

    With `config.dp`, DP-SGD through Opacus at (target_epsilon, delta); else the same loop without
    clipping or noise. The held-out loss curve is measured on the first `config.loss_curve_records` of
    `heldout_texts` (none when None). `pass_probe(peft_model, frozen_blocks) -> values` (e.g. the audit
    canaries' scores) is called before training and after every expected pass: TrainResult.pass_probes.
    `step_hook` (e.g. implementation_audit.TrainingHook) is told `start(training)` before the first step,
    `step(training)` after each logical step and `finish(training)` after the last, whose answer is
    TrainResult.implementation_audit; it must leave the run's batches, noise and adapter as they would be.
    `family`: a dict the caller keeps for the runs that start from `model` (the arms of one family), where the
    frozen blocks' outputs on the records are computed once and replayed by every later run (FrozenPrefix's `kept`).
    Losses in nats per token; seconds per logical step; peak memory in MB.
    Inside a torchrun process group, each process trains on its share of every Poisson batch
    (`ppt_core.dp.distributed`) and every process returns the same adapter and guarantee.
    """
    texts, world = list(texts), distributed.current_world()  # world: None unless started by torchrun
    check_config(config, len(texts), model)
    if world is not None:
        distributed.check_world(world.world_size, len(texts), config.expected_batch_size)
        config = replace(config, progress=config.progress and world.main)
    device = torch.device(config.device) if config.device else next(model.parameters()).device
    config = replace(config, bf16=precision.resolve_bf16(config.bf16, device))  # "auto" settles on the device
    if config.dp is not None:  # the accountant that can calibrate this schedule (rdp for a tiny σ)
        plan = batching.schedule(len(texts), config.expected_batch_size, config.epochs)
        config = replace(config, dp=privacy.for_schedule(config.dp, plan.sample_rate, plan.steps))
    torch.manual_seed(config.seed)
    peft_model = lora_model(model, config, device)
    float32_weights = evaluation.frozen_weights_in_bf16(peft_model) if config.bf16 else []
    dataset = batching.record_dataset(tokenizer, texts, config.max_length)
    training = prepare(peft_model, dataset, config, world, _frozen_prefix(peft_model, dataset, config, family))
    heldout = None if heldout_texts is None or (world and not world.main) else batching.record_dataset(
        tokenizer, list(heldout_texts)[: config.loss_curve_records], config.max_length)
    initial = [p.detach().clone() for p in training.lora_params]
    probe = pass_probe if world is None or world.main else None
    if step_hook is not None:
        step_hook.start(training)
    log = run_steps(training, heldout=heldout, pass_probe=probe, step_hook=step_hook)
    hook_report = step_hook.finish(training) if step_hook is not None else None
    if world is not None:  # every process took every step: the replicas must agree
        distributed.check_replicas_agree(training.lora_params)
    _check_adapter_moved(training.lora_params, initial)
    head_loss.uninstall(peft_model, training.head)
    evaluation.restore_weights(float32_weights)  # the returned model (and what merges into it) is float32 again
    dp = config.dp
    epsilon = privacy.spent_epsilon(training.engine, dp, training.sample_rate, training.steps) if dp else None
    if dp is not None:
        training.module.cleanup()  # remove Opacus hooks: the returned PEFT model is a plain module again
    peft_model.eval()
    result = TrainResult(
        losses=log.losses, batch_sizes=log.batch_sizes, sample_counts=log.sample_counts,
        heldout_losses=log.heldout_losses, steps=len(log.losses), sample_rate=training.sample_rate,
        expected_batch_size=training.plan.expected_batch_size, n_records=len(texts),
        learning_rate=config.learning_rate, epsilon=epsilon,
        delta=dp.delta if dp else None, noise_multiplier=float(training.optimizer.noise_multiplier) if dp else None,
        max_grad_norm=dp.max_grad_norm if dp else None, accountant=dp.accountant if dp else None,
        grad_sample_mode=dp.grad_sample_mode if dp else None, secure_mode=dp.secure_mode if dp else None,
        lora_targets=lora_target_modules(model, config.lora_targets),
        trainable_parameters=sum(p.numel() for p in training.lora_params),
        seconds_per_step=log.seconds / max(1, len(log.losses)), seconds_total=log.seconds,
        seconds_heldout_loss=log.seconds_heldout, peak_memory_mb=log.peak_mb, bf16=config.bf16,
        batches_per_pass=training.plan.batches_per_pass, pass_probes=log.pass_probes,
        implementation_audit=hook_report,
    )
    return peft_model, result


def _frozen_prefix(peft_model, dataset: TensorDataset, config: TrainConfig,
                   family: dict | None = None) -> frozen_prefix.FrozenPrefix | None:
    """The cache of the blocks below the adapted ones (LoRA on the last `config.lora_blocks`), or None: every
    block adapted, dropout in the frozen part, or a model whose replayed forward differs (said, not hidden)."""
    depth = len(decoder_blocks(peft_model.get_base_model()))
    if config.lora_blocks is None or config.lora_blocks >= depth:
        return None
    n_frozen = depth - config.lora_blocks
    dropout = frozen_prefix.frozen_dropout(peft_model.get_base_model(), n_frozen)
    if dropout:
        print(f"the {n_frozen} frozen blocks run in every pass (not cached): dropout is on ({', '.join(dropout)})")
        return None
    try:
        error = frozen_prefix.replay_check_error(peft_model, n_frozen, bf16=config.bf16)
    except Exception as err:  # noqa: BLE001 - a block stack the stand-ins cannot replay: the uncached loop runs
        print(f"the {n_frozen} frozen blocks run in every pass (not cached): replaying them fails on this model "
              f"({type(err).__name__}: {' '.join(str(err).split())[:200]})")
        return None
    if not error <= frozen_prefix.replay_tolerance(config.bf16):
        print(f"the {n_frozen} frozen blocks run in every pass (not cached): this model's replayed forward "
              f"differs from its computed one by {error:.3g} in a logit")
        return None
    return frozen_prefix.FrozenPrefix(peft_model, dataset, n_frozen, batch_size=config.physical_batch_size,
                                      bf16=config.bf16, kept=family)


def _empty_batch_gradients(lora_params, dp: DPConfig | None) -> None:
    """An empty Poisson batch: no forward pass (a model cannot run on zero rows); each LoRA
    parameter gets the gradients of zero records, so DP-SGD's step is noise only and still counted."""
    for p in lora_params:
        if dp is not None and dp.grad_sample_mode == "hooks":
            p.grad_sample = p.new_zeros((0, *p.shape))
        elif p.grad is None:
            p.grad = torch.zeros_like(p)


def _grad_samples_to_float32(lora_params) -> None:
    """Under bf16 autocast the hooks compute per-record gradients in bf16; Opacus would then measure
    their norms in bf16 and could let a record through up to ~0.4% above the clip bound. Clipping
    float32 copies makes the bound exact for the values that are summed."""
    for p in lora_params:
        if getattr(p, "grad_sample", None) is not None and p.grad_sample.dtype != torch.float32:
            p.grad_sample = p.grad_sample.float()


def _check_adapter_moved(lora_params, initial) -> None:
    """Refuse an adapter that training did not change (the opacus#820 pattern)."""
    moved = max(float((p.detach() - p0).abs().max()) for p, p0 in zip(lora_params, initial))
    if not moved > 0:
        raise RuntimeError(
            "training finished but no LoRA weight changed (max |delta| = 0): the optimizer or Opacus hooks are "
            "not attached to the model's LoRA parameters (see opacus#820; move the model to its device before "
            "get_peft_model)"
        )

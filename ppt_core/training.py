"""LoRA fine-tuning, under DP-SGD through Opacus or non-private, in one loop.

The heal step of the method. Only the LoRA matrices are trained; every weight of the (pruned)
model stays frozen, so the privacy guarantee covers exactly the parameters that saw private data
and the update is small enough to clip and noise per record.

With `config.dp` set, Opacus does all of DP-SGD: Poisson sampling of each logical batch (every
record joins independently with probability q, so batches vary in size and can be empty),
per-record gradients of the LoRA parameters, clipping of each record's gradient to
`max_grad_norm`, Gaussian noise of std sigma * max_grad_norm on the summed gradient, and its
accountant, which turns (q, sigma, steps) into the epsilon reported after training.
`BatchMemoryManager` splits a logical batch into physical batches that fit in memory (virtual steps).

Without `dp` the very same loader (Poisson), physical batching and loop run with no clipping and no
noise, so the only difference between a DP arm and its non-private twin is the mechanism.

Privacy unit: one record (one note or one canary copy). Each record's loss is the mean next-token
loss over its own real tokens (padding carries label -100 and never counts), so a record's gradient
never depends on the other records of its batch.

Known trap (opacus#820): a LoRA model that is moved to its device after PEFT wrapping (or after
Opacus attached its hooks) trains with a falling loss and a growing epsilon while the LoRA weights
never move. Here the model is on its device before `get_peft_model`, the optimizer holds exactly the
wrapped model's trainable parameters, and `finetune` refuses to return an adapter that did not move.
"""

from __future__ import annotations

import copy
import functools
import math
import threading
import time
import warnings
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset
from tqdm.auto import tqdm

from ppt_core import arms, artifacts, tokens
from ppt_core.architectures import LORA_TARGET_SETS, lora_target_modules  # noqa: F401 (training.<name> stays importable)

ACCOUNTANTS = ("prv", "rdp")
# Opacus registers full backward hooks on the LoRA layers; the frozen layers feeding them carry no
# input gradient, so torch warns on every backward pass. Harmless here: per-sample gradients come from
# the hooks' grad_output, which is always there.
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")

GRAD_SAMPLE_MODES = ("hooks", "ghost")
LR_SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd")
BATCH_FIELDS = ("input_ids", "attention_mask", "labels")

class TrainingConfigError(ValueError):
    """A fine-tuning setting that cannot work (or cannot keep its privacy promise)."""


@dataclass
class DPConfig:
    """DP-SGD settings. The guarantee: (target_epsilon, delta)-DP for each training record.

    target_epsilon: privacy budget for the whole training run (> 0; smaller is more private).
    delta: probability the epsilon bound may fail; must be < 1/N_train (a record-level leak of
        one whole record among N must stay unlikely).
    max_grad_norm: clipping bound C on each record's gradient (L2 over all LoRA parameters).
    accountant: "prv" (tight, numerical) or "rdp" (Renyi DP, a looser upper bound).
    grad_sample_mode: "hooks" (per-record gradients materialised) or "ghost" (ghost clipping:
        per-record gradient norms without materialising them, two backward passes).
    """

    target_epsilon: float
    delta: float
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    grad_sample_mode: str = "hooks"


@dataclass
class TrainConfig:
    """LoRA fine-tuning settings shared by the private and the non-private arms.

    lora_targets: "query+value", "attention", "attention+mlp", or a list of module names (e.g. ["q_proj"]).
    optimizer: "adamw" or "sgd" (plain SGD makes an update exactly lr * gradient: the tests use it).
    epochs: passes over the data in expectation (a float: steps = int(epochs / q)).
    expected_batch_size: records per logical step in expectation (Poisson sampling, q = 1/ceil(N/B)).
    physical_batch_size: records per forward/backward pass; larger logical batches are split.
    bf16: bf16 autocast for the forward/backward; LoRA weights, per-record gradients, clipping,
        noise and the optimizer stay float32.
    """

    lora_rank: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    lora_targets: str | list[str] = "attention"
    epochs: float = 1.0
    learning_rate: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    lr_schedule: str = "linear"
    warmup_fraction: float = 0.0
    expected_batch_size: int = 32
    physical_batch_size: int = 8
    max_length: int = 192
    seed: int = 0
    bf16: bool = False
    device: str | None = None
    progress: bool = True
    dp: DPConfig | None = None


@dataclass
class TrainResult:
    """What a fine-tuning run did. Losses are nats per token (mean over a step's records);
    `epsilon` is the accountant's after the last step (None without DP)."""

    losses: list[float | None]  # one per logical step; None for an empty Poisson batch
    batch_sizes: list[int]
    steps: int
    sample_rate: float
    expected_batch_size: int
    n_records: int
    epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    accountant: str | None = None
    grad_sample_mode: str | None = None
    lora_targets: list[str] = field(default_factory=list)
    trainable_parameters: int = 0
    seconds_per_step: float = 0.0
    seconds_total: float = 0.0
    peak_memory_mb: float = 0.0
    bf16: bool = False

    def epsilon_curve(self, points: int = 20) -> list[tuple[int, float]]:
        """(step, epsilon spent after that step) at up to `points` steps, from the same accountant."""
        if self.noise_multiplier is None:
            return []
        marks = sorted({max(1, round(self.steps * k / points)) for k in range(1, points + 1)})
        return [(s, _epsilon(self.accountant, self.noise_multiplier, self.sample_rate, s, self.delta)) for s in marks]


# --- configuration from a profile, and the checks ------------------------------------------------


def config_from_params(params: dict, epsilon: float | None = None, **overrides) -> TrainConfig:
    """The TrainConfig of a profile's arm: non-private when `epsilon` is None, else DP at `epsilon`."""
    dp = None
    if epsilon is not None:
        dp = DPConfig(
            target_epsilon=float(epsilon), delta=float(params["delta"]), max_grad_norm=float(params["max_grad_norm"]),
            accountant=params["accountant"], grad_sample_mode=params["grad_sample_mode"],
        )
    config = TrainConfig(
        lora_rank=int(params["lora_rank"]), lora_alpha=float(params["lora_alpha"]),
        lora_dropout=float(params["lora_dropout"]), lora_targets=params["lora_targets"],
        epochs=float(params["epochs"]), learning_rate=float(params["learning_rate"]),
        lr_schedule=params.get("lr_schedule", "linear"), warmup_fraction=float(params.get("warmup_fraction", 0.0)),
        expected_batch_size=int(params["expected_batch_size"]), physical_batch_size=int(params["physical_batch_size"]),
        max_length=int(params.get("train_max_length") or params["max_length"]), seed=int(params["seed"]),
        bf16=bool(params["bf16"]), device=None if params.get("device") in (None, "auto") else params["device"], dp=dp,
    )
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def schedule(config: TrainConfig, n_records: int) -> tuple[float, int]:
    """(sample rate q, logical steps) for `n_records`, computed as Opacus does: q = 1/ceil(N/B), steps = int(epochs/q)."""
    sample_rate = 1 / math.ceil(n_records / config.expected_batch_size)
    return sample_rate, int(config.epochs / sample_rate)


def check_config(config: TrainConfig, n_records: int, model=None) -> None:
    """Stop with one clear message on a setting that cannot train (or cannot keep its DP promise)."""
    if n_records < 2:
        raise TrainingConfigError(f"fine-tuning needs at least 2 training records (got {n_records})")
    positive = dict(lora_rank=config.lora_rank, lora_alpha=config.lora_alpha, epochs=config.epochs,
                    learning_rate=config.learning_rate, expected_batch_size=config.expected_batch_size,
                    physical_batch_size=config.physical_batch_size, max_length=config.max_length)
    for name, value in positive.items():
        if not value > 0:
            raise TrainingConfigError(f"{name} must be > 0 (got {value})")
    if config.max_length < 2:
        raise TrainingConfigError(f"max_length must be >= 2 tokens to have a next token to predict (got {config.max_length})")
    if not 0 <= config.lora_dropout < 1:
        raise TrainingConfigError(f"lora_dropout must be in [0, 1) (got {config.lora_dropout})")
    if config.optimizer not in OPTIMIZERS:
        raise TrainingConfigError(f"optimizer must be one of {OPTIMIZERS} (got {config.optimizer!r})")
    if config.lr_schedule not in LR_SCHEDULES:
        raise TrainingConfigError(f"lr_schedule must be one of {LR_SCHEDULES} (got {config.lr_schedule!r})")
    if config.expected_batch_size > n_records:
        raise TrainingConfigError(
            f"expected_batch_size ({config.expected_batch_size}) is larger than the {n_records} training records: "
            f"use expected_batch_size <= {n_records}"
        )
    sample_rate, steps = schedule(config, n_records)
    if steps < 1:
        raise TrainingConfigError(
            f"epochs={config.epochs} gives no training step at sample rate {sample_rate:.4g}: use epochs >= {sample_rate:.4g}"
        )
    if model is not None:
        lora_target_modules(model, config.lora_targets)
    dp = config.dp
    if dp is None:
        return
    if not dp.target_epsilon > 0:
        raise TrainingConfigError(f"target_epsilon must be > 0 (got {dp.target_epsilon})")
    if not 0 < dp.delta < 1 / n_records:
        raise TrainingConfigError(
            f"delta must be in (0, 1/N_train) = (0, {1 / n_records:.3g}) for {n_records} records (got {dp.delta}): "
            f"use e.g. delta={_round_down_power_of_ten(1 / n_records):g}"
        )
    if config.bf16 and dp.grad_sample_mode == "ghost":
        raise TrainingConfigError(
            "bf16=True works with grad_sample_mode='hooks' only: ghost clipping measures per-record gradient norms "
            "inside the bf16 backward pass, where the clip bound would not be exact; use bf16=False or 'hooks'"
        )
    if not dp.max_grad_norm > 0:
        raise TrainingConfigError(f"max_grad_norm must be > 0 (got {dp.max_grad_norm})")
    if dp.accountant not in ACCOUNTANTS:
        raise TrainingConfigError(f"accountant must be one of {ACCOUNTANTS} (got {dp.accountant!r})")
    if dp.grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise TrainingConfigError(f"grad_sample_mode must be one of {GRAD_SAMPLE_MODES} (got {dp.grad_sample_mode!r})")
    noise_multiplier(dp, sample_rate, steps)  # raises when the target cannot be reached


def check_params(params: dict) -> None:
    """The profile's fine-tuning settings are usable for its training-set size (before anything runs)."""
    from ppt_core import data

    for arm in params["train_arms"]:
        if arm not in ("full", "pruned"):
            raise TrainingConfigError(f"train_arms may hold 'full' and 'pruned' (got {arm!r})")
    if params["lora_targets"] not in LORA_TARGET_SETS and not isinstance(params["lora_targets"], list):
        raise TrainingConfigError(
            f"lora_targets must be one of {LORA_TARGET_SETS} or a list of module names (got {params['lora_targets']!r})"
        )
    n_records = data.train_size(params)
    for epsilon in [None] + list(params["epsilons"]):
        check_config(config_from_params(params, epsilon), n_records)


@functools.lru_cache(maxsize=256)
def _noise_multiplier(target_epsilon, delta, sample_rate, steps, accountant) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PRV warns about its own numerical error bounds
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=sample_rate, steps=steps, accountant=accountant))


def noise_multiplier(dp: DPConfig, sample_rate: float, steps: int) -> float:
    """Opacus's noise multiplier sigma reaching (target_epsilon, delta) after `steps` at rate q."""
    try:
        return _noise_multiplier(dp.target_epsilon, dp.delta, sample_rate, steps, dp.accountant)
    except ValueError as err:
        raise TrainingConfigError(
            f"target_epsilon={dp.target_epsilon} cannot be reached with the {dp.accountant} accountant "
            f"for {steps} steps at sample rate {sample_rate:.4g} and delta={dp.delta} ({err}): raise target_epsilon, "
            "train fewer steps (epochs) or use the prv accountant"
        ) from err


def _epsilon(accountant: str, sigma: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of `steps` Poisson-subsampled Gaussian steps, from a fresh Opacus accountant."""
    from opacus.accountants import create_accountant

    fresh = create_accountant(mechanism=accountant)
    fresh.history = [(sigma, sample_rate, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fresh.get_epsilon(delta=delta))


def _round_down_power_of_ten(x: float) -> float:
    return 10 ** math.floor(math.log10(x) - 1e-9)


# --- LoRA ----------------------------------------------------------------------------------------


def _lora_model(model, config: TrainConfig, device: torch.device):
    """A deep copy of `model` on `device`, frozen, with fresh LoRA adapters (the only trainable weights)."""
    # Device first, PEFT second (opacus#820): hooks and the optimizer must see the final parameters.
    model = copy.deepcopy(model).to(device=device, dtype=torch.float32)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    lora = LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=lora_target_modules(model, config.lora_targets), bias="none", task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


# --- data: Poisson-sampled padded batches ---------------------------------------------------------


def _record_dataset(tokenizer, texts, max_length: int) -> TensorDataset:
    """One (input_ids, attention_mask, labels) row of `max_length` tokens per record (labels -100 = padding)."""
    encoded = tokens.encode(tokenizer, list(texts), max_length)
    width = encoded["input_ids"].shape[1]
    pad = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "labels": tokens.IGNORE_INDEX}
    # Equal widths (and tuples, not dicts) let Opacus build correctly shaped empty batches;
    # _collate trims each batch back to the columns it uses.
    return TensorDataset(*(F.pad(encoded[k], (0, max_length - width), value=pad[k]) for k in BATCH_FIELDS))


def _collate(records: list[tuple]) -> tuple:
    """Stack records and trim the padding columns no record of this batch uses."""
    input_ids, attention_mask, labels = (torch.stack(column) for column in zip(*records))
    width = max(1, int(attention_mask.sum(1).max()))
    return input_ids[:, :width], attention_mask[:, :width], labels[:, :width]


class _ShortRecordsTogether(Sampler):
    """Poisson-sampled logical batches, each with its records ordered by token count.

    BatchMemoryManager cuts a logical batch into physical batches in order, so short records (the
    canaries) share physical batches instead of being padded to a note's length (8.5% fewer padded
    tokens on the quick data). DP-SGD computes the same thing in any order: every record's clipped
    gradient is summed over the logical batch and the noise is added once per logical batch.
    """

    def __init__(self, logical_batches: Sampler, lengths: torch.Tensor):
        self.logical_batches, self.lengths = logical_batches, lengths.tolist()

    def __iter__(self):
        for batch in self.logical_batches:
            yield sorted(batch, key=self.lengths.__getitem__)

    def __len__(self) -> int:
        return len(self.logical_batches)


def _short_records_together(loader: DataLoader) -> DataLoader:
    lengths = loader.dataset.tensors[1].sum(1)  # real tokens per record (attention mask)
    return DataLoader(loader.dataset, batch_sampler=_ShortRecordsTogether(loader.batch_sampler, lengths),
                      collate_fn=loader.collate_fn, generator=loader.generator)


def record_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) mean next-token cross-entropy (nats) over each record's own real tokens."""
    targets = labels[:, 1:]
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets,
                                ignore_index=tokens.IGNORE_INDEX, reduction="none")
    real = (targets != tokens.IGNORE_INDEX).sum(1).clamp(min=1)
    return per_token.sum(1) / real


class RecordLoss(nn.Module):
    """Loss of a batch as Opacus expects it: `reduction` over records of `record_losses`."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits, labels):
        losses = record_losses(logits, labels)
        if self.reduction == "none":
            return losses
        return losses.sum() if self.reduction == "sum" else losses.mean()


class _VirtualSteps:
    """The non-private twin of Opacus's DPOptimizer virtual steps: gradients add up over the physical
    batches of one logical batch (BatchMemoryManager signals which is last) and one step is taken."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.original_optimizer = optimizer
        self._skip = deque()
        self._is_last_step_skipped = False

    def signal_skip_step(self, do_skip: bool = True) -> None:
        self._skip.append(do_skip)

    def step(self) -> None:
        self._is_last_step_skipped = bool(self._skip.popleft()) if self._skip else False
        if not self._is_last_step_skipped:
            self.original_optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not self._is_last_step_skipped:
            self.original_optimizer.zero_grad(set_to_none=set_to_none)


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


class _PeakMemory:
    """Peak memory while the block runs, in MB: CUDA allocations, or the process's resident set on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, process.memory_info().rss / 2**20)
            self._stop.wait(0.05)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, psutil.Process().memory_info().rss / 2**20)


# --- the loop ------------------------------------------------------------------------------------


@dataclass
class Training:
    """The objects one run trains with: Opacus-wrapped (DP) or plain (non-private), same loader and loop."""

    peft_model: nn.Module
    module: nn.Module  # what the loop calls: Opacus's GradSampleModule under DP, else peft_model
    optimizer: object  # Opacus DPOptimizer, or _VirtualSteps around the same torch optimizer
    criterion: object  # RecordLoss, or Opacus's ghost-clipping wrapper of it
    loader: DataLoader  # Poisson-sampled logical batches
    scheduler: torch.optim.lr_scheduler.LRScheduler
    lora_params: list
    config: TrainConfig
    steps: int
    sample_rate: float
    engine: object = None  # Opacus PrivacyEngine (its accountant) under DP


def prepare(peft_model, dataset: TensorDataset, config: TrainConfig) -> Training:
    """Wire a LoRA model, its records and the config into a Training (Opacus's make_private_with_epsilon under DP)."""
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    sample_rate, steps = schedule(config, len(dataset))
    lora_params = [p for p in peft_model.parameters() if p.requires_grad]
    loader = DataLoader(dataset, batch_size=config.expected_batch_size, collate_fn=_collate)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(lora_params, lr=config.learning_rate, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(lora_params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, steps))
    criterion, dp = RecordLoss("mean"), config.dp
    if dp is None:
        loader = DPDataLoader.from_data_loader(loader)  # the same Poisson sampler, no privacy machinery
        return Training(peft_model, peft_model, _VirtualSteps(optimizer), criterion, _short_records_together(loader), scheduler,
                        lora_params, config, steps, sample_rate)
    engine = PrivacyEngine(accountant=dp.accountant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns that secure_mode is off (we want seeded, reproducible noise)
        private = engine.make_private_with_epsilon(
            module=peft_model, optimizer=optimizer, data_loader=loader, criterion=criterion,
            target_epsilon=dp.target_epsilon, target_delta=dp.delta, epochs=config.epochs,
            max_grad_norm=dp.max_grad_norm, grad_sample_mode=dp.grad_sample_mode, poisson_sampling=True,
        )
    if dp.grad_sample_mode == "ghost":
        module, optimizer, criterion, loader = private
    else:
        module, optimizer, loader = private
    return Training(peft_model, module, optimizer, criterion, _short_records_together(loader), scheduler,
                    lora_params, config, steps, sample_rate, engine)


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
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=config.bf16):
        logits = training.module(input_ids=input_ids, attention_mask=attention_mask).logits
    if dp is None:
        # Sum over records / expected batch: the scale DP-SGD's "mean" reduction uses.
        loss = RecordLoss("sum")(logits, labels) / config.expected_batch_size
        loss_sum = float(loss.detach()) * config.expected_batch_size
    else:
        loss = training.criterion(logits, labels)
        loss_sum = float(loss.item()) * n
    loss.backward()
    if config.bf16 and dp is not None:
        _grad_samples_to_float32(training.lora_params)
    return loss_sum


def run_steps(training: Training, steps: int | None = None) -> tuple[list, list, float, float]:
    """Train `steps` logical steps (default: the schedule's); return (losses, batch sizes, seconds, peak MB).

    Each logical (Poisson) batch is split into physical batches by Opacus's BatchMemoryManager; the
    optimizer steps once per logical batch. An empty logical batch still makes a (noise-only) DP step.
    """
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    config, dp, optimizer = training.config, training.config.dp, training.optimizer
    steps = training.steps if steps is None else steps
    device = training.lora_params[0].device
    losses, batch_sizes = [], []
    step_loss, step_records = 0.0, 0
    bar = tqdm(total=steps, desc="DP-LoRA" if dp else "LoRA", disable=not config.progress, leave=False)
    training.module.train()
    started = time.perf_counter()
    with _PeakMemory(device) as memory, BatchMemoryManager(
        data_loader=training.loader, max_physical_batch_size=config.physical_batch_size, optimizer=optimizer
    ) as physical_loader:
        while len(losses) < steps:
            for batch in physical_loader:
                step_loss += physical_step(training, batch)
                step_records += len(batch[0])
                optimizer.step()
                last_skipped = optimizer._is_last_step_skipped  # True: a physical batch inside a logical one
                optimizer.zero_grad()
                if last_skipped:
                    continue
                training.scheduler.step()
                losses.append(step_loss / step_records if step_records else None)
                batch_sizes.append(step_records)
                step_loss, step_records = 0.0, 0
                bar.update()
                postfix = {"loss": "-" if losses[-1] is None else f"{losses[-1]:.3f}"}
                show_epsilon = config.progress and training.engine is not None and optimizer.noise_multiplier > 0
                if show_epsilon and (len(losses) % max(1, steps // 10) == 0 or len(losses) == steps):
                    postfix["eps"] = f"{_engine_epsilon(training.engine, dp.delta):.2f}"
                bar.set_postfix(postfix)
                if len(losses) == steps:
                    break
    bar.close()
    return losses, batch_sizes, time.perf_counter() - started, memory.peak_mb


def finetune(model, tokenizer, texts, config: TrainConfig):
    """(peft_model, TrainResult): LoRA fine-tuned copy of `model` on `texts` (`model` is left untouched).

    With `config.dp`, DP-SGD through Opacus at (target_epsilon, delta); else the same loop without
    clipping or noise. Losses in nats per token; seconds per logical step; peak memory in MB.
    """
    texts = list(texts)
    check_config(config, len(texts), model)
    device = torch.device(config.device) if config.device else next(model.parameters()).device
    torch.manual_seed(config.seed)
    peft_model = _lora_model(model, config, device)
    training = prepare(peft_model, _record_dataset(tokenizer, texts, config.max_length), config)
    initial = [p.detach().clone() for p in training.lora_params]
    losses, batch_sizes, seconds, peak_mb = run_steps(training)
    _check_adapter_moved(training.lora_params, initial)
    dp = config.dp
    if dp is not None:
        training.module.cleanup()  # remove Opacus hooks: the returned PEFT model is a plain module again
    peft_model.eval()
    result = TrainResult(
        losses=losses, batch_sizes=batch_sizes, steps=len(losses), sample_rate=training.sample_rate,
        expected_batch_size=config.expected_batch_size, n_records=len(texts),
        epsilon=_engine_epsilon(training.engine, dp.delta) if dp else None, delta=dp.delta if dp else None,
        noise_multiplier=float(training.optimizer.noise_multiplier) if dp else None,
        max_grad_norm=dp.max_grad_norm if dp else None, accountant=dp.accountant if dp else None,
        grad_sample_mode=dp.grad_sample_mode if dp else None,
        lora_targets=lora_target_modules(model, config.lora_targets),
        trainable_parameters=sum(p.numel() for p in training.lora_params),
        seconds_per_step=seconds / max(1, len(losses)), seconds_total=seconds, peak_memory_mb=peak_mb,
        bf16=config.bf16,
    )
    return peft_model, result


def _engine_epsilon(engine, delta: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(engine.get_epsilon(delta))


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


# --- saving an arm -------------------------------------------------------------------------------


def training_record(result: TrainResult, *, arm: str, base_model: str, removed_blocks=None, config=None) -> dict:
    """What training.json holds beside an arm's adapter: the guarantee (epsilon, delta, sigma, q, steps, C)
    and where the model came from."""
    round6 = lambda x: None if x is None else float(f"{x:.6g}")  # noqa: E731
    record = {
        "arm": arm,
        "base_model": base_model,
        "removed_blocks": list(removed_blocks) if removed_blocks is not None else None,
        "private": result.noise_multiplier is not None,
        "epsilon": round6(result.epsilon),
        "delta": result.delta,
        "noise_multiplier": round6(result.noise_multiplier),
        "sample_rate": round6(result.sample_rate),
        "steps": result.steps,
        "expected_batch_size": result.expected_batch_size,
        "n_records": result.n_records,
        "max_grad_norm": result.max_grad_norm,
        "accountant": result.accountant,
        "grad_sample_mode": result.grad_sample_mode,
        "lora_targets": result.lora_targets,
        "trainable_parameters": result.trainable_parameters,
        "first_loss": round6(next((x for x in result.losses if x is not None), None)),
        "final_loss": round6(next((x for x in reversed(result.losses) if x is not None), None)),
    }
    if config is not None:
        record["config"] = {k: v for k, v in asdict(config).items() if k not in ("dp", "progress", "device")}
    return record


def save_arm(params: dict, arm: str, peft_model, tokenizer, result: TrainResult, config: TrainConfig | None = None) -> Path:
    """Write runs/<run>/models/<arm>/{adapter/, merged/, training.json}; return the arm's folder.

    adapter/ loads with peft on top of the arm's starting model; merged/ is a plain transformers
    checkpoint (LoRA folded into the weights) with the tokenizer.
    """
    paths = artifacts.run_paths(params)
    folder = paths.model(arm)
    removed, base_model = None, params["model"]
    if arms.parse(arm).pruned:
        checkpoint = Path(arms.checkpoint(params, "pruned-noft"))
        pruning_json = checkpoint / "pruning.json"
        # Relative to the repository, so training.json reads the same on every machine.
        base_model = str(checkpoint.relative_to(artifacts.REPO_ROOT)) if checkpoint.is_relative_to(artifacts.REPO_ROOT) else str(checkpoint)
        if pruning_json.exists():
            removed = artifacts.read_json(pruning_json).get("removed_blocks")
    record = training_record(result, arm=arm, base_model=base_model, removed_blocks=removed, config=config)
    artifacts.save_model(peft_model, tokenizer, folder / "adapter")
    merged = copy.deepcopy(peft_model).merge_and_unload()
    artifacts.save_model(merged, tokenizer, folder / "merged")
    artifacts.write_json(folder / "training.json", record)
    return folder


# --- the study's arms ----------------------------------------------------------------------------


def train_arm(params: dict, arm: str, texts, *, progress: bool = True) -> TrainResult:
    """Fine-tune one arm (full-nodp, pruned-dp8, ...) from its starting model, save it (save_arm), return its result."""
    from ppt_core import models

    model, tokenizer = models.load_arm(params, arms.parse(arm).start)
    config = config_from_params(params, arms.parse(arm).epsilon, progress=progress)
    peft_model, result = finetune(model, tokenizer, texts, config)
    save_arm(params, arm, peft_model, tokenizer, result, config)
    return result


def result_record(result: TrainResult) -> dict:
    """The deterministic part of a result for results.json: the guarantee and the loss curve (6 significant digits)."""
    record = training_record(result, arm="", base_model="")
    for key in ("arm", "base_model", "removed_blocks"):
        record.pop(key)
    record["losses"] = [None if x is None else float(f"{x:.6g}") for x in result.losses]
    record["batch_sizes"] = result.batch_sizes
    return record


def cost_record(result: TrainResult) -> dict:
    """Wall-clock cost of a run for timings.json: seconds per step, total seconds, peak memory (MB)."""
    return {"seconds_per_step": round(result.seconds_per_step, 3), "seconds_total": round(result.seconds_total, 1),
            "peak_memory_mb": round(result.peak_memory_mb, 1), "steps": result.steps, "bf16": result.bf16}

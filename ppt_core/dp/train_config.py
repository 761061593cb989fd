"""The LoRA fine-tuning settings of one run (TrainConfig), read from a profile, and their checks.

One TrainConfig serves the private and the non-private arms: `dp` (a privacy.DPConfig) set or None is
the only difference. `check_config` stops a setting that cannot train, or cannot keep its DP promise,
with one message naming the value and the fix, before any model is built; `check_params` runs it for
every arm of a profile before notebook 00.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ppt_core import data
from ppt_core.data import batching
from ppt_core.dp import distributed, privacy
from ppt_core.dp.privacy import DPConfig
from ppt_core.models.architectures import LORA_TARGET_SETS, lora_target_modules
from ppt_core.run import arms
from ppt_core.run.errors import TrainingConfigError

LR_SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    """LoRA fine-tuning settings shared by the private and the non-private arms (defaults: the quick profile's
    non-private arms').

    lora_targets: "query+value", "attention", "attention+mlp", or a list of module names (e.g. ["q_proj"]).
    lora_blocks: LoRA only on the model's last `lora_blocks` decoder blocks (None, or at least the model's depth:
        every block). The frozen blocks below are then computed once per record (ppt_core.dp.frozen_prefix).
    optimizer: "adamw" or "sgd" (plain SGD makes an update exactly lr * gradient: the tests use it).
    lr_schedule: "constant", "linear" or "cosine" decay over the steps, after `warmup_fraction` of them.
    epochs: passes over the data in expectation (a float: steps = floor(epochs * ceil(N/B))).
    expected_batch_size: records per logical step in expectation (Poisson sampling, q = 1/ceil(N/B)).
    physical_batch_size: records per forward/backward pass; larger logical batches are split.
    max_length: tokens per training record.
    bf16: bf16 autocast for the forward/backward; LoRA weights, per-record gradients, clipping,
        noise and the optimizer stay float32.
    loss_curve_points: held-out loss measured this many times during training (plus once before).
    loss_curve_records: held-out records each measurement averages over.
    """

    lora_rank: int = 16
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    lora_targets: str | list[str] = "attention+mlp"
    lora_blocks: int | None = 10
    epochs: float = 6.0
    learning_rate: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0
    expected_batch_size: int = 16
    physical_batch_size: int = 16
    max_length: int = 48
    seed: int = 0
    bf16: bool | str = "auto"  # "auto": bf16 where the device computes it natively and faster (precision.choose)
    loss_curve_points: int = 3
    loss_curve_records: int = 8
    device: str | None = None
    progress: bool = True
    dp: DPConfig | None = None



def dp_learning_rates(params: dict) -> dict[float, float]:
    """`dp_learning_rates` as {ε: rate}, sorted by ε: the DP rate tuned at each ε (a run folder's settings.json
    holds the ε keys as strings)."""
    rates = params["dp_learning_rates"]
    if not isinstance(rates, dict) or not rates:
        raise TrainingConfigError(f"dp_learning_rates must map an ε to the DP rate tuned there, e.g. {{8: 0.01}} "
                                  f"(got {rates!r})")
    try:
        pairs = sorted((float(eps), float(rate)) for eps, rate in rates.items())
    except (TypeError, ValueError):
        raise TrainingConfigError(f"dp_learning_rates must map numbers to numbers, e.g. {{8: 0.01}} "
                                  f"(got {rates!r})") from None
    if any(eps <= 0 or rate <= 0 for eps, rate in pairs):
        raise TrainingConfigError(f"dp_learning_rates must map positive ε to positive rates (got {rates!r})")
    return dict(pairs)


def tuned_at(params: dict, epsilon: float) -> float:
    """The ε whose tuned rate a DP arm at `epsilon` takes: the largest tuned ε at or below its own. More noise
    calls for a smaller step, so a rate tuned at a smaller ε is the cautious one; an arm below every tuned ε
    has no rate and stops, naming the fix."""
    privacy.check_target_epsilon(float(epsilon))
    below = [eps for eps in dp_learning_rates(params) if eps <= float(epsilon) * (1 + 1e-9)]
    if not below:
        raise TrainingConfigError(
            f"ε = {epsilon:g} is below every ε with a tuned DP rate (dp_learning_rates {params['dp_learning_rates']}): "
            f"tune one there (python -m ppt_core.study.lr_tuning --dp-epsilons {epsilon:g}) and add it, or use ε >= "
            f"{min(dp_learning_rates(params)):g}")
    return max(below)


def family_learning_rate(params: dict, epsilon: float | None) -> float:
    """The learning rate of an arm: `nodp_learning_rate` for the non-private arms (epsilon None); for a DP arm the
    rate of `dp_learning_rates` tuned at `tuned_at(epsilon)`; each tuned on an independent draw
    (ppt_core.study.lr_tuning)."""
    if epsilon is None:
        return float(params["nodp_learning_rate"])
    return dp_learning_rates(params)[tuned_at(params, epsilon)]


def config_from_params(params: dict, epsilon: float | None = None, **overrides) -> TrainConfig:
    """The TrainConfig of a profile's arm: non-private when `epsilon` is None, else DP at `epsilon`; the
    learning rate is the arm's (family_learning_rate)."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TrainingConfigError(f"unknown TrainConfig setting(s) {unknown}: known are {sorted(known)}")
    dp = None
    if epsilon is not None:
        dp = DPConfig(
            target_epsilon=float(epsilon), delta=float(params["delta"]), max_grad_norm=float(params["max_grad_norm"]),
            accountant=params["accountant"], grad_sample_mode=params["grad_sample_mode"],
            secure_mode=bool(params["secure_mode"]),
        )
    config = TrainConfig(
        lora_rank=int(params["lora_rank"]), lora_alpha=float(params["lora_alpha"]),
        lora_dropout=float(params["lora_dropout"]), lora_targets=params["lora_targets"],
        lora_blocks=None if params["lora_blocks"] is None else int(params["lora_blocks"]),
        epochs=float(params["epochs"]), learning_rate=family_learning_rate(params, epsilon),
        optimizer=params["optimizer"], weight_decay=float(params["weight_decay"]),
        lr_schedule=params["lr_schedule"], warmup_fraction=float(params["warmup_fraction"]),
        expected_batch_size=int(params["expected_batch_size"]), physical_batch_size=int(params["physical_batch_size"]),
        max_length=int(params["train_max_length"] or params["max_length"]), seed=int(params["seed"]),
        bf16=params["bf16"] if params["bf16"] == "auto" else bool(params["bf16"]),
        loss_curve_points=int(params["loss_curve_points"]),
        loss_curve_records=int(params["loss_curve_records"]),
        device=None if params.get("device") in (None, "auto") else params["device"], dp=dp,
    )
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


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
        raise TrainingConfigError("max_length must be >= 2 tokens to have a next token to predict "
                                  f"(got {config.max_length})")
    blocks = config.lora_blocks
    if blocks is not None and (isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1):
        raise TrainingConfigError(f"lora_blocks must be None (every block) or an integer >= 1 (got {blocks!r})")
    if not 0 <= config.lora_dropout < 1:
        raise TrainingConfigError(f"lora_dropout must be in [0, 1) (got {config.lora_dropout})")
    if not 0 <= config.warmup_fraction < 1:
        raise TrainingConfigError(f"warmup_fraction must be in [0, 1) (got {config.warmup_fraction})")
    if config.weight_decay < 0:
        raise TrainingConfigError(f"weight_decay must be >= 0 (got {config.weight_decay})")
    if config.loss_curve_points < 0 or config.loss_curve_records < 1:
        raise TrainingConfigError(f"loss_curve_points must be >= 0 and loss_curve_records >= 1 "
                                  f"(got {config.loss_curve_points} and {config.loss_curve_records})")
    if config.optimizer not in OPTIMIZERS:
        raise TrainingConfigError(f"optimizer must be one of {OPTIMIZERS} (got {config.optimizer!r})")
    if config.lr_schedule not in LR_SCHEDULES:
        raise TrainingConfigError(f"lr_schedule must be one of {LR_SCHEDULES} (got {config.lr_schedule!r})")
    if config.expected_batch_size > n_records:
        raise TrainingConfigError(
            f"expected_batch_size ({config.expected_batch_size}) is larger than the {n_records} training records: "
            f"use expected_batch_size <= {n_records}"
        )
    plan = batching.schedule(n_records, config.expected_batch_size, config.epochs)
    if plan.steps < 1:
        raise TrainingConfigError(
            f"epochs={config.epochs} gives no training step at sample rate {plan.sample_rate:.4g}: "
            f"use epochs >= {plan.sample_rate:.4g}"
        )
    if model is not None:
        lora_target_modules(model, config.lora_targets)
    if config.dp is not None:
        privacy.check_dp(config.dp, n_records, plan.sample_rate, plan.steps, bf16=config.bf16)


def check_params(params: dict) -> None:
    """The profile's fine-tuning settings are usable for its training-set size (before anything runs)."""
    for arm in params["train_arms"]:
        if arm not in ("full", "pruned"):
            raise TrainingConfigError(f"train_arms may hold 'full' and 'pruned' (got {arm!r})")
    if params["lora_targets"] not in LORA_TARGET_SETS and not isinstance(params["lora_targets"], list):
        raise TrainingConfigError(
            f"lora_targets must be one of {LORA_TARGET_SETS} or a list of module names (got {params['lora_targets']!r})"
        )
    if params["loss_curve_points"] and params["loss_curve_records"] > params["n_heldout"]:
        raise TrainingConfigError(f"loss_curve_records ({params['loss_curve_records']}) is larger than n_heldout "
                                  f"({params['n_heldout']}): use loss_curve_records <= {params['n_heldout']}")
    doses, claims = list(params.get("dose_epsilons", [])), list(params["epsilons"])
    if doses and (len(set(doses)) != len(doses) or min(doses) <= max(claims + [0])):
        raise TrainingConfigError(f"dose_epsilons must be distinct and each above every claimed ε {claims} (got "
                                  f"{doses}): a dose arm stands between the claimed arms and the non-private twin")
    n_records = data.train_size(params)
    for epsilon in [None] + claims + doses:
        check_config(config_from_params(params, epsilon), n_records)
    if params.get("nproc", 1) != 1:
        distributed.check_world(params["nproc"], n_records, int(params["expected_batch_size"]))


def learning_rate_choices(params: dict, arm_names) -> str:
    """One line per trained arm: its learning rate and, for a DP arm, the ε its rate was tuned at."""
    lines = []
    for arm in arm_names:
        epsilon = arms.parse(arm).epsilon
        where = "the non-private rate" if epsilon is None else f"tuned at ε = {tuned_at(params, epsilon):g}"
        lines.append(f"{arm}: learning rate {family_learning_rate(params, epsilon):g} ({where})")
    return "\n".join(lines)

"""The study's fine-tuned arms: train one from its starting model, save it, and say what may be published.

`ppt_core.dp.training` fine-tunes any model on any texts; this module ties it to a profile and a run
folder: which model an arm starts from, where its adapter and merged checkpoint go, and which of a
run's numbers leave the trainer.

What is published (training.json beside the model, results.json): the guarantee (epsilon, delta,
sigma, q, steps, C), the held-out loss curve and the audit canaries' log-likelihoods after every
expected pass (audit_curve.json, the one-run audit over training) for every arm; the training losses and per-step
batch sizes only for the non-private arms, because for a DP arm they are computed from training
records without noise. sample_counts.json (how many logical batches drew each training record)
sits beside the arm for the study's attacks and audit, which use it as a trusted evaluator; it is
never released with a model.

An arm's folder also holds train_result.json (trainer-only: the whole TrainResult, less a DP arm's noiseless
losses and batch sizes) with a digest of everything its training read (`training_inputs`). Training is
deterministic for a fixed seed, so an arm whose stored digest matches is the arm training would make again:
`finished_arm` reads it back, and notebook 03, run again by hand after one change, trains only the arms the change
reaches.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

from ppt_core.dp import privacy
from ppt_core.dp.train_config import TrainConfig, config_from_params
from ppt_core.dp.training import TrainResult, finetune
from ppt_core.leakage import implementation_audit
from ppt_core.machine import precision
from ppt_core.run import arms, artifacts

SAMPLE_COUNTS_NOTE = ("trainer-only: which records the Poisson sampler drew; used by the study's attacks and audit "
                      "as a trusted evaluator, never released with a model")
RESULT_FILE = "train_result.json"
RESULT_NOTE = ("trainer-only: the arm's TrainResult, read back by notebook 03 where `inputs` (a digest of everything "
               "its training read) still matches; a DP arm's training losses and batch sizes are left out, and its "
               "sample counts live in sample_counts.json")
GROUP_SIZES = (1, 4, 16, 64)  # records sharing one secret, for the group-privacy table (plus the canary repetitions)


class TrainingDiverged(RuntimeError):
    """A trained arm whose held-out loss ended above its starting model's: a failed run, not a data point."""


def train_arm(params: dict, arm: str, texts, heldout_texts, audit_records=(), *,
              progress: bool = True, family: dict | None = None) -> TrainResult:
    """Fine-tune one arm (full-nodp, pruned-dp8, ...) from its starting model on `texts` (the train split,
    in order), measure its loss curve on `heldout_texts` and the log-likelihood of every audit canary in
    `audit_records` (the audit split) before training and after every expected pass, check that it did not
    diverge (check_converged), save it (save_arm) and return its result. `family`: a dict kept by the caller
    for the arms of this arm's starting model, where what they compute alike (the frozen blocks' outputs on the
    training records and on the audit canaries, the starting model's audit read) is computed once.
    A DP arm trained in one process runs the implementation audit (`implementation_audit_hook`) and stops,
    naming the arm, where it flags the arm or misses a planted bug.
    Under torchrun (`ppt_core.stages.launch`), every process trains its share and rank 0 saves."""
    from ppt_core import models
    from ppt_core.dp import distributed

    inputs = training_inputs(params, arm, texts, heldout_texts, audit_records)
    model, tokenizer = models.load_arm(params, arms.parse(arm).start)
    config = config_from_params(params, arms.parse(arm).epsilon, progress=progress)
    probe = audit_probe(tokenizer, list(audit_records), config, family) if len(audit_records) else None
    world = distributed.current_world()
    hook = implementation_audit_hook(params, arm) if config.dp is not None and world is None else None
    if config.dp is not None and world is not None and world.main and implementation_audit_hook(params, arm):
        print(f"{arm}: the implementation audit runs in one process only; train with nproc=1 to run it")
    peft_model, result = finetune(model, tokenizer, texts, config, heldout_texts, pass_probe=probe, step_hook=hook,
                                  family=family)
    if result.implementation_audit is not None:
        implementation_audit.check_claim(arm, result.implementation_audit)
        implementation_audit.check_controls(arm, result.implementation_audit)
    check_converged(arm, result)
    if world is None or world.main:  # under torchrun every process holds the same adapter: rank 0 writes it
        save_arm(params, arm, peft_model, tokenizer, result, config, inputs=inputs)
    distributed.barrier()
    return result


def training_inputs(params: dict, arm: str, texts, heldout_texts, audit_records=()) -> str:
    """A digest of everything `arm`'s training reads: its TrainConfig, the precision and machine kind it runs on, its
    starting model (a local checkpoint by content), the training, held-out and audit records, the implementation
    audit it runs, the process count, and the library code. Equal digests train equal arms."""
    from ppt_core import models

    spec = arms.parse(arm)
    config = config_from_params(params, spec.epsilon, progress=False)
    start = arms.checkpoint(params, spec.start)
    hook = implementation_audit_hook(params, arm)
    described = {
        "arm": arm, "config": {k: v for k, v in asdict(config).items() if k != "progress"},
        "bf16": precision.resolve_bf16(config.bf16, models.resolve_device(config.device)),
        "machine": precision.machine_key(threads=False), "nproc": int(params.get("nproc", 1)),
        "start": artifacts.content_digest(Path(start)) if Path(start).exists() else start,
        "texts": list(texts), "heldout": list(heldout_texts), "audit": list(audit_records),
        "implementation_audit": None if hook is None else [hook.m, hook.seed, hook.controls_seed],
        "code": artifacts.code_fingerprint(),
    }
    return artifacts.record_digest(described)


def write_result(params: dict, arm: str, result: TrainResult, inputs: str) -> None:
    """runs/<run>/models/<arm>/train_result.json: the TrainResult (trainer-only, RESULT_NOTE) and its `inputs`."""
    record = {k: v for k, v in asdict(result).items() if k != "sample_counts"}
    if result.private:  # computed from training records without noise: they stay with the trainer
        record["losses"], record["batch_sizes"] = [], []
    artifacts.write_json(artifacts.run_paths(params).model(arm) / RESULT_FILE,
                         {"result": record, "inputs": inputs, "note": RESULT_NOTE})


def read_result(params: dict, arm: str) -> TrainResult:
    """The TrainResult that train_result.json holds (sample counts from sample_counts.json)."""
    record = artifacts.read_json(artifacts.run_paths(params).model(arm) / RESULT_FILE)["result"]
    record["heldout_losses"] = [tuple(point) for point in record["heldout_losses"]]
    record["pass_probes"] = [tuple(point) for point in record.get("pass_probes", [])]
    record["sample_counts"] = load_sample_counts(params, arm).tolist()
    known = {f.name for f in fields(TrainResult)}
    return TrainResult(**{k: v for k, v in record.items() if k in known})


def finished_arm(params: dict, arm: str, texts, heldout_texts, audit_records=()) -> TrainResult | None:
    """`arm`'s stored result where its folder holds a finished training with these very inputs (training_inputs),
    else None: the arm must be trained."""
    folder = artifacts.run_paths(params).model(arm)
    if not all((folder / name).exists() for name in (RESULT_FILE, "training.json", "merged", "adapter")):
        return None
    if artifacts.read_json(folder / RESULT_FILE).get("inputs") != training_inputs(params, arm, texts, heldout_texts,
                                                                                 audit_records):
        return None
    return read_result(params, arm)


def implementation_audit_hook(params: dict, arm: str):
    """The implementation audit a DP arm trains with (white-box gradient canaries in its own DP optimizer, and
    the planted-bug controls at its schedule), or None where the profile sets no canaries. Each arm draws its
    canaries from a seed of its own (two arms of one optimizer and schedule are two audits, not one twice); the
    controls, the same for such arms, are drawn once from the run's seed."""
    m = int(params.get("implementation_audit_canaries", 0))
    if not m or arm in arms.dose_arm_names(params):  # a dose arm tests no claim: its ε is far above any ceiling
        return None
    seed = int(np.random.SeedSequence([int(params["seed"]), zlib.crc32(arm.encode())]).generate_state(1)[0])
    return implementation_audit.TrainingHook(m, seed=seed, with_controls=True, controls_seed=int(params["seed"]))


AUDIT_BATCH_SIZE = 64  # audit canaries per forward of the probe: their rows are short, so larger batches than
#                       training's amortise each forward's fixed cost


def audit_probe(tokenizer, audit_records: list[dict], config: TrainConfig, family: dict | None = None):
    """The pass probe of the audit over training: each audit canary's summed log-probability of its random
    words under the adapter of the moment, scored as training computes (its bf16 setting). Where training
    replays its frozen lower blocks (`frozen_blocks`), the probe keeps their output on the audit canaries at its
    first call and replays it at every later one: those blocks are the public model's, unchanged by training.
    With `family` (train_arm's), those outputs and the read of an adapter that adds nothing (every LoRA B
    matrix zero, as before the first step: the starting model's read, the same for every arm of the family)
    are computed once per family. A profile's bf16="auto" settles on the model's device, as `finetune` settles
    it for training."""
    from ppt_core.dp import frozen_prefix
    from ppt_core.leakage import membership
    from ppt_core.machine import precision

    kept = None  # the frozen blocks' output on the audit canaries

    def probe(peft_model, frozen_blocks: int | None = None):
        nonlocal kept
        bf16 = precision.resolve_bf16(config.bf16, next(peft_model.parameters()).device)
        if frozen_blocks is not None and (kept is None or kept.n_frozen != frozen_blocks):
            kept = frozen_prefix.FrozenPrefix(peft_model, membership.audit_dataset(tokenizer, audit_records),
                                              frozen_blocks, batch_size=AUDIT_BATCH_SIZE, bf16=bf16, kept=family)
        start_read = ("starting model's audit read", frozen_blocks, bf16)
        at_start = family is not None and adapter_adds_nothing(peft_model)
        if at_start and start_read in family:
            return family[start_read]
        values = membership.audit_logprobs(peft_model, tokenizer, audit_records, batch_size=AUDIT_BATCH_SIZE,
                                           bf16=bf16, progress=False,
                                           prefix=kept if frozen_blocks is not None else None)
        if at_start:
            family[start_read] = values
        return values

    return probe


def adapter_adds_nothing(peft_model) -> bool:
    """Whether every LoRA B matrix is zero, so that the adapter adds exactly nothing to its model's output."""
    return all(not p.any() for name, p in peft_model.named_parameters() if "lora_B" in name)


def check_converged(arm: str, result: TrainResult) -> None:
    """Stop, naming the arm, when its held-out loss ended above its starting model's (step 0 of the curve):
    the run failed (a learning rate too large for this arm, most often) and nothing of it is saved."""
    if len(result.heldout_losses) < 2:
        return
    (_, start), (step, end) = result.heldout_losses[0], result.heldout_losses[-1]
    if not end <= start:
        raise TrainingDiverged(
            f"arm {arm!r} diverged: its held-out loss went from {start:.4g} (its starting model) to {end:.4g} nats "
            f"per token after {step} steps at learning rate {result.learning_rate:g}; lower its family's learning "
            "rate (`make tune` picks one per family on an independent draw) and run notebook 03 again")


def audit_curve(result: TrainResult) -> dict:
    """audit_curve.json: per probe point its step, expected passes (step * q) and every audit canary's
    log-probability (nats), in the audit split's order; step 0 is the starting model."""
    steps = [step for step, _ in result.pass_probes]
    return {"steps": steps, "passes": [step / result.batches_per_pass for step in steps],
            "logprobs": [values for _, values in result.pass_probes]}


def training_record(result: TrainResult, *, arm: str, base_model: str, removed_blocks=None, config=None) -> dict:
    """What training.json holds beside an arm's adapter: the guarantee (epsilon, delta, sigma, q, steps, C),
    where the model came from, and its publishable losses (6 significant digits)."""
    record = {
        "arm": arm,
        "base_model": base_model,
        "removed_blocks": list(removed_blocks) if removed_blocks is not None else None,
        "private": result.private,
        "epsilon": result.epsilon,
        "delta": result.delta,
        "noise_multiplier": result.noise_multiplier,
        "sample_rate": result.sample_rate,
        "steps": result.steps,
        "expected_batch_size": result.expected_batch_size,
        "n_records": result.n_records,
        "max_grad_norm": result.max_grad_norm,
        "accountant": result.accountant,
        "grad_sample_mode": result.grad_sample_mode,
        "secure_mode": result.secure_mode,
        "lora_targets": result.lora_targets,
        "trainable_parameters": result.trainable_parameters,
        "heldout_losses": [[step, loss] for step, loss in result.heldout_losses],
    }
    if not result.private:  # a DP arm's training losses are noiseless statistics of its training records
        record["first_loss"] = next((x for x in result.losses if x is not None), None)
        record["final_loss"] = next((x for x in reversed(result.losses) if x is not None), None)
    if config is not None:
        record["config"] = {k: v for k, v in asdict(config).items() if k not in ("dp", "progress", "device")}
    return artifacts.rounded(record)


def save_arm(params: dict, arm: str, peft_model, tokenizer, result: TrainResult,
             config: TrainConfig | None = None, *, inputs: str | None = None) -> Path:
    """Write runs/<run>/models/<arm>/{adapter/, merged/, training.json, sample_counts.json}, and with `inputs`
    (training_inputs' digest) train_result.json; return the arm's folder.

    adapter/ loads with peft on top of the arm's starting model; merged/ is a plain transformers
    checkpoint (LoRA folded into the weights) with the tokenizer. sample_counts.json is trainer-only.
    """
    folder = artifacts.run_paths(params).model(arm)
    removed, base_model = None, params["model"]
    if arms.parse(arm).pruned:
        checkpoint = Path(arms.checkpoint(params, "pruned-noft"))
        pruning_json = checkpoint / "pruning.json"
        # Relative to the repository, so training.json reads the same on every machine.
        inside = checkpoint.is_relative_to(artifacts.REPO_ROOT)
        base_model = str(checkpoint.relative_to(artifacts.REPO_ROOT)) if inside else str(checkpoint)
        if pruning_json.exists():
            removed = artifacts.read_json(pruning_json).get("removed_blocks")
    record = training_record(result, arm=arm, base_model=base_model, removed_blocks=removed, config=config)
    artifacts.save_model(peft_model, tokenizer, folder / "adapter")
    merged = copy.deepcopy(peft_model).merge_and_unload()
    artifacts.save_model(merged, tokenizer, folder / "merged")
    artifacts.write_json(folder / "sample_counts.json", {"counts": result.sample_counts, "note": SAMPLE_COUNTS_NOTE})
    if result.pass_probes:
        artifacts.write_json(folder / "audit_curve.json", audit_curve(result))
    if inputs is not None:
        write_result(params, arm, result, inputs)
    artifacts.write_json(folder / "training.json", record)  # last: its presence marks a finished save
    return folder


def load_audit_curve(params: dict, arm: str) -> dict | None:
    """The arm's audit_curve.json (see audit_curve), or None when it was trained without audit canaries."""
    path = artifacts.run_paths(params).model(arm) / "audit_curve.json"
    return artifacts.read_json(path) if path.exists() else None


def load_sample_counts(params: dict, arm: str) -> np.ndarray:
    """(N_train,) int: how many logical batches of `arm`'s training drew each train-split record (trainer-only)."""
    path = artifacts.run_paths(params).model(arm) / "sample_counts.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: train the arm first (notebook 03)")
    return np.asarray(artifacts.read_json(path)["counts"], dtype=int)


def result_record(result: TrainResult) -> dict:
    """The deterministic, publishable part of a result for results.json: the guarantee and the loss curves
    (training losses and batch sizes for non-private arms only)."""
    record = training_record(result, arm="", base_model="")
    for key in ("arm", "base_model", "removed_blocks"):
        record.pop(key)
    if not result.private:
        record["losses"] = artifacts.rounded(result.losses)
        record["batch_sizes"] = result.batch_sizes
    return record


IMPLEMENTATION_AUDIT_COLUMNS = ("claimed_epsilon", "epsilon_lower", "ratio_to_claim", "simulation_epsilon_lower",
                                "ratio_to_simulation", "simulation_range", "simulation_runs", "simulations_below",
                                "ceiling", "scores_ks_pvalue", "flagged", "canaries", "steps")
NOISE_CHECK_KEYS = ("noise_per_matrix", "noise_control")  # the per-matrix noise check and its planted control


def implementation_audit_record(results: dict[str, TrainResult]) -> dict:
    """results.json["implementation_audit"]: per DP arm its implementation audit (IMPLEMENTATION_AUDIT_COLUMNS and
    the per-matrix noise check with its planted control, NOISE_CHECK_KEYS), and `controls`: per arm and planted
    bug (claiming ε = 8) the same columns."""
    audited = {arm: r.implementation_audit for arm, r in results.items() if r.implementation_audit is not None}
    record = {arm: {k: a[k] for k in (*IMPLEMENTATION_AUDIT_COLUMNS, *NOISE_CHECK_KEYS) if k in a}
              for arm, a in audited.items()}
    controls = {f"{arm}: {bug}": {k: c[k] for k in IMPLEMENTATION_AUDIT_COLUMNS}
                for arm, a in audited.items() for bug, c in a.get("controls", {}).items()}
    return artifacts.rounded(record | ({"controls": controls} if controls else {}))


def implementation_audit_table(record: dict) -> dict:
    """{row: columns} of results.json["implementation_audit"] for a table: each DP arm, then each control."""
    arms_rows = {arm: {k: v for k, v in a.items() if k not in NOISE_CHECK_KEYS}
                 for arm, a in record.items() if arm != "controls"}
    return arms_rows | {f"control {row}": values for row, values in record.get("controls", {}).items()}


def cost_record(result: TrainResult) -> dict:
    """Wall-clock cost of a run for timings.json: seconds per step, total seconds (and of them the held-out
    loss curve's), peak memory (MB), and with the implementation audit its canaries' seconds a step."""
    record = {"seconds_per_step": round(result.seconds_per_step, 3), "seconds_total": round(result.seconds_total, 1),
              "seconds_heldout_loss": round(result.seconds_heldout_loss, 1),
              "peak_memory_mb": round(result.peak_memory_mb, 1), "steps": result.steps, "bf16": result.bf16}
    if result.implementation_audit is not None:
        record["implementation_audit_seconds_per_step"] = round(result.implementation_audit["seconds_per_step"], 4)
    return record


def record_results(paths: artifacts.RunPaths, results: dict[str, TrainResult]) -> tuple[dict, dict]:
    """Write what notebook 03 publishes: each arm's result_record to results.json["training"], the DP arms'
    implementation audits to results.json["implementation_audit"] and each arm's cost_record to
    timings.json["training"]; return the first and the last, {arm: record}."""
    published = {arm: result_record(result) for arm, result in results.items()}
    costs = {arm: cost_record(result) for arm, result in results.items()}
    artifacts.update_results(paths, "training", published)
    audited = implementation_audit_record(results)
    if audited:
        artifacts.update_results(paths, "implementation_audit", audited)
    artifacts.update_timings(paths, "training", costs)
    return published, costs


def group_privacy(params: dict, results: dict[str, TrainResult]) -> dict:
    """Epsilon (at the profile's delta) for a secret in k records, per DP arm and for the claimed DP arms
    released together (one accountant history; the dose arms, instruments never released, apart):
    {row: {"k=<k>": epsilon, "accountant": ...}}, k over GROUP_SIZES and the canary repetitions.
    Each value is an upper bound (privacy.group_epsilon); rows say which accountant gave it."""
    sizes = sorted(set(GROUP_SIZES) | {int(k) for k in params["canary_repetitions"]})
    private = {arm: r for arm, r in results.items() if r.private}
    rows = {arm: [(r.noise_multiplier, r.sample_rate, r.steps)] for arm, r in private.items()}
    released = [arm for arm in private if arm not in arms.dose_arm_names(params)]
    if len(released) > 1:
        rows["claimed DP arms together"] = [m for arm in released for m in rows[arm]]
    table = {}
    for row, mechanisms in rows.items():
        table[row], used = {}, {}
        for k in sizes:
            group = [privacy.group_mechanism(*m, k) for m in mechanisms]
            table[row][f"k={k}"] = privacy.composed_epsilon(group, params["delta"], params["accountant"])
            used.setdefault(privacy.usable_accountant(group, params["accountant"]), []).append(k)
        table[row]["accountant"] = "; ".join(f"{name} (k = {', '.join(map(str, ks))})" for name, ks in used.items())
    return table

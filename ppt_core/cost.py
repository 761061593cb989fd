"""What a profile costs in wall time, projected from a run that was measured.

Each notebook's cost is taken as proportional to the tokens it pushes through the model (records ×
tokens per record × passes, `notebook_tokens`), so on the machine that measured a run, another profile
of the same model takes that notebook's measured seconds per token times its own tokens, once per
seed. That is a projection from measured costs, not a measurement: batching, memory and caches change
with size. Nothing has been measured on a GPU here, so the GPU figure is the same tokens at an assumed
throughput (`ASSUMED_GPU_TFLOPS`), and the text says so.
"""

from __future__ import annotations

import math

from ppt_core import arms, attacks, batching, data, profiles

PROJECTED_PROFILES = ("paper", "full")  # the larger profiles whose cost results.md projects from a measured run
ASSUMED_GPU_TFLOPS = 20.0  # effective, not peak: a 135M model in batches of 8-32 records uses a few % of a GPU
FORWARD_FLOPS_PER_PARAM = 2  # per token: one multiply-add per weight
TRAINING_FLOPS_PER_PARAM = 6  # forward, backward through the activations, per-sample LoRA gradients (an upper end)


def notebook_tokens(params: dict) -> dict[str, float]:
    """Tokens each notebook pushes through the model for a profile (00: records written, no model)."""
    n_arms = len(arms.arm_names(params))
    n_trained = len(arms.trained_arm_names(params))
    steps = batching.schedule(data.train_size(params), params["expected_batch_size"], params["epochs"]).steps
    train_length = params["train_max_length"] or params["max_length"]
    canaries = params["canaries_per_repetition"] * len(params["canary_repetitions"]) + params["n_reference_canaries"]
    audit_tokens = params["n_audit_canaries"] * params["audit_canary_tokens"]
    return {
        "00_data": float(params["n_train"] + params["n_heldout"] + params["n_public"] + params["n_audit_canaries"]),
        "01_layer_similarity": float((params["n_calibration"] + params["n_remove"] * params["n_calibration_iterative"])
                                     * params["max_length"]),
        "02_pruning": float(len(params["prune_strategies"]) * len(params["prune_sweep"]) * params["n_eval"]
                            * params["max_length"]),
        # training steps, the held-out loss curve and the audit canaries read after every expected pass
        "03_dp_lora_finetuning": float(n_trained * (steps * params["expected_batch_size"] * train_length
                                                    + (params["loss_curve_points"] + 1) * params["loss_curve_records"]
                                                    * params["max_length"]
                                                    + (math.ceil(params["epochs"]) + 1) * audit_tokens)),
        "04_utility_and_inference": float(n_arms * params["n_eval"] * params["max_length"]),
        "05_synthetic_data": float(n_arms * params["n_synthetic"] * params["synthetic_max_new_tokens"]),
        # membership records (scored at the length training kept), extraction prefixes and suffixes, and the
        # digit-tree rank search of each canary (about one branch per rank up to the cap, each a short forward of
        # prefix and digits); the audit canaries were read in 03
        "06_extraction_attack": float(n_arms * (2 * params["n_membership"] * attacks.scoring_length(params)
                                                + 2 * params["n_attack"]
                                                * (params["attack_prefix_tokens"] + params["attack_suffix_tokens"])
                                                + canaries * params["canary_rank_cap"]
                                                * (params["secret_digits"] + params["attack_prefix_tokens"]))),
    }


def projected_seconds(measured: dict, measured_seconds: dict[str, float], target: dict) -> dict[str, float]:
    """Seconds each notebook of `target` would take on the machine that ran `measured`, one seed, from that
    run's measured seconds per notebook (timings.json["notebooks"], one seed's). Notebooks not measured are
    left out; both profiles must use the same model."""
    if measured["model"] != target["model"]:
        raise ValueError(f"a projection needs the same model (measured {measured['model']!r}, target "
                         f"{target['model']!r}): per-token costs do not carry across models")
    have, want = notebook_tokens(measured), notebook_tokens(target)
    return {notebook: seconds * want[notebook] / have[notebook] for notebook, seconds in measured_seconds.items()
            if notebook in want and have[notebook] > 0}


def gpu_seconds(target: dict, parameters: float) -> float:
    """Seconds of one seed of `target` on a GPU at ASSUMED_GPU_TFLOPS for a model of `parameters` weights
    (an assumption: nothing was measured on a GPU)."""
    tokens = notebook_tokens(target)
    flops = sum(tokens[nb] * parameters * (TRAINING_FLOPS_PER_PARAM if nb.startswith("03") else FORWARD_FLOPS_PER_PARAM)
                for nb in tokens if not nb.startswith("00"))
    return flops / (ASSUMED_GPU_TFLOPS * 1e12)


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    if hours >= 10:
        return f"{hours:,.0f} h"
    return f"{hours:.1f} h" if hours >= 1 else f"{math.ceil(seconds / 60):.0f} min"


def estimate_markdown(measured: dict, measured_seconds: dict[str, float], measured_seeds: int, parameters: float,
                      targets: list[dict]) -> str:
    """One sentence per target profile (same model only): its projected time on this machine from the
    measured run (its notebooks' seconds summed over its `measured_seeds` seeds) and on a GPU at the assumed
    throughput, all seeds of the target; "" when no target shares the model."""
    measured_seconds = {nb: seconds / measured_seeds for nb, seconds in measured_seconds.items()}
    lines = []
    for target in targets:
        if target["model"] != measured["model"] or not measured_seconds:
            continue
        seeds = len(target["seeds"])
        cpu = sum(projected_seconds(measured, measured_seconds, target).values()) * seeds
        gpu = gpu_seconds(target, parameters) * seeds
        lines.append(f"Projected wall time of the `{target['profile']}` profile ({seeds} seed{'s' * (seeds > 1)}, "
                     f"{len(arms.arm_names(target))} arms each), from this run's measured seconds per token of each "
                     f"notebook: {_hours(cpu)} on the machine that produced this run; on a GPU about {_hours(gpu)} "
                     f"at an assumed {ASSUMED_GPU_TFLOPS:g} TFLOP/s effective (not measured).")
    return " ".join(lines)


def study_estimate(params: dict, study) -> str:
    """estimate_markdown of PROJECTED_PROFILES from a study (summary.load_study's Study): its notebooks'
    measured seconds over its seeds, for a model of the base arm's parameter count."""
    return estimate_markdown(params, study.notebook_seconds, len(study.seeds),
                             study.table.loc["base", "parameters_M"] * 1e6,
                             [profiles.get_profile(name) for name in PROJECTED_PROFILES])

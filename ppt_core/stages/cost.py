"""What a profile costs in wall time, projected from a run that was measured, on this machine and on
each kind of machine the study has been measured on.

Each notebook's cost is taken as proportional to the tokens it pushes through the model (records ×
tokens per record × passes, `notebook_tokens`), so on the machine that measured a run, another profile
of the same model takes that notebook's measured seconds per token times its own tokens, once per
seed. That is a projection from measured costs, not a measurement: batching, memory and caches change
with size. Nothing has been measured on a GPU here, so the GPU figure is the same tokens at an assumed
throughput (`ASSUMED_GPU_TFLOPS`), and the text says so.

Across machines the unit is the kind (`precision.machine_kind`: AMX, AVX-512 BF16, AVX-512 without bf16,
...), each with its measured matmul peaks and the precision `bf16: "auto"` picks there, kept in
`ppt_core/machine/machine_kinds.json` (written by `bench/machine_kinds.py` from a measured run, with
the command, commit and date that measured it). A run projects onto a kind from the seconds measured in
that kind's precision (this run's, where the precisions agree, else the kinds file's), times the kind's
slowdown: the ratio of its own measured seconds to the reference's over the notebooks both measured
(`calibrated`), or, where the kind measured none, the ratio of the two matmul peaks (`by peak`), which
leaves out memory and caches and so reads low on a slower machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ppt_core import data
from ppt_core.data import batching
from ppt_core.run import arms, artifacts, profiles
from ppt_core.stages import attacks

KINDS_FILE = Path(__file__).parent.parent / "machine" / "machine_kinds.json"

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
    measured seconds over its seeds, for a model of the base arm's parameter count; then kinds_markdown, one
    seed of this profile on each kind of machine measured so far."""
    machine = artifacts.read_timings(artifacts.run_paths(params)).get("machine")
    per_seed = {nb: seconds / len(study.seeds) for nb, seconds in study.notebook_seconds.items()}
    return "\n\n".join(text for text in (
        estimate_markdown(params, study.notebook_seconds, len(study.seeds),
                          study.table.loc["base", "parameters_M"] * 1e6,
                          [profiles.get_profile(name) for name in PROJECTED_PROFILES]),
        kinds_markdown(params, per_seed, machine)) if text)


# --- machine kinds ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineKind:
    """A kind of machine the study was measured on (an entry of machine_kinds.json)."""

    name: str  # precision.machine_kind's words: "x86-64 CPU with AMX", ...
    peak_gflops: dict  # {"float32": GFLOP/s, "bf16": GFLOP/s} of a 2048² matmul (precision.measured_peaks)
    precision: str  # what bf16: "auto" picks there: "bf16" or "float32"
    profile: str  # the profile whose notebooks were timed
    notebook_seconds: dict  # {precision: {notebook: seconds}}: measured alone, one seed, an empty model cache
    source: dict  # {precision: "the command, commit and date that measured it"}


def machine_kinds(path: Path = KINDS_FILE) -> dict[str, MachineKind]:
    """The kinds of machine measured so far, by name."""
    if not path.exists():
        return {}
    return {name: MachineKind(name=name, **entry) for name, entry in json.loads(path.read_text()).items()}


@dataclass(frozen=True)
class KindProjection:
    """One seed of a profile on one kind: its minutes, the precision it runs in, and how they were reached."""

    kind: str
    precision: str
    peak_gflops: float
    minutes: float
    how: str  # "measured", "calibrated on 01, 02", "by peak"


def project_onto_kind(params: dict, kind: MachineKind, kinds: dict[str, MachineKind], run_seconds: dict,
                      run_machine: dict | None) -> KindProjection | None:
    """One seed of `params` on `kind`, from a complete measurement (every notebook but the one writing the table)
    in the kind's precision: this run's (`run_seconds`, one seed's, measured on `run_machine`, timings.json's
    "machine") where the precisions agree, else the kinds file's (the kind's own, else the fastest kind's in that
    precision); None where no complete measurement of this run's model exists in that precision. A partial one
    (a few notebooks) only calibrates the slowdown."""
    want = kind.precision
    candidates = []  # (kind, peak, profile's params, seconds) of measurements in `want`, the preferred first
    if run_machine is not None and run_machine.get("precision") == want:
        candidates.append((run_machine["kind"], run_machine["peak_gflops"][want], params, _without_writer(run_seconds)))
    for other in sorted(kinds.values(), key=lambda k: (k.name != kind.name, -k.peak_gflops[want])):
        if want in other.notebook_seconds:
            candidates.append((other.name, other.peak_gflops[want], profiles.get_profile(other.profile),
                               _without_writer(other.notebook_seconds[want])))
    complete = [c for c in candidates if c[2]["model"] == params["model"]  # per-token costs do not carry across
                and set(c[3]) >= set(_without_writer(notebook_tokens(c[2])))]  # models; every notebook measured
    if not complete:
        return None
    reference_kind, reference_peak, reference_params, reference_seconds = complete[0]
    seconds = projected_seconds(reference_params, reference_seconds, params)
    if reference_kind == kind.name:
        return KindProjection(kind.name, want, kind.peak_gflops[want], sum(seconds.values()) / 60, "measured")
    kind_params = profiles.get_profile(kind.profile)
    own_seconds = projected_seconds(kind_params, _without_writer(kind.notebook_seconds.get(want, {})), params) if (
        kind_params["model"] == params["model"]) else {}  # what the kind measured, in this run's profile
    shared = sorted(set(own_seconds) & set(seconds))
    if shared:
        slowdown = sum(own_seconds[nb] for nb in shared) / sum(seconds[nb] for nb in shared)
        how = f"calibrated on {', '.join(nb[:2] for nb in shared)}"
    else:
        slowdown, how = reference_peak / kind.peak_gflops[want], "by peak"
    return KindProjection(kind.name, want, kind.peak_gflops[want], sum(seconds.values()) * slowdown / 60, how)


def _without_writer(seconds: dict) -> dict:
    return {notebook: s for notebook, s in seconds.items() if notebook != artifacts.SUMMARY_NOTEBOOK}


def kinds_markdown(params: dict, run_seconds: dict, run_machine: dict | None,
                   kinds: dict[str, MachineKind] | None = None) -> str:
    """A table: one seed of this profile on each measured kind of machine (and this run's own), in the precision
    bf16: "auto" picks there; "" where no kind is known."""
    kinds = machine_kinds() if kinds is None else kinds
    if run_machine is not None and run_machine.get("kind") not in kinds and "peak_gflops" in run_machine:
        kinds = {**kinds, run_machine["kind"]: MachineKind(
            run_machine["kind"], run_machine["peak_gflops"], run_machine["auto_precision"], params["profile"], {}, {})}
    rows = [p for kind in kinds.values() if (p := project_onto_kind(params, kind, kinds, run_seconds, run_machine))]
    if not rows:
        return ""
    lines = ["One seed of this profile on each kind of machine measured so far "
             "(`ppt_core/machine/machine_kinds.json`), in the precision `bf16: auto` picks there, notebooks 00-06 "
             "(07 writes this): measured where the kind ran it, else projected from the seconds measured in that "
             "precision (`ppt_core/stages/cost.py`).", "",
             "| machine kind | precision | matmul peak (GFLOP/s) | minutes | how |", "|---|---|---|---|---|"]
    lines += [f"| {p.kind} | {p.precision} | {p.peak_gflops:,.0f} | {p.minutes:.1f} | {p.how} |" for p in rows]
    return "\n".join(lines)

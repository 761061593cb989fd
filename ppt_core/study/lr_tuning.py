"""Hyperparameters chosen without the private records: tuning runs on an independent draw of the data,
one learning rate per family (the non-private arms and the DP arms).

DP-SGD's ε covers one training run on the training records. It does not cover choosing a setting by
how several runs on those same records turned out: the choice is itself a function of the records
(Papernot & Steinke, "Hyperparameter tuning with Renyi differential privacy", ICLR 2022). So the
study's learning rate is chosen here, on a fresh draw of the synthetic data generator under a seed
the study never uses (TUNING_SEED_OFFSET + the profile's seed), whose texts are checked to share
nothing with the study's own splits. The study's records are never read.

Each candidate learning rate trains the profile's arm exactly as notebook 03 would (same N, q,
steps, σ, LoRA), on the tuning draw's train split; its held-out loss on the tuning draw's held-out
notes decides. The non-private and the DP arms are tuned apart, and the DP arms at each ε: clipping and noise change
which rate is best, and a rate tuned on a DP arm can make its non-private twin diverge.
`full-nodp` picks `nodp_learning_rate` and `full-dp<ε>` the rate of `dp_learning_rates` at that ε; the
pruned family uses the full family's rates. The result goes to figures/tuning/<profile>.json, which the
profile cites (`make tune`); a run at some ε keeps the families it does not tune again:

    python -m ppt_core.study.lr_tuning --profile quick --nodp-learning-rates 5e-4,1e-3,2e-3 \\
        --dp-learning-rates 2e-3,5e-3,1e-2
    python -m ppt_core.study.lr_tuning --profile quick --nodp-learning-rates '' --dp-epsilons 1  # one more ε

Only the synthetic corpus has an independent draw. For your own data (`data_path`), tune on a
public stand-in of it, or account for the tuning (the paper above) in the ε you report.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt

from ppt_core import data, models
from ppt_core.dp.train_config import config_from_params, dp_learning_rates, family_learning_rate
from ppt_core.dp.training import finetune
from ppt_core.run import arms, artifacts, profiles
from ppt_core.scoring import evaluation
from ppt_core.study import checks, plots, report

# Tuning draws use seeds from here up; tuning_params refuses a study whose seeds reach it.
TUNING_SEED_OFFSET = 1_000_000


class TuningError(ValueError):
    """A tuning request that cannot be kept apart from the study's records."""


def tuning_params(params: dict) -> dict:
    """The profile's parameters for its tuning draw: same sizes and training settings, the tuning seed,
    its own run folder (runs/tuning-<run>/)."""
    if params.get("data_path"):
        raise TuningError(f"data_path={params['data_path']!r}: only the synthetic generator has an independent draw; "
                          "tune on a public stand-in of your data (e.g. --data on it) and cite that run")
    seeds = [int(s) for s in params.get("seeds") or [params["seed"]]] + [int(params["seed"])]
    if max(seeds) >= TUNING_SEED_OFFSET:
        raise TuningError(f"study seeds {sorted(set(seeds))} reach the tuning range (>= {TUNING_SEED_OFFSET}): "
                          "use smaller study seeds")
    run = params.get("run_name") or params["profile"]
    return dict(params, seed=TUNING_SEED_OFFSET + int(params["seed"]), seeds=[TUNING_SEED_OFFSET + int(params["seed"])],
                run_name=f"tuning-{run}", figures_dir=None)


def check_disjoint(study: data.DatasetSplits, tuning: data.DatasetSplits) -> None:
    """Stop if any text of the tuning draw also occurs in the study's splits."""
    study_texts = {r["text"] for split in data.SPLITS for r in getattr(study, split)}
    shared = [r["text"] for split in data.SPLITS for r in getattr(tuning, split) if r["text"] in study_texts]
    if shared:
        raise TuningError(f"the tuning draw shares {len(shared)} texts with the study, e.g. {shared[0][:60]!r}: "
                          "change TUNING_SEED_OFFSET")


def check_disjoint_from_every_seed(params: dict, tuning: data.DatasetSplits, tokenizer) -> None:
    """Stop if the tuning draw shares a text with the study's splits under any of the study's seeds
    (params["seeds"]: a multi-seed run trains every one of them on records the tuning must not have seen)."""
    with tempfile.TemporaryDirectory() as folder:  # the study's splits, only to prove the draws share nothing
        for seed in params["seeds"]:
            study = data.build_dataset(dict(params, seed=seed, seeds=[seed]), Path(folder) / f"seed-{seed}",
                                       tokenizer=tokenizer)
            try:
                check_disjoint(study, tuning)
            except TuningError as err:
                raise TuningError(f"study seed {seed}: {err}") from None


def tune_learning_rate(params: dict, arm: str, learning_rates, *, n_eval: int = 64, progress: bool = True) -> dict:
    """Train `arm` (a full-family arm: it starts from the base model) once per learning rate on the tuning
    draw and score each on the draw's held-out notes. Returns the tuning record: held-out loss (nats/token)
    per learning rate and the chosen (lowest) one."""
    spec = arms.parse(arm)
    if not spec.trained or spec.pruned:
        raise TuningError(f"arm {arm!r}: tune a full-family trained arm (full-nodp or full-dp<ε>); "
                          "the pruned arms use their family's learning rate")
    learning_rates = sorted(float(lr) for lr in learning_rates)
    if not learning_rates or min(learning_rates) <= 0:
        raise TuningError(f"learning_rates must be positive numbers (got {learning_rates})")
    tuning = tuning_params(params)
    checks.check_params(tuning)
    tokenizer = models.load_tokenizer(params["model"])
    splits = data.build_dataset(tuning, artifacts.run_paths(tuning).data, tokenizer=tokenizer)
    check_disjoint_from_every_seed(params, splits, tokenizer)
    train, heldout = splits.texts("train"), splits.texts("heldout")
    eval_texts = heldout[:n_eval]
    model, tokenizer = models.load_model(params["model"], device=params.get("device"))  # finetune leaves it untouched
    losses, epsilons, seconds = {}, {}, {}
    for lr in learning_rates:
        started = time.perf_counter()
        config = config_from_params(tuning, spec.epsilon, learning_rate=lr, progress=progress)
        peft_model, result = finetune(model, tokenizer, train, config, heldout)
        losses[lr] = math.log(evaluation.perplexity(peft_model, tokenizer, eval_texts, max_length=config.max_length,
                                                    progress=progress))
        epsilons[lr] = result.epsilon
        seconds[lr] = round(time.perf_counter() - started, 1)
        print(f"learning rate {lr:g}: held-out loss {losses[lr]:.4f} nats/token ({seconds[lr]:.0f} s)", flush=True)
    chosen = min(losses, key=losses.get)
    return artifacts.rounded({
        "profile": params["profile"], "arm": arm, "model": params["model"],
        "tuning_seed": tuning["seed"], "study_seed": int(params["seed"]),
        "n_train_records": len(train), "n_eval_records": len(eval_texts), "eval_max_length": config.max_length,
        "learning_rates": learning_rates, "heldout_loss": [losses[lr] for lr in learning_rates],
        "epsilon": [epsilons[lr] for lr in learning_rates], "seconds": [seconds[lr] for lr in learning_rates],
        "chosen_learning_rate": chosen, "profile_learning_rate": family_learning_rate(params, spec.epsilon),
        "commit": report.commit(),
    })


def family_arm(family: str) -> str:
    """The arm a family is tuned on: "nodp" on full-nodp, "dp<ε>" (e.g. "dp8") on the full-family DP arm at that ε."""
    try:
        return arms.parse(f"full-{family}").name
    except ValueError:
        raise TuningError(f"unknown family {family!r}: tune 'nodp' or 'dp<ε>' (e.g. 'dp8')") from None


def families_to_tune(params: dict, nodp_rates, dp_rates, dp_epsilons=None) -> dict[str, list[float]]:
    """{family: candidate rates}: "nodp" with `nodp_rates`, and "dp<ε>" with `dp_rates` at each of `dp_epsilons`
    (default: the ε of the profile's `dp_learning_rates`); a family without candidates is left out."""
    epsilons = dp_learning_rates(params) if dp_epsilons is None else dp_epsilons
    families = {"nodp": list(nodp_rates)}
    families |= {arms.trained_name("full", epsilon).removeprefix("full-"): list(dp_rates) for epsilon in epsilons}
    return {family: rates for family, rates in families.items() if rates}


def tune_families(params: dict, learning_rates: dict[str, list[float]], *, n_eval: int = 64,
                  progress: bool = True) -> dict:
    """One tuning record per family: {"profile", "families": {"nodp": record, "dp8": record, ...}}, the non-private
    family tuned on full-nodp and each DP family on full-dp<ε>, each over its own candidates (learning_rates[family]);
    a family without candidates is left out."""
    arm_of = {family: family_arm(family) for family in learning_rates}
    families = {family: tune_learning_rate(params, arm_of[family], rates, n_eval=n_eval, progress=progress)
                for family, rates in learning_rates.items() if rates}
    return {"profile": params["profile"], "families": families}


def merged(record: dict, earlier: dict | None) -> dict:
    """`record` with the families of an earlier tuning record of the same profile that it did not tune again, so one
    ε can be tuned without repeating the others."""
    if not earlier or earlier.get("profile") != record["profile"]:
        return record
    return dict(record, families={**earlier["families"], **record["families"]})


def record_path(profile: str):
    """figures/tuning/<profile>.json: the tuning record a profile cites."""
    return artifacts.REPO_ROOT / "figures" / "tuning" / f"{profile}.json"


def tuning_figure(record: dict):
    """Held-out loss against learning rate on the tuning draw, one line per family, each chosen rate marked."""
    plots.use_style()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for family in record["families"].values():
        color = plots.arm_color(family["arm"])
        ax.plot(family["learning_rates"], family["heldout_loss"], marker="o", color=color, label=family["arm"])
        ax.axvline(family["chosen_learning_rate"], color=color, linestyle=":")
    seeds = {family["tuning_seed"] for family in record["families"].values()}
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="held-out loss (nats/token)",
           title=f"tuning on an independent draw (seed {', '.join(map(str, sorted(seeds)))}); dotted: chosen")
    ax.legend()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=profiles.DEFAULT_PROFILE)
    parser.add_argument("--nodp-learning-rates", default="5e-4,1e-3,2e-3",
                        help="comma-separated candidates for the non-private family (tuned on full-nodp; '' skips it)")
    parser.add_argument("--dp-learning-rates", default="2e-3,5e-3,1e-2",
                        help="comma-separated candidates for the DP arms (tuned on full-dp<ε>; '' skips them)")
    parser.add_argument("--dp-epsilons",
                        help="comma-separated ε to tune a DP rate at (default: the profile's dp_learning_rates)")
    parser.add_argument("--n-eval", type=int, default=64, help="held-out notes of the tuning draw that score a rate")
    args = parser.parse_args(argv)
    try:
        params = profiles.get_profile(args.profile)
        nodp, dp = ([float(x) for x in text.split(",") if x.strip()]
                    for text in (args.nodp_learning_rates, args.dp_learning_rates))
        epsilons = None if args.dp_epsilons is None else [float(x) for x in args.dp_epsilons.split(",")]
        record = tune_families(params, families_to_tune(params, nodp, dp, epsilons), n_eval=args.n_eval)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = record_path(args.profile)
    kept = merged(record, artifacts.read_json(path) if path.exists() else None)
    artifacts.write_json(path, kept)
    plots.save(tuning_figure(kept), path.stem, path.parent)
    for chosen in record["families"].values():
        print(f"{path.relative_to(artifacts.REPO_ROOT)}: {chosen['arm']} chose {chosen['chosen_learning_rate']:g} "
              f"(the profile gives it {chosen['profile_learning_rate']:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

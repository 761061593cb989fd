"""What a fine-tuned model gives away about its training data: every attack of the study, on every arm
(notebook 06). Each attack compares members with records the model never saw, and is calibrated so
that "no leak" has a measured null:

- membership inference on the notes, calibrated by the arm's starting model, and the one-run audit's
  scores on the audit canaries (ppt_core.leakage.membership; ppt_core.leakage.audit turns the latter into ε lower
  bounds)
- canaries: each canary's secret gain over the starting model, ranked against the gains of canaries never
  inserted, and its exposure from the exact rank of the secret among every code (ppt_core.leakage.canaries)
- prefix extraction, scored by BERTScore and exact PII (ppt_core.leakage.extraction)

This module is the stage: it checks the settings, draws the attacked records (`attack_records`), runs
every attack on one arm (`attack_arm`) or on every arm, each calibrated by its starting model's scores
(`attack_arms`), and saves the per-record outputs (`save_records`). For a non-private arm the membership
attack is also reported on the members the Poisson sampler actually drew (a trusted evaluator's view:
`sample_counts` never leaves the run folder); for a DP arm it is not, since which records it drew is a
statistic of its training data without noise.

An arm's attack outputs are kept in attacks/arms/<arm>.pkl with a digest of everything the attack read
(`attack_inputs`); run again after one change (notebook 06 by hand), an arm whose digest still matches is read
back instead of attacked, so a learner's new arm is the only one attacked live.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ppt_core import data, models
from ppt_core.dp import privacy
from ppt_core.leakage import audit, canaries, extraction, membership
from ppt_core.leakage.generation import shared_pii
from ppt_core.machine import precision
from ppt_core.run import arms, artifacts, record_files
from ppt_core.run.artifacts import rounded
from ppt_core.scoring import evaluation
from ppt_core.stages import arm_training
from ppt_core.uncertainty import power, stats
from ppt_core.uncertainty.roc import roc_auc
from ppt_core.uncertainty.stats import format_interval


def check_params(params: dict) -> None:
    """The attack settings of a profile are usable."""
    for key in ("n_attack", "attack_prefix_tokens", "attack_suffix_tokens", "n_membership", "n_secret_samples",
                "secret_batch_size", "n_bootstrap", "canary_rank_cap"):
        if int(params[key]) < 1:
            raise ValueError(f"{key} must be >= 1 (got {params[key]})")
    if int(params["n_attack"]) > int(params["n_membership"]):
        raise ValueError(f"n_attack ({params['n_attack']}) must be <= n_membership ({params['n_membership']}): "
                         "the extraction records are the first n_attack membership records")
    for split in ("n_train", "n_heldout"):
        if params.get("data_path") is None and int(params["n_membership"]) > int(params[split]):
            raise ValueError(f"n_membership ({params['n_membership']}) must be <= {split} ({params[split]}): "
                             f"members are training notes and non-members held-out notes; lower n_membership")
    if not 0 < float(params["min_k_percent"]) <= 100:
        raise ValueError(f"min_k_percent must be in (0, 100] (got {params['min_k_percent']})")
    if int(params["attack_prefix_tokens"]) + int(params["attack_suffix_tokens"]) > scoring_length(params):
        raise ValueError(f"attack_prefix_tokens + attack_suffix_tokens ({params['attack_prefix_tokens']} + "
                         f"{params['attack_suffix_tokens']}) must be <= the tokens training kept per record "
                         f"({scoring_length(params)}): an extracted suffix must be text the model was trained on")
    if params["bf16_scoring"] not in ("auto", True, False):
        raise ValueError(f"bf16_scoring must be 'auto', True or False (got {params['bf16_scoring']!r})")


def scoring_length(params: dict) -> int:
    """Tokens per record the membership attack scores: the length training kept, so every scored token was
    trained on."""
    return int(params.get("train_max_length") or params["max_length"])


# --- one arm, every attack --------------------------------------------------------------------------
def attack_records(splits: data.DatasetSplits, params: dict) -> tuple[list[dict], list[dict]]:
    """(members, non-members) for membership inference: n_membership train notes and as many held-out
    notes, drawn under the seed. The first n_attack of each are the extraction attack's records."""
    rng = np.random.default_rng(params["seed"])
    train = [r for r in splits.train if r["kind"] == "note"]
    heldout = [r for r in splits.heldout if r["kind"] == "note"]
    n = min(params["n_membership"], len(train), len(heldout))
    return ([train[i] for i in rng.choice(len(train), n, replace=False)],
            [heldout[i] for i in rng.choice(len(heldout), n, replace=False)])


def score_arm(model, tokenizer, splits: data.DatasetSplits, params: dict, *, audit: bool = True,
              progress: bool = True) -> dict:
    """The forward passes every attack on one arm reads: record_scores of the members and non-members
    (at the trained length), the audit canaries' word log-probabilities (with `audit`; an arm whose trainer
    scored them after every pass reads its audit from that curve instead) and every canary's secret
    log-probability ("canary_secrets", in splits.canaries' order). A starting model's scores are kept and
    passed to its fine-tuned arms (the reference attack, the audit and the canaries' secret gains compare
    the two)."""
    members, nonmembers = attack_records(splits, params)
    bf16 = evaluation.scoring_bf16(params, model)
    kw = dict(batch_size=params["eval_batch_size"], bf16=bf16, progress=progress)
    score = dict(kw, max_length=scoring_length(params), min_k_percent=params["min_k_percent"])
    model.requires_grad_(False)  # scored, never trained: frozen weights, read from a bf16 copy where scoring is bf16
    with evaluation.bf16_weights(model, bf16):
        scores = {"members": membership.record_scores(model, tokenizer, [r["text"] for r in members], **score),
                  "nonmembers": membership.record_scores(model, tokenizer, [r["text"] for r in nonmembers], **score),
                  "audit": membership.audit_logprobs(model, tokenizer, splits.audit, **kw) if audit else None}
    return dict(scores, canary_secrets=canaries.canary_secret_logprobs(model, tokenizer, splits.canaries,
                                                                       batch_size=params["eval_batch_size"]))


def attack_arm(model, tokenizer, splits: data.DatasetSplits, params: dict, *, arm: str,
               start_scores: dict | None = None,
               sample_counts: np.ndarray | None = None, claimed_epsilon: float | None = None,
               audit_curve: dict | None = None, claimed_over_training: list | None = None,
               score_audit: bool | None = None, progress: bool = True) -> tuple[dict, dict]:
    """(summary for results.json, details for tables, figures and records.npz) of every attack on one arm.

    start_scores: score_arm of the arm's starting model (None for base and pruned-noft themselves).
    sample_counts: draws of each record of splits.train by the Poisson sampler (trained arms); used for a
        non-private arm only: which records a DP arm drew is not released (no `sampled_members` for it).
    claimed_epsilon: the accountant's ε of a private arm; its audited lower bound must not exceed it.
    audit_curve: the trainer's audit canary log-probabilities before training and after every expected pass
        (arm_training.audit_curve); the audit is read at every pass, its last point is the arm's audit. Without
        it, the audit reads the arm against its start once, from the scores above.
    claimed_over_training: the accountant's ε after each step of audit_curve (a private arm's): no pass's
        audited bound may exceed its own ε(t).
    score_audit: whether to score the audit canaries on this arm (default: unless audit_curve has them). A
        starting model needs them only for a fine-tuned arm without a curve (attack_arms decides).
    The model is frozen (requires_grad False); what is scored in bf16 (the profile's bf16_scoring) reads its
    weights from a bf16 copy made once (evaluation.bf16_weights): the same products as autocast's casts.
    """
    members, nonmembers = attack_records(splits, params)
    score_audit = audit_curve is None if score_audit is None else score_audit
    scores = score_arm(model, tokenizer, splits, params, audit=score_audit, progress=progress)
    boot = dict(n_boot=params["n_bootstrap"], seed=params["seed"])
    start = start_scores or {}
    member = membership.membership_signals(scores["members"], start.get("members"))
    nonmember = membership.membership_signals(scores["nonmembers"], start.get("nonmembers"))
    start_member = membership.membership_signals(start["members"]) if start else None
    start_nonmember = membership.membership_signals(start["nonmembers"]) if start else None
    inferred, roc = membership.membership_inference(member, nonmember, start_member, start_nonmember, **boot)
    inferred["scored_tokens"] = scoring_length(params)
    drawn = None
    if sample_counts is not None and claimed_epsilon is None:  # a DP arm's draws stay with the trainer
        position = {record["id"]: i for i, record in enumerate(splits.train)}
        drawn = np.array([sample_counts[position[r["id"]]] for r in members])
        kept = drawn >= 1
        inferred["sampled_members"], _ = membership.membership_inference(
            {k: v[kept] for k, v in member.items()}, nonmember,
            {k: v[kept] for k, v in start_member.items()} if start_member else None, start_nonmember, **boot)

    summary = {"membership": inferred}
    audit_score = None
    if start_scores is not None and len(splits.audit):
        included = np.array([r["included"] for r in splits.audit])
        over_training = audit_curve is not None
        if not over_training:  # one point: the trained arm against its start, after training
            audit_curve = {"steps": [0, 1], "passes": [0.0, 1.0], "logprobs": [start_scores["audit"], scores["audit"]]}
            claimed_over_training = [None, claimed_epsilon]
        points = audit.bounds_over_training(audit_curve, included, delta=params["delta"],
                                            claimed=claimed_over_training)
        for point in points:
            audit.check_claim(arm, {"one_run": point["epsilon_lower_one_run"], "fdp": point["epsilon_lower_fdp"]},
                              point["claimed_epsilon"],
                              when=f"after {point['passes']:g} passes" if over_training else "after training")
        audit_score = membership.audit_scores(audit_curve["logprobs"][-1], audit_curve["logprobs"][0])
        most = audit.ceiling(len(included), int(included.sum()), params["delta"])
        summary["audit"] = {"m": len(included), "included": int(included.sum()), "claimed_epsilon": claimed_epsilon,
                            "epsilon_lower_one_run": points[-1]["epsilon_lower_one_run"],
                            "epsilon_lower_fdp": points[-1]["epsilon_lower_fdp"],
                            "ceiling_one_run": most["one_run"], "ceiling_fdp": most["fdp"],
                            "auc": stats.estimate(roc_auc, [audit_score[included], audit_score[~included]], **boot)}
        if over_training:
            summary["audit"]["over_training"] = points

    n_attack = min(params["n_attack"], len(members))
    extract = dict(prefix_tokens=params["attack_prefix_tokens"], suffix_tokens=params["attack_suffix_tokens"],
                   batch_size=params["generation_batch_size"], progress=progress,
                   shared=shared_pii(splits) if params.get("data_path") else ())
    member_rows = extraction.extraction_attack(model, tokenizer, members[:n_attack], **extract)
    heldout_rows = extraction.extraction_attack(model, tokenizer, nonmembers[:n_attack], **extract)
    perplexity = {r["id"]: p for group, s in ((members, scores["members"]), (nonmembers, scores["nonmembers"]))
                  for r, p in zip(group, s["perplexity"])}
    summary["extraction"] = extraction.extraction_summary(
        member_rows, heldout_rows, np.array([perplexity[r["id"]] for r in member_rows]),
        np.array([perplexity[r["id"]] for r in heldout_rows]), **boot)

    canary_rows = []
    if start_scores is not None:  # a starting model saw no canary: the reference canaries are each arm's null
        bf16 = evaluation.scoring_bf16(params, model)
        with evaluation.bf16_weights(model, bf16):
            canary_rows = canaries.canary_exposures(model, tokenizer, splits.canaries,
                                                    rank_cap=params["canary_rank_cap"],
                                                    n_samples=params["n_secret_samples"], seed=params["seed"],
                                                    batch_size=params["secret_batch_size"], bf16=bf16,
                                                    progress=progress)
        extracted = canaries.canary_extraction(model, tokenizer, splits.canaries,
                                               batch_size=params["generation_batch_size"], progress=progress)
        gains = scores["canary_secrets"] - start_scores["canary_secrets"]  # nats the arm gained on each secret
        for row, hit, gain in zip(canary_rows, extracted, gains):
            row["greedy_extracted"], row["secret_gain"] = hit, float(gain)
        summary["canaries"] = canaries.canary_summary(canary_rows,
                                                      secret_space=10 ** int(splits.canaries[0]["secret_digits"]),
                                                      rank_cap=params["canary_rank_cap"])
    details = {"scores": scores, "signals": {"members": member, "nonmembers": nonmember}, "roc": roc,
               "sample_counts": drawn, "audit_scores": audit_score, "extraction_rows": member_rows + heldout_rows,
               "canary_rows": canary_rows}
    return rounded(summary), details


def attack_arms(params: dict, arm_names: Sequence[str], splits: data.DatasetSplits, *,
                progress: bool = True) -> tuple[dict, dict]:
    """(summaries, details) of attack_arm on every arm of `arm_names`, each by arm in that order.

    Each fine-tuned arm is calibrated by its starting model (its `start`: base or pruned-noft), whose
    scores are found by that name: the starting models are attacked first wherever they stand in
    `arm_names`, and a fine-tuned arm whose start is not among the arms is refused. A fine-tuned arm also
    brings its trainer's record of which members the Poisson sampler drew and, if private, the ε its
    accountant claims (an audited lower bound above it stops the run: audit.check_claim).
    """
    missing = sorted({arms.parse(name).start for name in arm_names} - set(arm_names))
    if missing:
        raise ValueError(f"the fine-tuned arms are calibrated by their starting models, but {', '.join(missing)} "
                         f"is not among the arms to attack ({', '.join(arm_names)}): add it")
    paths = artifacts.run_paths(params)
    curves = {name: arm_training.load_audit_curve(params, name) for name in arm_names if arms.parse(name).trained}
    # A starting model's own audit scores serve only a fine-tuned arm whose trainer kept no audit curve
    uncurved_starts = {arms.parse(name).start for name, curve in curves.items() if curve is None}
    summaries, details, start_scores = {}, {}, {}
    for name in tqdm(sorted(arm_names, key=lambda n: arms.parse(n).trained), desc="arms", disable=not progress):
        arm = arms.parse(name)
        trained = {"score_audit": name in uncurved_starts}
        if arm.trained:
            guarantee = artifacts.read_json(paths.model(name) / "training.json")
            curve = curves[name]
            trained = dict(sample_counts=arm_training.load_sample_counts(params, name),
                           claimed_epsilon=guarantee["epsilon"], start_scores=start_scores[arm.start],
                           audit_curve=curve, claimed_over_training=claimed_after_steps(guarantee, curve),
                           score_audit=curve is None)
        inputs = attack_inputs(params, name, score_audit=trained["score_audit"])
        kept = kept_attack(paths, name, inputs)
        if kept is not None:
            tqdm.write(f"{name}: read back from {paths.root / 'attacks' / 'arms'} (attacked before on these very "
                       "inputs)")
            summaries[name], details[name] = kept
        else:
            model, tokenizer = models.load_arm(params, name)
            summaries[name], details[name] = attack_arm(model, tokenizer, splits, params, arm=name, progress=False,
                                                        **trained)
            keep_attack(paths, name, inputs, summaries[name], details[name])
        if not arm.trained:
            start_scores[name] = details[name]["scores"]
    return {name: summaries[name] for name in arm_names}, {name: details[name] for name in arm_names}


ARM_CHOICE = ("epsilons", "dose_epsilons", "train_arms", "profile", "run_name", "figures_dir", "device", "nproc")
#             settings that choose which arms exist, or where a run runs: not how one arm is attacked


def attack_inputs(params: dict, name: str, *, score_audit: bool) -> str | None:
    """A digest of everything attacking arm `name` reads, or None where there is nothing to hash (a run without its
    data folder, a fine-tuned arm saved without its training digest). The model: a fine-tuned arm by its training's
    digest (arm_training.training_inputs, which covers its starting model and records), pruned-noft by its checkpoint's
    content, base by its spec (a local folder by its content); the run's data files; every setting but those that
    only choose which arms exist (ARM_CHOICE); whether the audit canaries are scored; the precision's machine
    kind; the library code."""
    paths = artifacts.run_paths(params)
    if not paths.data.exists():
        return None
    if arms.parse(name).trained:
        result = paths.model(name) / arm_training.RESULT_FILE
        model = artifacts.read_json(result).get("inputs") if result.exists() else None
        if model is None:
            return None
    else:
        checkpoint = Path(arms.checkpoint(params, name))
        model = artifacts.content_digest(checkpoint) if checkpoint.exists() else str(checkpoint)
    described = {"arm": name, "model": model, "data": artifacts.content_digest(paths.data),
                 "settings": {k: v for k, v in params.items() if k not in ARM_CHOICE}, "score_audit": score_audit,
                 "machine": precision.machine_key(threads=False), "code": artifacts.code_fingerprint()}
    return artifacts.record_digest(described)


def kept_attack(paths: artifacts.RunPaths, name: str, inputs: str | None) -> tuple[dict, dict] | None:
    """(summary, details) of arm `name` attacked before on the same `inputs` (attack_inputs), else None."""
    path = paths.root / "attacks" / "arms" / f"{name}.pkl"
    if inputs is None or not path.exists():
        return None
    with open(path, "rb") as f:  # written by keep_attack in this run folder, never taken from elsewhere
        kept = pickle.load(f)
    return (kept["summary"], kept["details"]) if kept["inputs"] == inputs else None


def keep_attack(paths: artifacts.RunPaths, name: str, inputs: str | None, summary: dict, details: dict) -> None:
    """Keep arm `name`'s attack outputs with their `inputs` digest (nothing without one)."""
    if inputs is None:
        return
    with artifacts.atomic_path(paths.root / "attacks" / "arms" / f"{name}.pkl") as tmp, open(tmp, "wb") as f:
        pickle.dump({"inputs": inputs, "summary": summary, "details": details}, f)


def claimed_after_steps(guarantee: dict, curve: dict | None) -> list | None:
    """The accountant's ε after each step of an arm's audit curve, from its training.json (None for a
    non-private arm, or without a curve): a fresh accountant per step count, as privacy.accountant_epsilon."""
    if curve is None or not guarantee["private"]:
        return None
    return [privacy.accountant_epsilon(guarantee["noise_multiplier"], guarantee["sample_rate"], step,
                                       guarantee["delta"], guarantee["accountant"]) for step in curve["steps"]]


def save_records(paths: artifacts.RunPaths, splits: data.DatasetSplits, params: dict,
                 details: dict[str, dict]) -> None:
    """The per-record outputs of every attacked arm (details: attack_arm's, by arm): each arm's extraction and
    canary rows in attacks/<arm>.jsonl, to read, and the arrays the paired comparisons of ppt_core.study.verdicts
    resample in attacks/records.npz (its keys: ppt_core.run.record_files)."""
    for arm, d in details.items():
        artifacts.write_jsonl(paths.root / "attacks" / f"{arm}.jsonl", d["extraction_rows"] + d["canary_rows"])
    members, nonmembers = attack_records(splits, params)
    arrays = {"members/ids": np.array([r["id"] for r in members]),
              "nonmembers/ids": np.array([r["id"] for r in nonmembers]),
              "canaries/ids": np.array([c["id"] for c in splits.canaries]),
              "canaries/repetitions": np.array([c["repetitions"] for c in splits.canaries]),
              "audit/included": np.array([r["included"] for r in splits.audit], dtype=bool)}
    for arm, d in details.items():
        for group in ("members", "nonmembers"):
            for signal, values in d["signals"][group].items():
                arrays[f"{arm}/{group}/{signal}"] = values
        if d["sample_counts"] is not None:
            arrays[f"{arm}/members/sampled"] = d["sample_counts"]
        for key in ("exposure_low", "exposure_high", "secret_gain") if d["canary_rows"] else ():
            arrays[f"{arm}/canaries/{key}"] = np.array([row[key] for row in d["canary_rows"]])
        if d["audit_scores"] is not None:
            arrays[f"{arm}/audit/scores"] = d["audit_scores"]
    record_files.save(paths, "attacks", arrays)


# --- what notebook 06 shows ----------------------------------------------------------------------------
def membership_table(attacks: dict) -> pd.DataFrame:
    """Per arm and signal of results["attacks"]: AUC and ΔAUC vs the start with their 95% intervals, beside it
    the chance that an arm leaking nothing reads "no leak" at this many members (power.null_exclusion_power),
    and the TPR at each resolvable low FPR."""
    rows = {}
    margin = power.MINIMAL_AUC_EFFECT
    for arm, arm_attacks in attacks.items():
        members = arm_attacks["membership"].get("members")
        null = round(power.null_exclusion_power(members, margin), 2) if members else None
        for signal, s in arm_attacks["membership"]["signals"].items():
            rows[(arm, signal)] = {"AUC [95%]": format_interval(s["auc"]),
                                   "ΔAUC vs start [95%]": format_interval(s.get("delta_auc_vs_start")),
                                   f"P(no leak reads ΔAUC ≤ {margin:g})": null,
                                   **{f"TPR @ FPR {fpr}": tpr for fpr, tpr in s["tpr_at_fpr"].items()}}
    return pd.DataFrame(rows).T


def sampled_members_table(attacks: dict) -> pd.DataFrame:
    """Per non-private fine-tuned arm: the reference attack restricted to the members the Poisson sampler drew
    at least once (attack_arm's `sampled_members`), beside how many members there are. A DP arm has none:
    which records it drew is trainer-only."""
    rows = {}
    for arm, arm_attacks in attacks.items():
        inferred = arm_attacks["membership"]
        if "sampled_members" in inferred:
            sampled = inferred["sampled_members"]
            reference = sampled["signals"]["reference"]
            rows[arm] = {"members drawn ≥ 1 time": sampled["members"], "of": inferred["members"],
                         "reference AUC [95%]": format_interval(reference["auc"]),
                         "ΔAUC vs start [95%]": format_interval(reference["delta_auc_vs_start"])}
    return pd.DataFrame(rows).T


def canary_table(attacks: dict) -> pd.DataFrame:
    """Per arm with canaries in results["attacks"]: per repetition count, how many canaries gain more over the
    starting model on their secret than every reference canary (above the null), how many were ranked exactly
    (exposure), of how many; the reference canaries and their highest gain (nats); and greedy extraction at the
    highest count. The test that decides is the leak verdict's (verdicts.leak_table)."""
    rows = {}
    for arm, arm_attacks in attacks.items():
        if "canaries" in arm_attacks:
            summary = arm_attacks["canaries"]
            highest = summary["by_repetitions"][str(summary["highest_repetitions"])]
            rows[arm] = {f"{k} reps: above null / exact / of": f"{v['above_reference_band']} / {v['exact']} / "
                                                               f"{v['canaries']}"
                         for k, v in summary["by_repetitions"].items() if k != "0"}
            rows[arm]["reference canaries"] = summary["n_reference"]
            rows[arm]["reference gain max (nats)"] = summary["reference_gain_max"]
            rows[arm]["greedy extraction at highest reps"] = highest["greedy_extracted"]
    return pd.DataFrame(rows).T


def extraction_table(attacks: dict) -> pd.DataFrame:
    """Per arm of results["attacks"]: mean BERTScore F1 and mean perplexity of the true continuation, of members
    and of held-out records, each gap with its 95% interval and its power at this size (the smallest gap these
    records detect with 80% power; the records a side the observed gap would need, "–" where it points the
    wrong way), the PII extraction rate of each, and how many member records were attacked."""
    rows = {}
    for arm, arm_attacks in attacks.items():
        extracted = arm_attacks["extraction"]
        bertscore, perplexity = extracted["bertscore_f1"], extracted["perplexity"]
        rows[arm] = {
            "BERTScore members": bertscore["members"],
            "BERTScore held-out": bertscore["heldout"],
            "gap [95%]": format_interval(bertscore["members_minus_heldout"]),
            "gap detectable (80%)": bertscore["detectable_difference"],
            "records a side for this gap": _records_needed(bertscore),
            "perplexity members": perplexity["members"],
            "perplexity held-out": perplexity["heldout"],
            "perplexity gap [95%]": format_interval(perplexity["members_minus_heldout"]),
            "records a side for it": _records_needed(perplexity),
            "PII extracted members": extracted["pii_extraction_rate"]["members"],
            "PII extracted held-out": extracted["pii_extraction_rate"]["heldout"],
            "records": extracted["records"]["members"],
        }
    return pd.DataFrame(rows).T


def _records_needed(difference: dict) -> str:
    """The records a side a members − held-out difference needs (extraction._mean_difference_power), "–" where
    it points the wrong way."""
    needed = difference["records_needed"]
    return "–" if needed is None else f"{needed:,}"


def audit_over_training_table(attacks: dict) -> pd.DataFrame:
    """Per fine-tuned arm and expected pass: the accountant's ε after it (∞: non-private) and the audit's lower
    bounds (f-DP, the verdicts' one; one-run), with the audit AUC."""
    rows = {}
    for arm, arm_attacks in attacks.items():
        for point in (arm_attacks.get("audit") or {}).get("over_training", []):
            claimed = point["claimed_epsilon"]
            rows[(arm, point["passes"])] = {"claimed ε(t)": np.inf if claimed is None else claimed,
                                            "lower bound, f-DP": point["epsilon_lower_fdp"],
                                            "lower bound, one-run": point["epsilon_lower_one_run"],
                                            "audit AUC": point["auc"]}
    table = pd.DataFrame(rows).T
    table.index.names = ["arm", "passes"]
    return table


def audit_table(attacks: dict) -> pd.DataFrame:
    """Per arm of results["attacks"] with an audit: the claimed ε (∞: non-private), the audit's ε lower bounds
    (one run, f-DP), its AUC with the 95% interval, and the audit canaries (included)."""
    rows = {}
    for arm, arm_attacks in attacks.items():
        if "audit" in arm_attacks:
            result = arm_attacks["audit"]
            rows[arm] = {"claimed ε": result["claimed_epsilon"] if result["claimed_epsilon"] is not None else np.inf,
                         "lower bound, one-run": result["epsilon_lower_one_run"],
                         "lower bound, f-DP": result["epsilon_lower_fdp"],
                         "audit AUC [95%]": format_interval(result["auc"]),
                         "m (included)": f"{result['m']} ({result['included']})"}
    return pd.DataFrame(rows).T

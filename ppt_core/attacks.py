"""What a fine-tuned model gives away about its training data: three attacks, members vs non-members.

- Prefix extraction (Carlini et al., "Extracting Training Data from Large Language Models", 2021):
  prompt with a record's first `attack_prefix_tokens` tokens, decode greedily, and compare the
  continuation with the record's true suffix (BERTScore, and exact match of the PII fields the
  suffix holds). Training records against as many held-out records: the gap is the leak.
- Membership inference: score each record by its loss, its zlib-calibrated loss (Carlini et al.
  2021: log-perplexity / zlib entropy) and Min-K% probability (Shi et al., 2024: the mean
  log-probability of the k% least likely tokens); ROC AUC and TPR at low FPR, train notes (members)
  against held-out notes (non-members). One forward pass per record gives all three scores.
- Canary exposure (Carlini et al., "The Secret Sharer", 2019): exposure = log2|R| - log2 rank of the
  true secret among the secret space R, ranked by the model's likelihood. Exact when the space is
  small enough to score in full; otherwise estimated from the secret's rank among `n_secret_samples`
  random secrets (which resolves at most log2(n + 1) bits), extrapolated from a normal fitted to the
  samples' log-perplexities when the secret beats every sample (see `exposure`). Reference canaries,
  never inserted, show the exposure of a secret the model never saw (about 1/ln 2 = 1.44 bits on average).
Also: does greedy decoding from a canary's prefix produce its secret?

Every attack compares members with records that were never trained on; a metric is reported for
each group and for the gap, with a bootstrap interval over records.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import scipy.stats
import torch
from tqdm.auto import tqdm

from ppt_core import bertscore, data, evaluation, stats, tokens
from ppt_core.artifacts import rounded
from ppt_core.generation import generate_ids


def check_params(params: dict) -> None:
    """The attack settings of a profile are usable."""
    for key in ("n_attack", "attack_prefix_tokens", "attack_suffix_tokens", "n_membership", "n_secret_samples",
                "secret_batch_size", "n_bootstrap"):
        if int(params[key]) < 1:
            raise ValueError(f"{key} must be >= 1 (got {params[key]})")
    if int(params["n_attack"]) > int(params["n_membership"]):
        raise ValueError(f"n_attack ({params['n_attack']}) must be <= n_membership ({params['n_membership']}): "
                         "the extraction records are the first n_attack membership records")
    if not 0 < float(params["min_k_percent"]) <= 100:
        raise ValueError(f"min_k_percent must be in (0, 100] (got {params['min_k_percent']})")
    if int(params["attack_prefix_tokens"]) + int(params["attack_suffix_tokens"]) > int(params["max_length"]):
        raise ValueError(f"attack_prefix_tokens + attack_suffix_tokens must be <= max_length ({params['max_length']})")


# --- per-record scores: one forward pass ----------------------------------------------------------
def record_scores(model, tokenizer, texts: Sequence[str], *, max_length: int, min_k_percent: float,
                  batch_size: int = 16, progress: bool = True) -> dict[str, np.ndarray]:
    """Per record: tokens scored, loss (nats/token), perplexity, zlib_ratio (total NLL in nats per
    zlib-compressed byte) and min_k_logprob (mean log-prob of its min_k_percent% least likely tokens)."""
    logprobs = evaluation.token_logprobs(model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
                                         progress=progress)
    loss = np.array([-lp.mean() for lp in logprobs])
    zlib_bytes = np.array([len(zlib.compress(text.encode("utf-8"))) for text in texts])
    k = [max(1, int(np.ceil(len(lp) * min_k_percent / 100))) for lp in logprobs]
    return {
        "tokens": np.array([len(lp) for lp in logprobs]),
        "loss": loss,
        "perplexity": np.exp(loss),
        "zlib_ratio": np.array([-lp.sum() for lp in logprobs]) / zlib_bytes,
        "min_k_logprob": np.array([np.sort(lp)[:n].mean() for lp, n in zip(logprobs, k)]),
    }


# Membership signals, oriented so that a higher value means "more likely a member".
MEMBERSHIP_SIGNALS: dict[str, Callable[[dict], np.ndarray]] = {
    "loss": lambda s: -s["loss"],
    "zlib": lambda s: -s["zlib_ratio"],
    "min_k": lambda s: s["min_k_logprob"],
}


# --- ROC --------------------------------------------------------------------------------------------
def roc_curve(member: np.ndarray, nonmember: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1); higher score = member."""
    scores = np.concatenate([member, nonmember])
    is_member = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
    order = np.argsort(-scores, kind="stable")
    scores, is_member = scores[order], is_member[order]
    last_of_tie = np.r_[np.diff(scores) != 0, True]  # a threshold admits all tied scores at once
    tpr = np.cumsum(is_member)[last_of_tie] / len(member)
    fpr = np.cumsum(1 - is_member)[last_of_tie] / len(nonmember)
    return np.r_[0.0, fpr], np.r_[0.0, tpr]


def roc_auc(member: np.ndarray, nonmember: np.ndarray) -> float:
    """Area under the ROC curve: P(member score > non-member score), ties counting half."""
    ranks = scipy.stats.rankdata(np.concatenate([member, nonmember]))
    n_member, n_nonmember = len(member), len(nonmember)
    return float((ranks[:n_member].sum() - n_member * (n_member + 1) / 2) / (n_member * n_nonmember))


def tpr_at_fpr(member: np.ndarray, nonmember: np.ndarray, max_fpr: float) -> float:
    """The highest true-positive rate of any threshold whose false-positive rate is <= max_fpr."""
    fpr, tpr = roc_curve(member, nonmember)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def membership_inference(member_scores: dict, nonmember_scores: dict, *, n_boot: int = 1000,
                         seed: int = 0) -> tuple[dict, dict]:
    """(summary, curves): per signal its AUC (95% bootstrap interval) and TPR at 1% and 10% FPR;
    curves[signal] = (fpr, tpr). Inputs are record_scores() of members and of non-members."""
    summary, curves = {}, {}
    for name, signal in MEMBERSHIP_SIGNALS.items():
        member, nonmember = signal(member_scores), signal(nonmember_scores)
        summary[name] = {
            "auc": stats.estimate(roc_auc, [member, nonmember], n_boot=n_boot, seed=seed),
            "tpr_at_1pct_fpr": tpr_at_fpr(member, nonmember, 0.01),
            "tpr_at_10pct_fpr": tpr_at_fpr(member, nonmember, 0.10),
        }
        curves[name] = roc_curve(member, nonmember)
    summary["members"], summary["nonmembers"] = len(member_scores["loss"]), len(nonmember_scores["loss"])
    return summary, curves


# --- prefix extraction ------------------------------------------------------------------------------
def extraction_attack(model, tokenizer, records: Sequence[dict], *, prefix_tokens: int, suffix_tokens: int,
                      batch_size: int = 16, progress: bool = True) -> list[dict]:
    """Per record (those longer than prefix_tokens): the greedy continuation of its first prefix_tokens
    tokens against its next suffix_tokens tokens: BERTScore F1, exact suffix match, and which PII
    values lying wholly in the true suffix the continuation reproduces verbatim."""
    ids = tokenizer([r["text"] for r in records], add_special_tokens=False)["input_ids"]
    usable = [(record, seq) for record, seq in zip(records, ids) if len(seq) > prefix_tokens]
    generated = generate_ids(model, tokenizer, [seq[:prefix_tokens] for _, seq in usable],
                             max_new_tokens=suffix_tokens, batch_size=batch_size, progress=progress)
    rows = []
    for (record, seq), new in zip(usable, generated):
        prefix = tokenizer.decode(seq[:prefix_tokens])
        true_ids = seq[prefix_tokens:prefix_tokens + suffix_tokens]
        true_suffix, continuation = tokenizer.decode(true_ids), tokenizer.decode(new)
        in_suffix = {field: value for field, value in (record.get("pii") or {}).items()
                     if value in true_suffix and value not in prefix}
        rows.append({
            "id": record["id"],
            "prefix": prefix,
            "true_suffix": true_suffix,
            "continuation": continuation,
            "exact_suffix": new == true_ids,
            "pii_in_suffix": sorted(in_suffix),
            "pii_extracted": sorted(field for field, value in in_suffix.items() if value in continuation),
        })
    scores = bertscore.f1([r["continuation"] for r in rows], [r["true_suffix"] for r in rows])
    for row, score in zip(rows, scores):
        row["bertscore_f1"] = float(score)
    return rows


def _members_vs_heldout(member: np.ndarray, heldout: np.ndarray, statistic=np.mean, **boot) -> dict:
    """A statistic on members, on held-out records, and their difference with its bootstrap interval."""
    member, heldout = np.asarray(member, dtype=float), np.asarray(heldout, dtype=float)
    return {
        "members": float(statistic(member)),
        "heldout": float(statistic(heldout)),
        "members_minus_heldout": stats.estimate(lambda a, b: statistic(a) - statistic(b), [member, heldout], **boot),
    }


def _pii_rate(rows: np.ndarray) -> float:
    """Extracted PII fields over PII fields present in the true suffixes (rows: [extracted, present])."""
    present = rows[:, 1].sum()
    return float(rows[:, 0].sum() / present) if present else float("nan")


def extraction_summary(member_rows: list[dict], heldout_rows: list[dict], member_perplexity: np.ndarray,
                       heldout_perplexity: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Members vs held-out: mean BERTScore F1, exact-suffix rate, PII extraction rate, mean perplexity."""
    boot = dict(n_boot=n_boot, seed=seed)

    def column(rows, key):
        return np.array([row[key] for row in rows], dtype=float)

    def pii(rows):
        return np.array([[len(r["pii_extracted"]), len(r["pii_in_suffix"])] for r in rows], dtype=float).reshape(-1, 2)

    return {
        "records": {"members": len(member_rows), "heldout": len(heldout_rows)},
        "bertscore_f1": _members_vs_heldout(column(member_rows, "bertscore_f1"), column(heldout_rows, "bertscore_f1"), **boot),
        "exact_suffix_rate": _members_vs_heldout(column(member_rows, "exact_suffix"), column(heldout_rows, "exact_suffix"), **boot),
        "pii_extraction_rate": _members_vs_heldout(pii(member_rows), pii(heldout_rows), statistic=_pii_rate, **boot),
        "pii_fields_in_suffix": {"members": int(pii(member_rows)[:, 1].sum()), "heldout": int(pii(heldout_rows)[:, 1].sum())},
        "perplexity": _members_vs_heldout(member_perplexity, heldout_perplexity, **boot),
    }


# --- canaries ---------------------------------------------------------------------------------------
def _common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    first = sequences[0]
    length = len(first)
    for seq in sequences[1:]:
        length = min(length, len(seq))
        for i in range(length):
            if seq[i] != first[i]:
                length = i
                break
    return length


@torch.inference_mode()
def secret_logprobs(model, tokenizer, prefix: str, secrets: Sequence[str], *, batch_size: int = 128) -> np.ndarray:
    """log p(prefix + secret) - log p(shared prefix) for each secret, in nats: the part of the canary's
    log-likelihood that depends on the secret, so ranking secrets by it ranks the whole canaries.

    The shared prefix runs through the model once; its KV cache is copied across each batch of
    candidate secrets, which then cost only their own few tokens.
    """
    device = next(model.parameters()).device
    ids = tokenizer([prefix + secret for secret in secrets], add_special_tokens=False)["input_ids"]
    n_prefix = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    # Tokens shared by every candidate; fewer than the prefix's own when a tokenizer merges across
    # the boundary, in which case those prefix tokens are scored with the secret (still exact).
    shared = min(n_prefix, _common_prefix_length(ids))
    if shared < 1:
        raise ValueError(f"canary prefix {prefix!r} shares no token across candidate secrets")
    context = model(input_ids=torch.tensor([ids[0][:shared]], device=device), use_cache=True)
    first_logprobs = torch.log_softmax(context.logits[0, -1].float(), dim=-1)
    out = []
    for chunk in tokens.batched([seq[shared:] for seq in ids], batch_size):
        width = max(len(seq) for seq in chunk)
        rest = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(chunk), width), dtype=torch.long, device=device)
        for row, seq in enumerate(chunk):
            rest[row, :len(seq)] = torch.tensor(seq, device=device)
            mask[row, :len(seq)] = 1
        total = first_logprobs[rest[:, 0]]
        if width > 1:
            cache = copy.deepcopy(context.cache)
            cache.batch_repeat_interleave(len(chunk))
            # The last token's output would predict what follows the secret: not needed.
            attention = torch.cat([torch.ones((len(chunk), shared), dtype=torch.long, device=device), mask[:, :-1]], 1)
            logits = model(input_ids=rest[:, :-1], attention_mask=attention, cache=cache,
                           use_cache=True).logits.float()
            targets = rest[:, 1:]
            picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            total = total + (picked * mask[:, 1:]).sum(dim=1)
        out.append(total.cpu().numpy().astype(np.float64))
    return np.concatenate(out)


def exposure(true_logprob: float, candidate_logprobs: np.ndarray, space_size: int, *, exhaustive: bool) -> dict:
    """Exposure (bits) of a secret from its log-likelihood and those of other secrets of the space.

    exhaustive: the candidates are every other secret of the space, and the rank is exact.
    Otherwise they are n uniform samples, k of which the model finds more likely than the secret:
    `exposure_sampled` = -log2((k+1)/(n+1)) estimates log2|R| - log2 rank, but cannot exceed log2(n+1).
    When the secret beats every sample (k = 0) the rank lies beyond what sampling resolves, and the
    headline `exposure` extrapolates instead, as Carlini et al. (2019, sec. 4.3) do: from a normal
    fitted to the samples' log-perplexities (a skew-normal's third parameter is too unstable to fit
    from a few hundred samples), kept between log2(n+1) and log2|R|. `exposure_normal_fit` is that
    extrapolation for every secret.
    """
    candidate_logprobs = np.asarray(candidate_logprobs, dtype=float)
    above = int((candidate_logprobs > true_logprob).sum())
    ties = int((candidate_logprobs == true_logprob).sum())
    if exhaustive:
        rank = 1 + above + ties / 2
        return {"exposure": float(np.log2(space_size) - np.log2(rank)), "rank": rank, "method": "exact rank"}
    n = len(candidate_logprobs)
    sampled = float(-np.log2((above + ties / 2 + 1) / (n + 1)))
    # In log-perplexity (bits) a smaller value is a more likely secret: exposure = -log2 CDF(secret's value).
    log_perplexity = -candidate_logprobs / np.log(2)
    mean, sd = log_perplexity.mean(), max(log_perplexity.std(ddof=1), 1e-12)
    fitted = float(-scipy.stats.norm.logcdf(-true_logprob / np.log(2), mean, sd) / np.log(2))
    fitted = min(fitted, float(np.log2(space_size)))
    beyond = above + ties == 0
    return {
        "exposure": min(max(fitted, sampled), float(np.log2(space_size))) if beyond else sampled,
        "exposure_sampled": sampled,
        "exposure_normal_fit": fitted,
        "samples_more_likely": above,
        "method": f"rank among {n} sampled secrets; normal-fit extrapolation when the secret beats them all",
    }


def candidate_secrets(canary: dict, n_samples: int, seed: int) -> tuple[list[str], bool]:
    """(secrets other than the canary's, exhaustive): the whole space when it has <= n_samples + 1
    secrets, else n_samples uniform draws (seeded per canary, so every arm ranks against the same)."""
    digits = int(canary["secret_digits"])
    space = 10**digits
    if space <= n_samples + 1:
        return [f"{v:0{digits}d}" for v in range(space) if f"{v:0{digits}d}" != canary["secret"]], True
    rng = np.random.default_rng([seed, int(canary["id"].rsplit("-", 1)[1])])
    draws = [f"{v:0{digits}d}" for v in rng.integers(0, space, n_samples + 1)]
    return [s for s in draws if s != canary["secret"]][:n_samples], False


def canary_exposure(score_secrets: Callable[[str, list[str]], np.ndarray], canaries: Sequence[dict], *,
                    n_samples: int, seed: int = 0, progress: bool = True) -> list[dict]:
    """Per canary: its repetitions and exposure (see `exposure`). score_secrets(prefix, secrets)
    returns each secret's log-likelihood after the prefix (e.g. a partial of secret_logprobs)."""
    rows = []
    for canary in tqdm(canaries, desc="canaries", disable=not progress, leave=False):
        candidates, exhaustive = candidate_secrets(canary, n_samples, seed)
        scores = score_secrets(canary["prefix"], [canary["secret"]] + candidates)
        result = exposure(scores[0], scores[1:], 10 ** int(canary["secret_digits"]), exhaustive=exhaustive)
        rows.append({"id": canary["id"], "repetitions": canary["repetitions"], "secret_logprob": float(scores[0]),
                     **result})
    return rows


def canary_extraction(model, tokenizer, canaries: Sequence[dict], *, batch_size: int = 16,
                      progress: bool = True) -> list[bool]:
    """For each canary: does greedy decoding from its prefix produce its secret?"""
    prompts = tokenizer([c["prefix"] for c in canaries], add_special_tokens=False)["input_ids"]
    longest = max(len(tokenizer(c["secret"], add_special_tokens=False)["input_ids"]) for c in canaries)
    generated = generate_ids(model, tokenizer, prompts, max_new_tokens=longest + 1, batch_size=batch_size,
                             progress=progress)
    return [tokenizer.decode(new).lstrip().startswith(c["secret"]) for c, new in zip(canaries, generated)]


def canary_summary(rows: list[dict], secret_space: int) -> dict:
    """Per repetition count ("0" = reference canaries): mean, min and max exposure and the share
    of canaries whose secret greedy decoding produces."""
    by_repetitions = {}
    for repetitions in sorted({row["repetitions"] for row in rows}):
        group = [row for row in rows if row["repetitions"] == repetitions]
        values = np.array([row["exposure"] for row in group])
        by_repetitions[str(repetitions)] = {
            "canaries": len(group),
            "exposure_mean": float(values.mean()),
            "exposure_min": float(values.min()),
            "exposure_max": float(values.max()),
            "greedy_extracted": float(np.mean([row["greedy_extracted"] for row in group])),
        }
    highest = str(max(row["repetitions"] for row in rows))
    return {
        "by_repetitions": by_repetitions,
        "highest_repetitions": int(highest),
        "exposure_at_highest": by_repetitions[highest]["exposure_mean"],
        "exposure_reference": by_repetitions.get("0", {}).get("exposure_mean"),
        "method": rows[0]["method"],
        "secret_space": secret_space,
    }


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


def attack_arm(model, tokenizer, splits: data.DatasetSplits, params: dict, *, progress: bool = True) -> tuple[dict, dict]:
    """(summary for results.json, details for tables and figures) of every attack on one model."""
    members, nonmembers = attack_records(splits, params)
    score = dict(max_length=params["max_length"], min_k_percent=params["min_k_percent"],
                 batch_size=params["eval_batch_size"], progress=progress)
    member_scores = record_scores(model, tokenizer, [r["text"] for r in members], **score)
    nonmember_scores = record_scores(model, tokenizer, [r["text"] for r in nonmembers], **score)
    boot = dict(n_boot=params["n_bootstrap"], seed=params["seed"])
    membership, roc = membership_inference(member_scores, nonmember_scores, **boot)

    n_attack = min(params["n_attack"], len(members))
    extract = dict(prefix_tokens=params["attack_prefix_tokens"], suffix_tokens=params["attack_suffix_tokens"],
                   batch_size=params["generation_batch_size"], progress=progress)
    member_rows = extraction_attack(model, tokenizer, members[:n_attack], **extract)
    heldout_rows = extraction_attack(model, tokenizer, nonmembers[:n_attack], **extract)
    perplexity = {r["id"]: p for group, s in ((members, member_scores), (nonmembers, nonmember_scores))
                  for r, p in zip(group, s["perplexity"])}
    extraction = extraction_summary(member_rows, heldout_rows, np.array([perplexity[r["id"]] for r in member_rows]),
                                    np.array([perplexity[r["id"]] for r in heldout_rows]), **boot)

    canary_rows = canary_exposure(
        lambda prefix, secrets: secret_logprobs(model, tokenizer, prefix, secrets, batch_size=params["secret_batch_size"]),
        splits.canaries, n_samples=params["n_secret_samples"], seed=params["seed"], progress=progress)
    extracted = canary_extraction(model, tokenizer, splits.canaries, batch_size=params["generation_batch_size"],
                                  progress=progress)
    for row, hit in zip(canary_rows, extracted):
        row["greedy_extracted"] = hit
    canaries = canary_summary(canary_rows, 10 ** int(splits.canaries[0]["secret_digits"]))

    summary = rounded({"membership": membership, "extraction": extraction, "canaries": canaries})
    details = {"roc": roc, "extraction_rows": member_rows + heldout_rows, "canary_rows": canary_rows,
               "member_scores": member_scores, "nonmember_scores": nonmember_scores}
    return summary, details


# --- reading the results ----------------------------------------------------------------------------
def clear_gaps(summary: dict) -> dict[str, str]:
    """The attacks that separate members from non-members on one arm, each with its evidence:
    membership: some signal's AUC interval lies above 0.5; extraction: the BERTScore gap's interval lies
    above 0; canaries: the mean exposure at the highest repetition count exceeds every reference canary's."""
    gaps = {}
    membership = {name: summary["membership"][name]["auc"] for name in MEMBERSHIP_SIGNALS}
    best = max(membership, key=lambda name: membership[name]["value"])
    if membership[best]["low"] > 0.5:
        auc = membership[best]
        gaps["membership"] = f"{best} AUC {auc['value']:.2f} [{auc['low']:.2f}, {auc['high']:.2f}]"
    gap = summary["extraction"]["bertscore_f1"]["members_minus_heldout"]
    if gap["low"] > 0:
        gaps["extraction"] = f"BERTScore gap {gap['value']:+.3f} [{gap['low']:+.3f}, {gap['high']:+.3f}]"
    canaries = summary["canaries"]
    reference = canaries["by_repetitions"].get("0")
    if reference and canaries["exposure_at_highest"] > reference["exposure_max"]:
        gaps["canaries"] = (f"exposure {canaries['exposure_at_highest']:.1f} bits at {canaries['highest_repetitions']} "
                            f"repetitions vs at most {reference['exposure_max']:.1f} for reference canaries")
    return gaps


def _headline(summary: dict) -> str:
    m, e, c = summary["membership"], summary["extraction"]["bertscore_f1"], summary["canaries"]
    return (f"loss AUC {m['loss']['auc']['value']:.2f}, BERTScore gap {e['members_minus_heldout']['value']:+.3f}, "
            f"exposure {c['exposure_at_highest']:.1f} bits at {c['highest_repetitions']} repetitions "
            f"(reference {c['exposure_reference']:.1f})")


def privacy_verdict(results: dict[str, dict]) -> list[str]:
    """Sentences, built from the numbers, on three questions: do the non-private arms leak (else: which
    memorisation pressure to raise), does DP close the gap, and does pruning change it."""
    lines = []
    nonprivate = [arm for arm in results if arm.endswith("-nodp")]
    leaking = {arm: clear_gaps(results[arm]) for arm in nonprivate}
    for arm in nonprivate:
        found = leaking[arm]
        lines.append(f"{arm}: {_headline(results[arm])}. "
                     + (f"Clear member/non-member gap on {', '.join(f'{k} ({v})' for k, v in found.items())}."
                        if found else "No attack separates members from non-members."))
    if nonprivate and not any(leaking.values()):
        lines.append("The non-private arms show no clear gap on any attack, so this run cannot say whether DP "
                     "helps: raise memorisation pressure (canary_repetitions, epochs or learning_rate) and rerun.")
        return lines
    for arm in results:
        if "-dp" not in arm:
            continue
        twin = arm.split("-dp")[0] + "-nodp"
        if twin not in results:
            continue
        dp_gaps = clear_gaps(results[arm])
        closed = [k for k in leaking[twin] if k not in dp_gaps]
        still = [k for k in leaking[twin] if k in dp_gaps]
        verdict = ("DP closes every gap its non-private twin shows" if leaking[twin] and not still
                   else f"DP closes {', '.join(closed) or 'none'} of the gaps; still open: {', '.join(still)}"
                   if leaking[twin] else "Its non-private twin shows no clear gap to close")
        lines.append(f"{arm} (ε = {arm.split('-dp')[1]}): {_headline(results[arm])}. {verdict}"
                     + (f" (new gap: {', '.join(dp_gaps)})" if set(dp_gaps) - set(leaking[twin]) else "") + ".")
    if "full-nodp" in results and "pruned-nodp" in results:
        full, pruned = results["full-nodp"], results["pruned-nodp"]
        a, b = full["membership"]["loss"]["auc"], pruned["membership"]["loss"]["auc"]
        overlap = a["low"] <= b["high"] and b["low"] <= a["high"]
        lines.append(
            f"Pruning: without DP the pruned model's exposure at {full['canaries']['highest_repetitions']} repetitions "
            f"is {pruned['canaries']['exposure_at_highest']:.1f} bits vs {full['canaries']['exposure_at_highest']:.1f} "
            f"for the full model, and its loss AUC {b['value']:.2f} vs {a['value']:.2f} "
            + ("(intervals overlap: no detectable change in membership leakage)." if overlap
               else f"(intervals disjoint: pruning {'lowers' if b['value'] < a['value'] else 'raises'} membership leakage)."))
    return lines

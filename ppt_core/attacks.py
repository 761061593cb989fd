"""What a fine-tuned model gives away about its training data: attacks that compare members with
records the model never saw, each calibrated so that "no leak" has a measured null.

- Membership inference on the notes. Per record, one forward pass gives its loss, its zlib-calibrated
  loss (Carlini et al. 2021: mean token NLL over zlib bytes) and Min-K% probability (Shi et al. 2024),
  and the reference-model score (Carlini et al. 2022, "LiRA"'s offline form with one reference): the
  loss under the arm's starting model (`base` or `pruned-noft`) minus the loss under the arm. Records
  are scored at the length they were trained on. Per signal: ROC AUC with a bootstrap interval, TPR
  only at FPRs the number of non-members can resolve, and the paired ΔAUC against the starting model
  on the same records, which removes the offset a finite sample of records shares with every arm.
  The attack is also reported on the members the Poisson sampler actually drew (a trusted evaluator's
  view: `sample_counts` never leaves the run folder).
- Canary exposure (Carlini et al., "The Secret Sharer", 2019): exposure = log2|R| - log2 rank of the
  secret among all 10^d codes by the model's likelihood. The rank is exact up to `canary_rank_cap`: a
  best-first search over the digit tree, pruning every branch whose partial log-probability is already
  below the secret's (`digit_tree_rank`). Past the cap the search brackets the rank, so exposure is an
  interval with certain ends. Never a point estimate it cannot back.
- The one-run audit's scores (`audit_scores`): the arm's gain over its starting model on each audit
  canary's random words; ppt_core.audit turns them into empirical lower bounds on ε.
- Prefix extraction (Carlini et al. 2021): greedy continuation of a record's first tokens, scored by
  BERTScore and exact PII match, members against held-out records. A synthetic note's PII is its known
  fields; a user record's is what ppt_core.pii detected in it, less the values records of another split
  also contain (generation.shared_pii): those are no one record's secret.
"""

from __future__ import annotations

import copy
import heapq
import inspect
import zlib
from collections.abc import Callable, Collection, Sequence

import numpy as np
import scipy.stats
import torch
from tqdm.auto import tqdm

from ppt_core import audit, bertscore, data, evaluation, stats, tokens
from ppt_core.artifacts import rounded
from ppt_core.generation import generate_ids, shared_pii

LOW_FPRS = (0.001, 0.01, 0.1)  # reported where the non-members can resolve them (FPR >= 1/n)
TIE_TOLERANCE = 1e-4  # nats: two codes this close in log-likelihood tie (float noise between batch shapes)


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
    """Tokens per record the membership attack scores: the length training kept, so every scored token was trained on."""
    return int(params.get("train_max_length") or params["max_length"])


def use_bf16(params: dict, model) -> bool:
    """The profile's bf16_scoring resolved for the device `model` is on."""
    return evaluation.resolve_bf16(params["bf16_scoring"], next(model.parameters()).device)


# --- per-record scores: one forward pass ----------------------------------------------------------
def record_scores(model, tokenizer, texts: Sequence[str], *, max_length: int, min_k_percent: float,
                  batch_size: int = 16, bf16: bool = False, progress: bool = True) -> dict[str, np.ndarray]:
    """Per record: tokens scored, loss (nats/token), perplexity, zlib_ratio (total NLL in nats per
    zlib-compressed byte of the scored text) and min_k_logprob (mean log-prob of its min_k_percent%
    least likely tokens)."""
    logprobs = evaluation.token_logprobs(model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
                                         bf16=bf16, progress=progress)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    # zlib of what was scored: a record truncated to max_length is compared on its scored part only
    scored_text = [tokenizer.decode(seq[: max_length - 1]) for seq in ids]
    zlib_bytes = np.array([len(zlib.compress(text.encode("utf-8"))) for text in scored_text])
    loss = np.array([-lp.mean() for lp in logprobs])
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


def membership_signals(scores: dict, start_scores: dict | None = None) -> dict[str, np.ndarray]:
    """Every membership signal of one arm on one set of records (higher = member); with the starting
    model's scores on the same records also "reference": start loss - arm loss (what training gained)."""
    signals = {name: signal(scores) for name, signal in MEMBERSHIP_SIGNALS.items()}
    if start_scores is not None:
        signals["reference"] = start_scores["loss"] - scores["loss"]
    return signals


def audit_scores(arm_logprobs: np.ndarray, start_logprobs: np.ndarray) -> np.ndarray:
    """The audit's score of each audit canary: the arm's log-likelihood of its random words minus its
    starting model's (nats; higher = more likely included)."""
    return np.asarray(arm_logprobs, dtype=float) - np.asarray(start_logprobs, dtype=float)


def audit_logprobs(model, tokenizer, records: Sequence[dict], *, batch_size: int = 16, bf16: bool = False,
                   progress: bool = True) -> np.ndarray:
    """Summed log-probability (nats) of each audit canary's random words (its last `secret_tokens` tokens)."""
    if not records:
        return np.zeros(0)
    texts = [r["text"] for r in records]
    longest = max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    logprobs = evaluation.token_logprobs(model, tokenizer, texts, max_length=longest + 1, batch_size=batch_size,
                                         bf16=bf16, progress=progress)
    # token_logprobs scores up to the EOS that encoding appends: the words are the tokens before it
    return np.array([lp[-1 - r["secret_tokens"]:-1].sum() for lp, r in zip(logprobs, records)])


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


def resolvable_fprs(n_nonmembers: int) -> list[float]:
    """The LOW_FPRS that n non-members can resolve: a threshold's FPR moves in steps of 1/n."""
    return [fpr for fpr in LOW_FPRS if fpr * n_nonmembers >= 1]


def _paired_delta_auc(member: np.ndarray, nonmember: np.ndarray) -> float:
    """AUC of column 0 minus AUC of column 1, each row one record scored two ways."""
    return roc_auc(member[:, 0], nonmember[:, 0]) - roc_auc(member[:, 1], nonmember[:, 1])


def membership_inference(member: dict, nonmember: dict, start_member: dict | None = None,
                         start_nonmember: dict | None = None, *, n_boot: int = 1000, seed: int = 0) -> tuple[dict, dict]:
    """(summary, curves) of every signal in `member` / `nonmember` (membership_signals of one arm).

    Per signal: AUC with its 95% bootstrap interval (members and non-members resampled apart), TPR at
    the resolvable low FPRs, and, given the starting model's signals on the same records, ΔAUC = AUC(arm)
    - AUC(start) with a paired bootstrap interval (each resampled record keeps both its scores).
    curves[signal] = (fpr, tpr).
    """
    boot = dict(n_boot=n_boot, seed=seed)
    n_member, n_nonmember = len(next(iter(member.values()))), len(next(iter(nonmember.values())))
    summary: dict = {"members": n_member, "nonmembers": n_nonmember, "signals": {}}
    curves = {}
    for name in member:
        m, n = member[name], nonmember[name]
        entry = {
            "auc": stats.estimate(roc_auc, [m, n], **boot),
            "tpr_at_fpr": {f"{fpr:g}": tpr_at_fpr(m, n, fpr) for fpr in resolvable_fprs(n_nonmember)},
        }
        if start_member is not None:
            # the start's own reference score is 0 for every record (it gained nothing over itself): AUC 0.5
            start_m = start_member.get(name, np.zeros(n_member))
            start_n = start_nonmember.get(name, np.zeros(n_nonmember))
            entry["delta_auc_vs_start"] = stats.estimate(
                _paired_delta_auc, [np.column_stack([m, start_m]), np.column_stack([n, start_n])], **boot)
        summary["signals"][name] = entry
        curves[name] = roc_curve(m, n)
    return summary, curves


# --- canaries: exposure from the exact rank of the secret -------------------------------------------
def digit_tree_rank(next_digit_logprobs: Callable[[list[str]], np.ndarray], secret: str, *, cap: int,
                    batch_size: int = 64, max_expanded: int | None = None) -> dict:
    """The rank of `secret` among all codes of its length by log-likelihood: exact if at most `cap`.

    next_digit_logprobs(partial codes) -> array (len, 10): log p(next digit | prefix + partial code).
    A code's log-likelihood is the sum along its path, and it only falls as digits are added, so a
    branch whose partial sum is already below the secret's holds no code above it and is never opened:
    when no open branch is left, every code above the secret has been counted and the rank is exact.
    Codes within TIE_TOLERANCE of the secret tie and count half: rank = 1 + above + ties / 2.

    Branches are opened `batch_size` at a time, deepest first and, among equally deep ones, most likely
    first, so whole codes are reached after a few forward passes. It stops early once the codes found
    ahead of the secret put its rank past `cap`, or after `max_expanded` branches (default 10 cap + 100 d). Then the rank is bracketed: at least 1 + the codes found
    ahead, at most that plus every code still inside an unopened branch.

    Returns {"exact", "rank" (None unless exact), "rank_at_least", "rank_at_most", "expanded"}.
    """
    digits = len(secret)
    max_expanded = 10 * cap + 100 * digits if max_expanded is None else max_expanded
    path = next_digit_logprobs([secret[:i] for i in range(digits)])
    threshold = float(sum(path[i, int(secret[i])] for i in range(digits)))
    frontier = [(0, -0.0, "")]  # (-depth, -partial log-likelihood, partial code): deepest, then likeliest, first
    above = ties = expanded = 0
    while frontier:
        nodes = [heapq.heappop(frontier) for _ in range(min(batch_size, len(frontier)))]
        expanded += len(nodes)
        for (_, negated, partial), row in zip(nodes, next_digit_logprobs([node[2] for node in nodes])):
            for digit in range(10):
                code, score = partial + str(digit), float(row[digit]) - negated
                if len(code) < digits:
                    if score >= threshold - TIE_TOLERANCE:
                        heapq.heappush(frontier, (-len(code), -score, code))
                elif code != secret:
                    above += score > threshold + TIE_TOLERANCE
                    ties += abs(score - threshold) <= TIE_TOLERANCE
        rank_at_least = 1 + above + ties / 2
        if frontier and (rank_at_least > cap or expanded >= max_expanded):
            unopened = sum(10 ** (digits - len(code)) for _, _, code in frontier)
            return {"exact": False, "rank": None, "rank_at_least": rank_at_least,
                    "rank_at_most": min(1 + above + ties + unopened, 10**digits), "expanded": expanded}
    rank = 1 + above + ties / 2
    return {"exact": True, "rank": rank, "rank_at_least": rank, "rank_at_most": rank, "expanded": expanded}


class DigitTokenizationError(ValueError):
    """The tokenizer does not spell a code as the prefix's tokens followed by one token per digit."""


class NextDigitScorer:
    """next_digit_logprobs for one canary prefix under one model (see digit_tree_rank).

    The prefix runs through the model once; each call copies its KV cache across the batch and feeds
    only the partial codes' digits. Needs a tokenizer that writes each digit as its own token after the
    prefix (Llama, SmolLM, Qwen, Gemma do; GPT-2-style merges do not: DigitTokenizationError).
    """

    def __init__(self, model, tokenizer, prefix: str, secret: str):
        self.model, self.device = model, next(model.parameters()).device
        self.prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
        digit_ids = [tokenizer(str(d), add_special_tokens=False)["input_ids"] for d in range(10)]
        if any(len(ids) != 1 for ids in digit_ids):
            raise DigitTokenizationError("a digit is not a single token")
        self.digit_ids = [ids[0] for ids in digit_ids]
        spelled = tokenizer(prefix + secret, add_special_tokens=False)["input_ids"]
        if spelled != self.prefix_ids + [self.digit_ids[int(c)] for c in secret]:
            raise DigitTokenizationError(f"{prefix + secret!r} is not tokenized as its prefix and one token per digit")
        with torch.inference_mode():
            context = model(input_ids=torch.tensor([self.prefix_ids], device=self.device), use_cache=True)
        self.cache = context.cache
        self.first = self._digits(context.logits[0, -1])
        accepts = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.last_only = {"logits_to_keep": 1} if accepts else {}

    def _digits(self, logits: torch.Tensor) -> np.ndarray:
        return torch.log_softmax(logits.float(), dim=-1)[..., self.digit_ids].cpu().numpy().astype(np.float64)

    @torch.inference_mode()
    def __call__(self, partials: list[str]) -> np.ndarray:
        out = np.empty((len(partials), 10))
        by_length: dict[int, list[int]] = {}
        for i, partial in enumerate(partials):
            by_length.setdefault(len(partial), []).append(i)
        for length, rows in by_length.items():
            if length == 0:
                out[rows] = self.first
                continue
            # one length per forward: no padding, so positions follow the cache, and one position's logits
            ids = torch.tensor([[self.digit_ids[int(c)] for c in partials[i]] for i in rows], device=self.device)
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(len(rows))
            attention = torch.ones((len(rows), len(self.prefix_ids) + length), dtype=torch.long, device=self.device)
            logits = self.model(input_ids=ids, attention_mask=attention, cache=cache, use_cache=True,
                                **self.last_only).logits
            out[rows] = self._digits(logits[:, -1])
        return out


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
    candidate secrets, which then cost only their own few tokens. Works for any tokenizer.
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


def sampled_secrets(canary: dict, n_samples: int, seed: int) -> list[str]:
    """n_samples codes drawn uniformly from the secret space, the canary's own secret excluded;
    seeded per canary, so every arm ranks against the same ones."""
    digits = int(canary["secret_digits"])
    rng = np.random.default_rng([seed, int(canary["id"].rsplit("-", 1)[1])])
    draws = (f"{v:0{digits}d}" for v in rng.integers(0, 10**digits, 2 * n_samples + 1))
    return [s for s in draws if s != canary["secret"]][:n_samples]


def exposure_from_samples(secret_logprob: float, sample_logprobs: np.ndarray, space_size: int, *,
                          upper_bound: float | None = None, level: float = 0.95) -> tuple[float, float]:
    """(low, high) exposure in bits from uniform samples of the space: the share p of codes more likely
    than the secret has a Clopper-Pearson interval, and exposure ~ -log2 p. Clipped to [0, upper_bound]
    (default log2|R|)."""
    samples = np.asarray(sample_logprobs, dtype=float)
    ahead = int((samples > secret_logprob + TIE_TOLERANCE).sum())
    ahead += int((np.abs(samples - secret_logprob) <= TIE_TOLERANCE).sum()) // 2
    p_low, p_high = stats.clopper_pearson(ahead, len(samples), level=level)
    ceiling = float(np.log2(space_size)) if upper_bound is None else upper_bound
    low = max(0.0, -np.log2(p_high))
    high = ceiling if p_low <= 0 else min(ceiling, -np.log2(p_low))
    return float(min(low, ceiling)), float(high)


def canary_exposure(model, tokenizer, canary: dict, *, rank_cap: int, n_samples: int, seed: int = 0,
                    batch_size: int = 16) -> dict:
    """Exposure (bits) of one canary's secret as an interval [exposure_low, exposure_high].

    method "exact": the digit-tree search ranked the secret (low == high = log2|R| - log2 rank).
    method "beyond cap": the search stopped with the rank bracketed (digit_tree_rank's rank_at_least
        and rank_at_most), which brackets the exposure. Both ends are certain, not estimates.
    method "sampled": the tokenizer does not write one token per digit, so there is no digit tree: the
        secret's rank among n_samples uniform codes gives a 95% Clopper-Pearson interval instead.
    """
    space = 10 ** int(canary["secret_digits"])
    row = {"id": canary["id"], "repetitions": canary["repetitions"]}
    try:
        scorer = NextDigitScorer(model, tokenizer, canary["prefix"], canary["secret"])
    except DigitTokenizationError:
        secrets = [canary["secret"]] + sampled_secrets(canary, n_samples, seed)
        scores = secret_logprobs(model, tokenizer, canary["prefix"], secrets, batch_size=batch_size)
        low, high = exposure_from_samples(scores[0], scores[1:], space)
        return dict(row, method="sampled", rank=None, exposure_low=low, exposure_high=high)
    found = digit_tree_rank(scorer, canary["secret"], cap=rank_cap, batch_size=batch_size)
    low, high = (float(np.log2(space) - np.log2(found[key])) for key in ("rank_at_most", "rank_at_least"))
    return dict(row, method="exact" if found["exact"] else "beyond cap", rank=found["rank"],
                exposure_low=low, exposure_high=high)


def reference_band(rows: Sequence[dict]) -> list[float]:
    """[lowest, highest] exposure any reference canary (never inserted) can have: the null band."""
    reference = [r for r in rows if r["repetitions"] == 0]
    if not reference:
        return [float("nan"), float("nan")]
    return [min(r["exposure_low"] for r in reference), max(r["exposure_high"] for r in reference)]


def canary_extraction(model, tokenizer, canaries: Sequence[dict], *, batch_size: int = 16,
                      progress: bool = True) -> list[bool]:
    """For each canary: does greedy decoding from its prefix produce its secret?"""
    prompts = tokenizer([c["prefix"] for c in canaries], add_special_tokens=False)["input_ids"]
    longest = max(len(tokenizer(c["secret"], add_special_tokens=False)["input_ids"]) for c in canaries)
    generated = generate_ids(model, tokenizer, prompts, max_new_tokens=longest + 1, batch_size=batch_size,
                             progress=progress)
    return [tokenizer.decode(new).lstrip().startswith(c["secret"]) for c, new in zip(canaries, generated)]


def canary_summary(rows: list[dict], *, secret_space: int, rank_cap: int) -> dict:
    """Every canary's exposure interval, the reference canaries' band, and per repetition count how many
    canaries lie wholly above the band and how many greedy decoding reproduces."""
    band = reference_band(rows)
    by_repetitions = {}
    for repetitions in sorted({row["repetitions"] for row in rows}):
        group = [row for row in rows if row["repetitions"] == repetitions]
        by_repetitions[str(repetitions)] = {
            "canaries": len(group),
            "exact": sum(row["method"] == "exact" for row in group),
            "above_reference_band": sum(row["exposure_low"] > band[1] for row in group),
            "exposure_low_min": min(row["exposure_low"] for row in group),
            "exposure_high_max": max(row["exposure_high"] for row in group),
            "greedy_extracted": float(np.mean([row["greedy_extracted"] for row in group])),
        }
    keys = ("id", "repetitions", "method", "rank", "exposure_low", "exposure_high", "greedy_extracted")
    return {"secret_space": secret_space, "rank_cap": rank_cap, "reference_band": band,
            "highest_repetitions": max(row["repetitions"] for row in rows),
            "by_repetitions": by_repetitions, "rows": [{k: row[k] for k in keys} for row in rows]}


# --- prefix extraction ------------------------------------------------------------------------------
def extraction_attack(model, tokenizer, records: Sequence[dict], *, prefix_tokens: int, suffix_tokens: int,
                      batch_size: int = 16, shared: Collection[str] = (), progress: bool = True) -> list[dict]:
    """Per record (those longer than prefix_tokens): the greedy continuation of its first prefix_tokens
    tokens against its next suffix_tokens tokens: BERTScore F1, exact suffix match, and which PII
    values lying wholly in the true suffix the continuation reproduces verbatim (values in `shared`,
    which other records also hold, are not the record's own and do not count)."""
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
                     if value in true_suffix and value not in prefix and value not in shared}
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


def _pii_extraction_rate(member: np.ndarray, heldout: np.ndarray, **boot) -> dict:
    """_members_vs_heldout of _pii_rate. A side whose suffixes hold no PII value (user data where the
    detector found none) has no rate: it is None, and so is the difference, not a bootstrap of NaNs."""
    if member[:, 1].sum() and heldout[:, 1].sum():
        return _members_vs_heldout(member, heldout, statistic=_pii_rate, **boot)
    return {"members": _pii_rate(member) if member[:, 1].sum() else None,
            "heldout": _pii_rate(heldout) if heldout[:, 1].sum() else None, "members_minus_heldout": None}


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
        "pii_extraction_rate": _pii_extraction_rate(pii(member_rows), pii(heldout_rows), **boot),
        "pii_fields_in_suffix": {"members": int(pii(member_rows)[:, 1].sum()), "heldout": int(pii(heldout_rows)[:, 1].sum())},
        "perplexity": _members_vs_heldout(member_perplexity, heldout_perplexity, **boot),
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


def score_arm(model, tokenizer, splits: data.DatasetSplits, params: dict, *, progress: bool = True) -> dict:
    """The forward passes every attack on one arm reads: record_scores of the members and non-members
    (at the trained length) and the audit canaries' word log-probabilities. A starting model's scores
    are kept and passed to its fine-tuned arms (the reference attack and the audit compare the two)."""
    members, nonmembers = attack_records(splits, params)
    kw = dict(batch_size=params["eval_batch_size"], bf16=use_bf16(params, model), progress=progress)
    score = dict(kw, max_length=scoring_length(params), min_k_percent=params["min_k_percent"])
    return {"members": record_scores(model, tokenizer, [r["text"] for r in members], **score),
            "nonmembers": record_scores(model, tokenizer, [r["text"] for r in nonmembers], **score),
            "audit": audit_logprobs(model, tokenizer, splits.audit, **kw)}


def attack_arm(model, tokenizer, splits: data.DatasetSplits, params: dict, *, arm: str, start_scores: dict | None = None,
               sample_counts: np.ndarray | None = None, claimed_epsilon: float | None = None,
               progress: bool = True) -> tuple[dict, dict]:
    """(summary for results.json, details for tables, figures and records.npz) of every attack on one arm.

    start_scores: score_arm of the arm's starting model (None for base and pruned-noft themselves).
    sample_counts: draws of each record of splits.train by the Poisson sampler (trained arms).
    claimed_epsilon: the accountant's ε of a private arm; its audited lower bound must not exceed it.
    """
    members, nonmembers = attack_records(splits, params)
    scores = score_arm(model, tokenizer, splits, params, progress=progress)
    boot = dict(n_boot=params["n_bootstrap"], seed=params["seed"])
    start = start_scores or {}
    member = membership_signals(scores["members"], start.get("members"))
    nonmember = membership_signals(scores["nonmembers"], start.get("nonmembers"))
    start_member = membership_signals(start["members"]) if start else None
    start_nonmember = membership_signals(start["nonmembers"]) if start else None
    membership, roc = membership_inference(member, nonmember, start_member, start_nonmember, **boot)
    membership["scored_tokens"] = scoring_length(params)
    drawn = None
    if sample_counts is not None:
        position = {record["id"]: i for i, record in enumerate(splits.train)}
        drawn = np.array([sample_counts[position[r["id"]]] for r in members])
        kept = drawn >= 1
        membership["sampled_members"], _ = membership_inference(
            {k: v[kept] for k, v in member.items()}, nonmember,
            {k: v[kept] for k, v in start_member.items()} if start_member else None, start_nonmember, **boot)

    summary = {"membership": membership}
    if start_scores is not None and len(splits.audit):
        included = np.array([r["included"] for r in splits.audit])
        audit_score = audit_scores(scores["audit"], start_scores["audit"])
        bounds = audit.epsilon_lower_bounds(audit_score, included, delta=params["delta"])
        audit.check_claim(arm, bounds, claimed_epsilon)
        summary["audit"] = {"m": bounds["m"], "included": bounds["included"], "claimed_epsilon": claimed_epsilon,
                            "epsilon_lower_one_run": bounds["one_run"], "epsilon_lower_fdp": bounds["fdp"],
                            "auc": stats.estimate(roc_auc, [audit_score[included], audit_score[~included]], **boot)}
    else:
        audit_score = None

    n_attack = min(params["n_attack"], len(members))
    extract = dict(prefix_tokens=params["attack_prefix_tokens"], suffix_tokens=params["attack_suffix_tokens"],
                   batch_size=params["generation_batch_size"], progress=progress,
                   shared=shared_pii(splits) if params.get("data_path") else ())
    member_rows = extraction_attack(model, tokenizer, members[:n_attack], **extract)
    heldout_rows = extraction_attack(model, tokenizer, nonmembers[:n_attack], **extract)
    perplexity = {r["id"]: p for group, s in ((members, scores["members"]), (nonmembers, scores["nonmembers"]))
                  for r, p in zip(group, s["perplexity"])}
    summary["extraction"] = extraction_summary(
        member_rows, heldout_rows, np.array([perplexity[r["id"]] for r in member_rows]),
        np.array([perplexity[r["id"]] for r in heldout_rows]), **boot)

    canary_rows = []
    if start_scores is not None:  # a starting model saw no canary: the reference canaries are each arm's null
        canary_rows = [canary_exposure(model, tokenizer, canary, rank_cap=params["canary_rank_cap"],
                                       n_samples=params["n_secret_samples"], seed=params["seed"],
                                       batch_size=params["secret_batch_size"])
                       for canary in tqdm(splits.canaries, desc="canaries", disable=not progress, leave=False)]
        extracted = canary_extraction(model, tokenizer, splits.canaries, batch_size=params["generation_batch_size"],
                                      progress=progress)
        for row, hit in zip(canary_rows, extracted):
            row["greedy_extracted"] = hit
        summary["canaries"] = canary_summary(canary_rows, secret_space=10 ** int(splits.canaries[0]["secret_digits"]),
                                             rank_cap=params["canary_rank_cap"])
    details = {"scores": scores, "signals": {"members": member, "nonmembers": nonmember}, "roc": roc,
               "sample_counts": drawn, "audit_scores": audit_score, "extraction_rows": member_rows + heldout_rows,
               "canary_rows": canary_rows}
    return rounded(summary), details


def save_records(path, splits: data.DatasetSplits, params: dict, details: dict[str, dict]) -> None:
    """Per-record arrays of every attacked arm (details: attack_arm's, by arm) in one .npz: the
    paired comparisons of ppt_core.verdicts resample these records."""
    from ppt_core import artifacts

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
        for end in ("exposure_low", "exposure_high") if d["canary_rows"] else ():
            arrays[f"{arm}/canaries/{end}"] = np.array([row[end] for row in d["canary_rows"]])
        if d["audit_scores"] is not None:
            arrays[f"{arm}/audit/scores"] = d["audit_scores"]
    artifacts.write_npz(path, **arrays)

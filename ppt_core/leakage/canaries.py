"""Canaries (Carlini et al., "The Secret Sharer", 2019): does an arm find a secret code it was trained
on more likely than codes it never saw? Two measures of each canary, against canaries of the same form that
were never inserted (the reference canaries):

- secret gain (what the verdicts decide from): log p_arm(secret | prefix) - log p_start(secret | prefix) in
  nats, the arm's gain over its starting model on the canary's secret (`canary_secret_logprobs`). Training
  raises it on every canary alike by as much as it generalises to the form; only memorisation raises an
  inserted canary's further. The reference canaries' gains are the null: a canary's rank p-value against
  them (`rank_p_value`) is exact whatever the model, and "above the reference band" means a gain above
  every reference canary's (p = 1 / (n_reference + 1): a level of 0.05 or less with 20 references or more).
- exposure (descriptive): log2|R| - log2 rank of the secret among all 10^d codes by the model's likelihood.
  The rank is exact up to `canary_rank_cap`: a best-first search over the digit tree, pruning every branch
  whose partial log-probability is already below the secret's (`digit_tree_rank`). Past the cap the search
  brackets the rank, so exposure is an interval with certain ends, never a point estimate it cannot back;
  but past the cap every canary reads the same interval, so exposure shows memorisation and decides nothing.

Greedy decoding from a canary's prefix checks whether the secret comes out verbatim (`canary_extraction`).
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ppt_core.data import tokens
from ppt_core.leakage.generation import generate_ids
from ppt_core.scoring import evaluation
from ppt_core.uncertainty import stats

TIE_TOLERANCE = 1e-4  # nats: two codes this close in log-likelihood tie (float noise between batch shapes)


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
    ahead of the secret put its rank past `cap`, or after `max_expanded` branches (default 10 cap + 100 d).
    Then the rank is bracketed: at least 1 + the codes found ahead, at most that plus every code still inside
    an unopened branch.

    Returns {"exact", "rank" (None unless exact), "rank_at_least", "rank_at_most", "expanded"}.
    """
    search = _digit_tree_search(secret, cap=cap, batch_size=batch_size, max_expanded=max_expanded)
    return _in_lockstep([search], lambda requests: [next_digit_logprobs(partials) for _, partials in requests])[0]


def _digit_tree_search(secret: str, *, cap: int, batch_size: int, max_expanded: int | None):
    """digit_tree_rank's search as a generator: it yields the partial codes whose next-digit log-probabilities it
    needs, is sent them (an array (len, 10)), and returns its result; so several searches can share forwards."""
    digits = len(secret)
    max_expanded = 10 * cap + 100 * digits if max_expanded is None else max_expanded
    path = yield [secret[:i] for i in range(digits)]
    threshold = float(sum(path[i, int(secret[i])] for i in range(digits)))
    frontier = [(0, -0.0, "")]  # (-depth, -partial log-likelihood, partial code): deepest, then likeliest, first
    above = ties = expanded = 0
    while frontier:
        nodes = [heapq.heappop(frontier) for _ in range(min(batch_size, len(frontier)))]
        expanded += len(nodes)
        rows = yield [node[2] for node in nodes]
        for (_, negated, partial), row in zip(nodes, rows):
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


def _in_lockstep(searches: list, answer: Callable[[list[tuple[int, list[str]]]], list[np.ndarray]]) -> list[dict]:
    """Run _digit_tree_search generators side by side: each round, every unfinished search's request goes to one
    call of answer([(search index, partial codes), ...]) -> their arrays; returns each search's result."""
    results: list = [None] * len(searches)
    pending = {i: next(search) for i, search in enumerate(searches)}
    while pending:
        requests = list(pending.items())
        for (i, _), rows in zip(requests, answer(requests)):
            try:
                pending[i] = searches[i].send(rows)
            except StopIteration as finished:
                results[i] = finished.value
                del pending[i]
    return results


class DigitTokenizationError(ValueError):
    """The tokenizer does not spell a code as the prefix's tokens followed by one token per digit."""


def spelled_digit_by_digit(tokenizer, prefix: str, secret: str) -> tuple[list[int], list[int]]:
    """(the prefix's token ids, the ten digits' token ids) where the tokenizer writes prefix + secret as the
    prefix's tokens followed by one token per digit, as the digit tree needs; else DigitTokenizationError."""
    digit_ids = [tokenizer(str(d), add_special_tokens=False)["input_ids"] for d in range(10)]
    if any(len(ids) != 1 for ids in digit_ids):
        raise DigitTokenizationError("a digit is not a single token")
    digit_ids = [ids[0] for ids in digit_ids]
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    if tokenizer(prefix + secret, add_special_tokens=False)["input_ids"] != prefix_ids + [digit_ids[int(c)]
                                                                                          for c in secret]:
        raise DigitTokenizationError(f"{prefix + secret!r} is not tokenized as its prefix and one token per digit")
    return prefix_ids, digit_ids


class NextDigitScorer:
    """next_digit_logprobs for the canaries of one prefix length under one model (see digit_tree_rank).

    The prefixes run through the model once, side by side (the same number of tokens: no padding); each call
    selects the KV cache row of every partial code's canary and feeds only the partial codes' digits, codes of
    every length and of every canary in one forward (`__call__(partials)` for a single canary, `many` for
    several). Needs a tokenizer that writes each digit as its own token after the prefix (Llama, SmolLM, Qwen,
    Gemma do; GPT-2-style merges do not: DigitTokenizationError).
    """

    def __init__(self, model, tokenizer, prefix: str | Sequence[str], secret: str | Sequence[str], *,
                 bf16: bool = False):
        prefixes, secrets = ([prefix], [secret]) if isinstance(prefix, str) else (list(prefix), list(secret))
        self.model, self.device, self.bf16 = model, next(model.parameters()).device, bf16
        spelled = [spelled_digit_by_digit(tokenizer, text, code) for text, code in zip(prefixes, secrets)]
        self.digit_ids = spelled[0][1]
        prefix_ids = [ids for ids, _ in spelled]
        self.prefix_length = len(prefix_ids[0])
        if any(len(ids) != self.prefix_length for ids in prefix_ids):
            raise ValueError("the canaries of one NextDigitScorer need prefixes of one token length")
        with torch.inference_mode():
            logits, self.cache = evaluation.causal_lm_forward(
                model, torch.tensor(prefix_ids, device=self.device), bf16=bf16, use_cache=True,
                keep=torch.tensor([self.prefix_length - 1], device=self.device))
        self.first = self._digits(logits[:, -1])  # (canaries, 10)

    def _digits(self, logits: torch.Tensor) -> np.ndarray:
        return torch.log_softmax(logits.float(), dim=-1)[..., self.digit_ids].cpu().numpy().astype(np.float64)

    def __call__(self, partials: list[str]) -> np.ndarray:
        return self.many([(0, partials)])[0]

    @torch.inference_mode()
    def many(self, requests: list[tuple[int, list[str]]]) -> list[np.ndarray]:
        """For each (canary index, partial codes): the array (len, 10) of next-digit log-probabilities."""
        rows = [(canary, partial) for canary, partials in requests for partial in partials if partial]
        out = [np.empty((len(partials), 10)) for _, partials in requests]
        for array, (canary, partials) in zip(out, requests):
            array[[i for i, partial in enumerate(partials) if not partial]] = self.first[canary]
        if rows:
            # One forward for every length: each partial code is right-padded to the longest with digit 0. A
            # position never attends to later ones, so the output at a code's last digit reads only its prefix and
            # its own digits, the same as it would unpadded; positions follow the cache. (A forward per length, or
            # per canary, read the model's weights once each: on a CPU that, not the tokens, is a short forward's
            # cost.)
            width = max(len(partial) for _, partial in rows)
            ids = torch.tensor([[self.digit_ids[int(c)] for c in partial.ljust(width, "0")] for _, partial in rows],
                               device=self.device)
            last = [len(partial) - 1 for _, partial in rows]
            kept = sorted(set(last))  # the output head only where a code's last digit is
            cache = copy.deepcopy(self.cache)
            cache.batch_select_indices(torch.tensor([canary for canary, _ in rows], device=self.device))
            attention = torch.ones((len(rows), self.prefix_length + width), dtype=torch.long, device=self.device)
            logits, _ = evaluation.causal_lm_forward(self.model, ids, attention, bf16=self.bf16, cache=cache,
                                                     keep=torch.tensor(kept, device=self.device))
            scored = iter(self._digits(logits[torch.arange(len(rows)), [kept.index(t) for t in last]]))
            for array, (_, partials) in zip(out, requests):
                for i, partial in enumerate(partials):
                    if partial:
                        array[i] = next(scored)
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
def secret_logprobs(model, tokenizer, prefix: str, secrets: Sequence[str], *, batch_size: int = 128,
                    bf16: bool = False) -> np.ndarray:
    """log p(prefix + secret) - log p(shared prefix) for each secret, in nats: the part of the canary's
    log-likelihood that depends on the secret, so ranking secrets by it ranks the whole canaries.

    The shared prefix runs through the model once; its KV cache is copied across each batch of
    candidate secrets, which then cost only their own few tokens. Works for any tokenizer. `bf16`: the
    blocks under bf16 autocast, the head in float32 (evaluation.causal_lm_forward).
    """
    device = next(model.parameters()).device
    ids = tokenizer([prefix + secret for secret in secrets], add_special_tokens=False)["input_ids"]
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    # Tokens shared by every candidate and the prefix alone; fewer than the prefix's own when a tokenizer
    # merges across the boundary, in which case those prefix tokens are scored with the secret (still exact).
    shared = _common_prefix_length([*ids, prefix_ids])
    if shared < 1:
        raise ValueError(f"canary prefix {prefix!r} shares no token across candidate secrets")
    first_logits, context = evaluation.causal_lm_forward(model, torch.tensor([ids[0][:shared]], device=device),
                                                         bf16=bf16, use_cache=True,
                                                         keep=torch.tensor([shared - 1], device=device))
    first_logprobs = torch.log_softmax(first_logits[0, -1], dim=-1)
    out = []
    for chunk in tokens.batched([seq[shared:] for seq in ids], batch_size):
        rest, mask = tokens.pad(chunk, tokenizer.pad_token_id, device=device)
        width = rest.shape[1]
        total = first_logprobs[rest[:, 0]]
        if width > 1:
            cache = copy.deepcopy(context)
            cache.batch_repeat_interleave(len(chunk))
            # The last token's output would predict what follows the secret: not needed.
            attention = torch.cat([torch.ones((len(chunk), shared), dtype=torch.long, device=device), mask[:, :-1]], 1)
            logits, _ = evaluation.causal_lm_forward(model, rest[:, :-1], attention, bf16=bf16, cache=cache)
            targets = rest[:, 1:]
            picked = tokens.target_logprobs(logits, targets)
            total = total + (picked * mask[:, 1:]).sum(dim=1)
        out.append(total.cpu().numpy().astype(np.float64))
    return np.concatenate(out)


def canary_secret_logprobs(model, tokenizer, canaries: Sequence[dict], *, batch_size: int = 16) -> np.ndarray:
    """log p(secret | prefix) of each canary's own secret under `model`, in nats: secret_logprobs of its one
    candidate (the tokens of prefix + secret past those shared with the prefix alone), read from the canaries'
    whole texts scored together in batches of `batch_size` (evaluation.token_logprobs, float32). An arm's minus
    its starting model's is the canary's secret gain."""
    ids = tokenizer([c["prefix"] + c["secret"] for c in canaries], add_special_tokens=False)["input_ids"]
    prefixes = tokenizer([c["prefix"] for c in canaries], add_special_tokens=False)["input_ids"]
    shared = [_common_prefix_length([seq, prefix]) for seq, prefix in zip(ids, prefixes)]
    if min(shared) < 1:
        raise ValueError(f"canary prefix {canaries[shared.index(min(shared))]['prefix']!r} shares no token with "
                         "its secret's text")
    # logprobs[t - 1] scores token t; the EOS that scoring appends comes after the secret and is not read
    scored = evaluation.token_logprobs(model, tokenizer, [c["prefix"] + c["secret"] for c in canaries],
                                       max_length=max(map(len, ids)) + 1, batch_size=batch_size, progress=False)
    return np.array([logprobs[start - 1:len(seq) - 1].sum() for logprobs, seq, start in zip(scored, ids, shared)],
                    dtype=np.float64)


def rank_p_value(gain: float, null_gains: Sequence[float]) -> float:
    """One-sided rank p-value of a secret gain against the null gains of canaries never inserted:
    (1 + #null gains >= gain) / (n_null + 1). Exact under the null (a never-inserted canary's gain ranks
    uniformly among the others'), and never below 1 / (n_null + 1)."""
    null_gains = np.asarray(null_gains, dtype=float)
    return float((1 + np.sum(null_gains >= gain)) / (len(null_gains) + 1))


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
                    batch_size: int = 16, bf16: bool = False) -> dict:
    """Exposure (bits) of one canary's secret as an interval [exposure_low, exposure_high].

    method "exact": the digit-tree search ranked the secret (low == high = log2|R| - log2 rank).
    method "beyond cap": the search stopped with the rank bracketed (digit_tree_rank's rank_at_least
        and rank_at_most), which brackets the exposure. Both ends are certain, not estimates.
    method "sampled": the tokenizer does not write one token per digit, so there is no digit tree: the
        secret's rank among n_samples uniform codes gives a 95% Clopper-Pearson interval instead.
    """
    return canary_exposures(model, tokenizer, [canary], rank_cap=rank_cap, n_samples=n_samples, seed=seed,
                            batch_size=batch_size, bf16=bf16)[0]


def canary_exposures(model, tokenizer, canaries: Sequence[dict], *, rank_cap: int, n_samples: int, seed: int = 0,
                     batch_size: int = 16, bf16: bool = False, progress: bool = False) -> list[dict]:
    """canary_exposure of each canary, in order. The digit-tree searches of canaries whose prefixes have the same
    token length run in lockstep (_in_lockstep), each round's branches of all of them in one forward: each
    search opens the same branches, in the same order, as it would alone."""
    rows: list = [None] * len(canaries)
    by_length: dict[int, list[int]] = {}  # the canaries with a digit tree, by their prefix's token length
    for i, canary in enumerate(canaries):
        try:
            prefix_ids, _ = spelled_digit_by_digit(tokenizer, canary["prefix"], canary["secret"])
        except DigitTokenizationError:
            rows[i] = _sampled_exposure(model, tokenizer, canary, n_samples=n_samples, seed=seed,
                                        batch_size=batch_size, bf16=bf16)
            continue
        by_length.setdefault(len(prefix_ids), []).append(i)
    for group in tqdm(list(by_length.values()), desc="canary ranks", disable=not progress, leave=False):
        members = [canaries[i] for i in group]
        scorer = NextDigitScorer(model, tokenizer, [c["prefix"] for c in members], [c["secret"] for c in members],
                                 bf16=bf16)
        searches = [_digit_tree_search(c["secret"], cap=rank_cap, batch_size=batch_size, max_expanded=None)
                    for c in members]
        for i, canary, found in zip(group, members, _in_lockstep(searches, scorer.many)):
            space = 10 ** int(canary["secret_digits"])
            low, high = (float(np.log2(space) - np.log2(found[key])) for key in ("rank_at_most", "rank_at_least"))
            rows[i] = {"id": canary["id"], "repetitions": canary["repetitions"],
                       "method": "exact" if found["exact"] else "beyond cap", "rank": found["rank"],
                       "exposure_low": low, "exposure_high": high}
    return rows


def _sampled_exposure(model, tokenizer, canary: dict, *, n_samples: int, seed: int, batch_size: int,
                      bf16: bool) -> dict:
    """canary_exposure's "sampled" method: the secret's rank among n_samples uniform codes."""
    secrets = [canary["secret"]] + sampled_secrets(canary, n_samples, seed)
    scores = secret_logprobs(model, tokenizer, canary["prefix"], secrets, batch_size=batch_size, bf16=bf16)
    low, high = exposure_from_samples(scores[0], scores[1:], 10 ** int(canary["secret_digits"]))
    return {"id": canary["id"], "repetitions": canary["repetitions"], "method": "sampled", "rank": None,
            "exposure_low": low, "exposure_high": high}


def reference_band(rows: Sequence[dict]) -> list[float]:
    """[lowest, highest] exposure (bits) any reference canary (never inserted) can have: where the null
    reaches on the exposure figure (descriptive: past the rank cap its top is the cap's, not the null's)."""
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
    """Every canary's secret gain (nats), its rank p-value against the reference canaries' gains (an inserted
    canary against all of them, a reference canary against the others) and its exposure interval (bits); the
    reference canaries' number, highest gain and exposure band; and per repetition count how many canaries
    gain more than every reference canary (`above_reference_band`), how many were ranked exactly and how many
    greedy decoding reproduces. The verdict's test over these gains is ppt_core.study.verdicts' (canary_rank_test)."""
    reference = [i for i, row in enumerate(rows) if row["repetitions"] == 0]
    top_gain = max((rows[i]["secret_gain"] for i in reference), default=float("nan"))
    null_of = [[rows[j]["secret_gain"] for j in reference if j != i] for i in range(len(rows))]
    p_values = [rank_p_value(row["secret_gain"], null) if null else None for row, null in zip(rows, null_of)]
    by_repetitions = {}
    for repetitions in sorted({row["repetitions"] for row in rows}):
        group = [row for row in rows if row["repetitions"] == repetitions]
        by_repetitions[str(repetitions)] = {
            "canaries": len(group),
            "exact": sum(row["method"] == "exact" for row in group),
            "above_reference_band": sum(row["secret_gain"] > top_gain for row in group),
            "exposure_low_min": min(row["exposure_low"] for row in group),
            "exposure_high_max": max(row["exposure_high"] for row in group),
            "greedy_extracted": float(np.mean([row["greedy_extracted"] for row in group])),
        }
    keys = ("id", "repetitions", "secret_gain", "method", "rank", "exposure_low", "exposure_high", "greedy_extracted")
    return {"secret_space": secret_space, "rank_cap": rank_cap, "n_reference": len(reference),
            "reference_gain_max": top_gain, "reference_band": reference_band(rows),
            "highest_repetitions": max(row["repetitions"] for row in rows),
            "by_repetitions": by_repetitions,
            "rows": [dict({k: row[k] for k in keys}, p_value=p) for row, p in zip(rows, p_values)]}

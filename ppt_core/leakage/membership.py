"""Membership inference: can an attacker tell the records an arm was trained on from records it never
saw? Per record, one forward pass gives its loss, its zlib-calibrated loss (Carlini et al. 2021: mean
token NLL over zlib bytes) and Min-K% probability (Shi et al. 2024), and the reference-model score
(Carlini et al. 2022, "LiRA"'s offline form with one reference): the loss under the arm's starting model
(`base` or `pruned-noft`) minus the loss under the arm. Records are scored at the length they were
trained on. Per signal: ROC AUC with a bootstrap interval, TPR only at FPRs the number of non-members
can resolve (ppt_core.uncertainty.roc), and the paired ΔAUC against the starting model on the same records, which
removes the offset a finite sample of records shares with every arm.

The one-run audit is a membership test too, on the audit canaries: `audit_scores` is the arm's gain over
its starting model on each audit canary's random words; ppt_core.leakage.audit turns them into empirical lower
bounds on ε.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np
from torch.utils.data import TensorDataset

from ppt_core.data import tokens
from ppt_core.scoring import evaluation
from ppt_core.uncertainty import stats
from ppt_core.uncertainty.roc import resolvable_fprs, roc_auc, roc_curve, tpr_at_fpr


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
                   progress: bool = True, prefix=None) -> np.ndarray:
    """Summed log-probability (nats) of each audit canary's random words (its last `secret_tokens` tokens).
    `prefix`: the frozen lower blocks' outputs on audit_dataset(tokenizer, records), replayed instead of
    computed (the audit over training, where only the upper blocks learn)."""
    if not records:
        return np.zeros(0)
    last = 1 + max(r["secret_tokens"] for r in records)  # the words and the EOS: the head reads nothing else
    if prefix is None:
        logprobs = evaluation.token_logprobs(model, tokenizer, [r["text"] for r in records],
                                             max_length=_audit_length(tokenizer, records), batch_size=batch_size,
                                             bf16=bf16, last=last, progress=progress)
    else:
        logprobs = evaluation.replayed_token_logprobs(model, prefix, batch_size=batch_size, bf16=bf16, last=last)
    # token_logprobs scores up to the EOS that encoding appends: the words are the tokens before it
    return np.array([lp[-1 - r["secret_tokens"]:-1].sum() for lp, r in zip(logprobs, records)])


def audit_dataset(tokenizer, records: Sequence[dict]) -> TensorDataset:
    """The audit canaries as audit_logprobs scores them: whole, EOS appended, one right-padded row each."""
    batch = tokens.encode(tokenizer, [r["text"] for r in records], _audit_length(tokenizer, records))
    return TensorDataset(batch["input_ids"], batch["attention_mask"], batch["labels"])


def _audit_length(tokenizer, records: Sequence[dict]) -> int:
    """Room for the longest audit canary and its EOS: none is cut."""
    return 1 + max(len(ids) for ids in tokenizer([r["text"] for r in records], add_special_tokens=False)["input_ids"])


# --- the attack -------------------------------------------------------------------------------------
def _paired_delta_auc(member: np.ndarray, nonmember: np.ndarray) -> float:
    """AUC of column 0 minus AUC of column 1, each row one record scored two ways."""
    return roc_auc(member[:, 0], nonmember[:, 0]) - roc_auc(member[:, 1], nonmember[:, 1])


def membership_inference(member: dict, nonmember: dict, start_member: dict | None = None,
                         start_nonmember: dict | None = None, *, n_boot: int = 1000,
                         seed: int = 0) -> tuple[dict, dict]:
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

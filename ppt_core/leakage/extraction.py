"""Prefix extraction (Carlini et al. 2021): does an arm, given a record's first tokens, write the rest of
it? Greedy continuation of a record's first tokens, scored by BERTScore and exact PII match, members
against held-out records. A synthetic note's PII is its known fields; a user record's is what
ppt_core.data.pii detected in it, less the values records of another split also contain
(generation.shared_pii): those are no one record's secret.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
import scipy.stats

from ppt_core.leakage.generation import generate_ids
from ppt_core.scoring import bertscore
from ppt_core.uncertainty import power, stats


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


def _mean_difference_power(raised: np.ndarray, other: np.ndarray) -> dict:
    """What a difference of means between the side a leak raises (`raised`: members' BERTScore, held-out
    records' perplexity) and the other can show at this size (ppt_core.uncertainty.power, the records' own sds): the
    smallest difference these records detect with 80% power, and the records a side the observed difference
    would need (None when it is not above 0: no sample size detects it). None for both below two records a
    side, where no sd exists."""
    if min(len(raised), len(other)) < 2:
        return {"detectable_difference": None, "records_needed": None}
    sds = float(np.std(raised, ddof=1)), float(np.std(other, ddof=1))
    needed = power.difference_sample_size(float(np.mean(raised) - np.mean(other)), *sds)
    return {"detectable_difference": power.detectable_difference(*sds, min(len(raised), len(other))),
            "records_needed": None if math.isinf(needed) else int(needed)}


def _hit_rates(member: np.ndarray, heldout: np.ndarray) -> dict:
    """Hits (booleans) on members and on held-out records, each a share with its exact interval, and the
    one-sided Fisher exact test of members hitting more often ("p_value"): a bootstrap of 0 of 8 would read
    [0, 0], as if no rate above 0 were possible."""
    hits = [int(np.sum(member)), int(np.sum(heldout))]
    table = [[hits[0], len(member) - hits[0]], [hits[1], len(heldout) - hits[1]]]
    return {"members": stats.proportion(hits[0], len(member)), "heldout": stats.proportion(hits[1], len(heldout)),
            "p_value": float(scipy.stats.fisher_exact(table, alternative="greater").pvalue)}


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
    """Members vs held-out: mean BERTScore F1, exact-suffix rate (exact intervals, Fisher's test), PII extraction
    rate, mean perplexity. BERTScore and perplexity carry their power at this size (`_mean_difference_power`),
    in the direction a leak moves them: members above held-out in BERTScore, below in perplexity."""
    boot = dict(n_boot=n_boot, seed=seed)

    def column(rows, key):
        return np.array([row[key] for row in rows], dtype=float)

    def pii(rows):
        return np.array([[len(r["pii_extracted"]), len(r["pii_in_suffix"])] for r in rows], dtype=float).reshape(-1, 2)

    return {
        "records": {"members": len(member_rows), "heldout": len(heldout_rows)},
        "bertscore_f1": _members_vs_heldout(column(member_rows, "bertscore_f1"), column(heldout_rows, "bertscore_f1"),
                                            **boot)
        | _mean_difference_power(column(member_rows, "bertscore_f1"), column(heldout_rows, "bertscore_f1")),
        "exact_suffix_rate": _hit_rates(column(member_rows, "exact_suffix"), column(heldout_rows, "exact_suffix")),
        "pii_extraction_rate": _pii_extraction_rate(pii(member_rows), pii(heldout_rows), **boot),
        "pii_fields_in_suffix": {"members": int(pii(member_rows)[:, 1].sum()),
                                 "heldout": int(pii(heldout_rows)[:, 1].sum())},
        "perplexity": _members_vs_heldout(member_perplexity, heldout_perplexity, **boot)
        | _mean_difference_power(heldout_perplexity, member_perplexity),
    }

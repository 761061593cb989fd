"""Synthetic data: sample a corpus from a model, then measure its quality and what it leaks.

Generation is batched, left-padded (so every row's next token sits in the last column) and uses
the KV cache (transformers' `generate`). Prompts are written the way the data was: the opening
words of each note template ("DISCHARGE SUMMARY\\nPatient:", "Discharge note for", ...), which hold
no patient data. With user data (`data_path`), whose templates we do not know, the prompts are the
first `synthetic_prompt_tokens` tokens of the user's own `heldout` records instead (`public` holds
synthetic clinical notes there, which say nothing of the user's data). Never training records: a
prompt taken from `train` would hand the model the private text we then look for; held-out records
are never trained on.

Quality: distinct-1/2 (share of unique n-grams), mean length, and BERTScore F1 of each synthetic
record to its nearest held-out record. Leakage: the share of synthetic records that contain a
training-only PII value verbatim, and for each synthetic record its best BERTScore against `train` and
against `heldout` (equal-sized samples): a model that memorised writes text closer to train than to
held-out. On the synthetic notes a PII value is an MRN, or a name together with its date of birth; on
user data it is any value ppt_core.data.pii detected in a training record that no held-out or public record
contains (so only the types that detector finds: e-mail addresses, phone numbers, ..., never names).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ppt_core import data, models
from ppt_core.data import corpus, tokens
from ppt_core.run import arms, artifacts
from ppt_core.run.artifacts import rounded
from ppt_core.scoring import bertscore
from ppt_core.uncertainty import stats


def check_params(params: dict) -> None:
    """The generation settings of a profile are usable."""
    for key in ("n_synthetic", "synthetic_max_new_tokens", "synthetic_prompt_tokens", "generation_batch_size",
                "n_synthetic_references"):
        if int(params[key]) < 1:
            raise ValueError(f"{key} must be >= 1 (got {params[key]})")
    if not float(params["temperature"]) > 0:
        raise ValueError(f"temperature must be > 0 (got {params['temperature']}); greedy decoding is not sampling")
    if not 0 < float(params["top_p"]) <= 1:
        raise ValueError(f"top_p must be in (0, 1] (got {params['top_p']})")


# --- sampling -----------------------------------------------------------------------------------
@torch.inference_mode()
def generate_ids(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
                 temperature: float | None = None, top_p: float = 1.0, seed: int = 0, batch_size: int = 16,
                 progress: bool = True) -> list[list[int]]:
    """The new token ids after each prompt, cut before the first EOS. temperature None: greedy.

    Sampling runs under `seed` in a forked RNG (the caller's RNG is untouched), so the same prompts,
    seed and batch size give the same tokens.
    """
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    sampling = temperature is not None
    options = dict(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0) if sampling \
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    out: list[list[int]] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for chunk in tqdm(list(tokens.batched(list(prompt_ids), batch_size)), desc="generating",
                          disable=not progress, leave=False):
            input_ids, attention_mask = tokens.pad(chunk, tokenizer.pad_token_id, side="left")
            generated = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, **options,
            )
            for row in generated[:, input_ids.shape[1]:].tolist():
                out.append(row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row)
    return out


def generate(model, tokenizer, prompts: Sequence[str], **kw) -> list[str]:
    """Each prompt followed by the model's continuation, as text (see generate_ids for the options)."""
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    new_ids = generate_ids(model, tokenizer, prompt_ids, **kw)
    return [prompt + tokenizer.decode(ids, skip_special_tokens=True) for prompt, ids in zip(prompts, new_ids)]


# --- the synthetic corpus -----------------------------------------------------------------------
def synthesis_prompts(params: dict, splits: data.DatasetSplits, tokenizer) -> list[str]:
    """n_synthetic prompts, cycling through the note templates' headers (user data: held-out openings)."""
    if params.get("data_path"):
        openings = tokenizer(splits.texts("heldout"), add_special_tokens=False)["input_ids"]
        headers = [tokenizer.decode(ids[: params["synthetic_prompt_tokens"]]) for ids in openings]
    else:
        # The fixed words before a template's first field. Trailing spaces are dropped: in the notes
        # the space belongs to the next word's token (" John"), so a prompt ending in " " would
        # start the model off a token boundary it never saw in training.
        headers = [template.split("{")[0].rstrip() for template in corpus.TEMPLATES]
    return [headers[i % len(headers)] for i in range(params["n_synthetic"])]


def synthetic_corpus(model, tokenizer, params: dict, splits: data.DatasetSplits, *, progress: bool = True) -> list[str]:
    """The arm's synthetic records: n_synthetic samples at the profile's temperature and top-p."""
    return generate(
        model, tokenizer, synthesis_prompts(params, splits, tokenizer),
        max_new_tokens=params["synthetic_max_new_tokens"], temperature=params["temperature"],
        top_p=params["top_p"], seed=params["seed"], batch_size=params["generation_batch_size"], progress=progress,
    )


# --- quality ------------------------------------------------------------------------------------
def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams over all word n-grams of the corpus (1.0: no n-gram repeats)."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


# --- leakage ------------------------------------------------------------------------------------
def shared_pii(splits: data.DatasetSplits) -> set[str]:
    """PII values of train or held-out notes that records of more than one of train, heldout and public
    contain: a value many records share (a help desk's address) is no one record's secret, and finding
    it in a model's text says nothing about what the model learned from train."""
    notes = [r for r in splits.train + splits.heldout if r["kind"] == "note"]
    # NUL never occurs in a record (the loaders refuse it), so no value matches across two records
    texts = ["\x00".join(splits.texts(split)) for split in ("train", "heldout", "public")]
    return {value for value in {v for r in notes for v in r["pii"].values()}
            if sum(value in text for text in texts) > 1}


def training_only_pii(splits: data.DatasetSplits, *, user_data: bool = False) -> dict:
    """PII of train notes that no held-out or public record carries: {"values": set of strings,
    "pairs": set of (name, date of birth)}, the pairs counting only together.

    Synthetic notes (default): values are MRNs, pairs a name with its date of birth, compared by field.
    user_data: values are what ppt_core.data.pii detected in the train notes, less the shared_pii; no pairs.
    """
    if user_data:
        train = {value for r in splits.train if r["kind"] == "note" for value in r["pii"].values()}
        return {"values": train - shared_pii(splits), "pairs": set()}

    def values(records):
        notes = [r["pii"] for r in records if r["kind"] == "note" and r.get("pii")]
        return {p["mrn"] for p in notes if "mrn" in p}, {(p["name"], p["dob"]) for p in notes if "dob" in p}

    train_mrn, train_name_dob = values(splits.train)
    other_mrn, other_name_dob = values(splits.heldout + splits.public)
    return {"values": train_mrn - other_mrn, "pairs": train_name_dob - other_name_dob}


def leaked_pii(text: str, private: dict) -> list[str]:
    """The training-only PII (training_only_pii's) that `text` contains verbatim: values, and "name / DOB" pairs."""
    found = [value for value in private["values"] if value in text]
    found += [f"{name} / {dob}" for name, dob in private["pairs"] if name in text and dob in text]
    return sorted(found)


def reference_samples(splits: data.DatasetSplits, n: int, seed: int) -> tuple[list[str], list[str]]:
    """Equal-sized random samples of train notes and held-out notes: a fair "which is closer" test."""
    train = splits.texts("train", kind="note")
    heldout = splits.texts("heldout", kind="note")
    n = min(n, len(train), len(heldout))
    rng = np.random.default_rng(seed)
    return ([train[i] for i in sorted(rng.choice(len(train), n, replace=False))],
            [heldout[i] for i in sorted(rng.choice(len(heldout), n, replace=False))])


def synthetic_report(texts: Sequence[str], splits: data.DatasetSplits, params: dict,
                     tokenizer) -> tuple[dict, list[dict]]:
    """(summary, per-record rows) of a synthetic corpus: quality and leakage, as the module docstring says.

    `memorisation_share`: the share of synthetic records whose nearest train note is closer (BERTScore)
    than their nearest held-out note; about 0.5 for a model that did not memorise.
    """
    texts = list(texts)
    private = training_only_pii(splits, user_data=bool(params.get("data_path")))
    train_refs, heldout_refs = reference_samples(splits, params["n_synthetic_references"], params["seed"])
    best_train = bertscore.pairwise_f1(texts, train_refs).max(axis=1)
    best_heldout = bertscore.pairwise_f1(texts, heldout_refs).max(axis=1)
    leaks = [leaked_pii(t, private) for t in texts]
    lengths = data.token_lengths(tokenizer, texts)
    closer_to_train = (best_train > best_heldout).astype(float)
    gap = best_train - best_heldout
    boot = dict(n_boot=params["n_bootstrap"], seed=params["seed"])
    summary = {
        "records": len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "mean_tokens": float(lengths.mean()),
        "bertscore_nearest_heldout": stats.estimate(np.mean, [best_heldout], **boot),
        "bertscore_nearest_train": stats.estimate(np.mean, [best_train], **boot),
        "bertscore_train_minus_heldout": stats.estimate(np.mean, [gap], **boot),
        "memorisation_share": stats.estimate(np.mean, [closer_to_train], **boot),
        "pii_leak_share": stats.proportion(sum(bool(x) for x in leaks), len(leaks)),  # exact: 0 of 8 is [0, 0.37]
        "pii_values_leaked": sorted({value for x in leaks for value in x}),
        "references_per_split": len(train_refs),
    }
    summary = rounded(summary)
    rows = [{"text": t, "tokens": int(n), "best_bertscore_train": float(bt), "best_bertscore_heldout": float(bh),
             "leaked_pii": leak} for t, n, bt, bh, leak in zip(texts, lengths, best_train, best_heldout, leaks)]
    return summary, rows


# --- every arm (notebook 05) -----------------------------------------------------------------------
def synthesize_arms(params: dict, arm_names: Sequence[str], splits: data.DatasetSplits, *,
                    progress: bool = True) -> tuple[dict, dict]:
    """(summaries, rows), each by arm: the synthetic_report of every arm's synthetic_corpus, each arm loaded in turn."""
    summaries, rows = {}, {}
    for arm in tqdm(arm_names, desc="arms", disable=not progress):
        model, tokenizer = models.load_arm(params, arm)
        texts = synthetic_corpus(model, tokenizer, params, splits, progress=False)
        summaries[arm], rows[arm] = synthetic_report(texts, splits, params, tokenizer)
    return summaries, rows


def save_corpora(paths: artifacts.RunPaths, rows: dict[str, list[dict]]) -> None:
    """Each arm's synthetic records with their per-record scores (synthesize_arms' rows) as synthetic/<arm>.jsonl."""
    for arm, arm_rows in rows.items():
        artifacts.write_jsonl(paths.root / "synthetic" / f"{arm}.jsonl", arm_rows)


def synthetic_table(summaries: dict) -> pd.DataFrame:
    """One row per arm: diversity, length, BERTScore to the nearest held-out note, and the two leakage shares."""
    return pd.DataFrame({arm: {
        "distinct-1": s["distinct_1"], "distinct-2": s["distinct_2"], "mean tokens": s["mean_tokens"],
        "BERTScore to nearest held-out": s["bertscore_nearest_heldout"]["value"],
        "closer to train than held-out": s["memorisation_share"]["value"],
        "records with training-only PII": s["pii_leak_share"]["value"],
    } for arm, s in summaries.items()}).T


def sample_preview(rows: dict[str, list[dict]], params: dict) -> str:
    """The first synthetic record of `base` and of the profile's first fine-tuned arm, each under its name."""
    shown = ["base", *arms.trained_arm_names(params)[:1]]
    return "\n".join(f"--- {arm} ---\n{rows[arm][0]['text']}\n" for arm in shown if arm in rows)


def leakage_sentence(summaries: dict) -> str:
    """One sentence per arm, from the numbers: PII leak share and memorisation share with its interval."""
    parts = []
    for arm, s in summaries.items():
        share, mem = s["pii_leak_share"]["value"], s["memorisation_share"]
        parts.append(f"{arm}: {share:.0%} of records hold a training-only PII value, and {mem['value']:.0%} "
                     f"[{mem['low']:.0%}, {mem['high']:.0%}] are closer to train than to held-out notes")
    return "; ".join(parts) + ". About 50% closer to train, and no PII, is what a model that did not memorise gives."

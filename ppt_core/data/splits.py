"""The study's data: its splits, built from the synthetic corpus (`ppt_core.data.corpus`) or from a user's file
(`ppt_core.data.user_data`), written to and read from a run's data folder, with the card a reader judges them by.

Splits:
- `train`: the private fine-tuning data (with the inserted canaries);
- `heldout`: same distribution, never trained on: the non-members every attack compares against;
- `public`: other patients, treated as public: calibration text for the pruning decision;
- `canaries`: secret-bearing sentences ("... portal access code: 048213.") with a secret drawn
  uniformly from 10**secret_digits codes. Inserted canaries appear in `train` exactly
  `repetitions` times; reference canaries (repetitions 0) appear nowhere.
- `audit`: the one-run privacy audit's canaries (Steinke, Nasr & Jagielski, 2023): a short fixed
  prefix and `audit_canary_tokens` words drawn at random from the tokenizer's single-token words.
  Each is one record, included in `train` independently with probability 1/2 by a random stream of
  its own (`corpus.audit_inclusions`), kept apart from every other draw of the study; `included` says which.
  Random words cannot be guessed from the rest of the data, so a model only predicts them well if it
  saw them: a fine-tuned model's gain on them over its starting model is the audit's score.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppt_core.data import corpus, user_data
from ppt_core.run import artifacts
from ppt_core.run.errors import DataError

SPLITS = ("train", "heldout", "public", "canaries", "audit")


@dataclass
class DatasetSplits:
    """Records of each split; each record is a dict with at least `id`, `kind` and `text`."""

    train: list[dict]
    heldout: list[dict]
    public: list[dict]
    canaries: list[dict]
    audit: list[dict]

    def texts(self, split: str, *, kind: str | None = None) -> list[str]:
        """The texts of one split, optionally only records of one kind ("note" or "canary")."""
        return [r["text"] for r in getattr(self, split) if kind is None or r["kind"] == kind]

    @property
    def inserted_canaries(self) -> list[dict]:
        return [c for c in self.canaries if c["repetitions"] > 0]

    @property
    def reference_canaries(self) -> list[dict]:
        return [c for c in self.canaries if c["repetitions"] == 0]


def train_size(params: dict) -> int:
    """Records in `train` for a profile on the synthetic corpus: notes, canary copies and included audit canaries."""
    copies = params["canaries_per_repetition"] * sum(params["canary_repetitions"])
    return params["n_train"] + copies + int(corpus.audit_inclusions(params).sum())


def check_params(params: dict) -> None:
    """Stop on impossible data settings before anything is written."""
    for key in ("n_train", "n_heldout", "n_public"):
        if int(params[key]) < 2:
            raise DataError(f"{key} must be >= 2 (got {params[key]})")
    reps = params["canary_repetitions"]
    if any(int(r) < 1 for r in reps):
        raise DataError(f"canary_repetitions must all be >= 1 (got {reps})")
    if int(params["n_audit_canaries"]) < 0 or int(params["audit_canary_tokens"]) < 1:
        raise DataError(f"n_audit_canaries must be >= 0 and audit_canary_tokens >= 1 (got "
                        f"{params['n_audit_canaries']}, {params['audit_canary_tokens']})")
    if not 3 <= int(params["secret_digits"]) <= 12:
        raise DataError(f"secret_digits must be between 3 and 12 (got {params['secret_digits']})")
    if params.get("data_path"):
        user_data.profile_texts(params)



def build_dataset(params: dict, out_dir: str | Path, *, tokenizer=None) -> DatasetSplits:
    """Build the profile's splits (synthetic, or from params['data_path']) and write them to out_dir.

    Writes train/heldout/public/canaries.jsonl and dataset_card.json. The same seed gives the same
    bytes. `tokenizer` (default: the profile model's) is used only for the card's token lengths.
    User records' `pii` is what ppt_core.data.pii detects in them; a synthetic note's is its known fields.
    """
    check_params(params)
    writer = corpus.NoteWriter(params["seed"])
    if params.get("data_path"):
        user = user_data.profile_texts(params)
        order = np.random.default_rng(params["seed"]).permutation(len(user))
        sizes = user_data.split_sizes(params, len(user))
        heldout_ix, train_ix = order[: sizes["heldout"]], order[sizes["heldout"]:][: sizes["train"]]
        notes = [{"id": f"user-{i:06d}", "kind": "note", "text": user[i], "pii": {}} for i in range(len(user))]
        train = [notes[i] for i in train_ix]
        heldout = [notes[i] for i in heldout_ix]
        if len(train) < 2:
            raise DataError(f"{params['data_path']} has {len(user)} records: at least 3 are needed (train and heldout)")
        # User records come without PII labels: what the detector finds in them stands in for the
        # synthetic notes' known fields (ppt_core.data.pii says which types it finds and what it misses).
        from ppt_core.data import pii

        for record, found in zip(train + heldout, pii.detect([r["text"] for r in train + heldout])):
            record["pii"] = found
        # The pruning decision must not see private data: calibration text stays the synthetic
        # public corpus, which is public by construction.
        public = corpus.note_records(writer, "public", params["n_public"])
    else:
        train = corpus.note_records(writer, "train", params["n_train"])
        heldout = corpus.note_records(writer, "heldout", params["n_heldout"])
        public = corpus.note_records(writer, "public", params["n_public"])
    canaries = corpus.canary_records(writer, params)
    for canary in canaries:
        train += [dict(canary, id=f"{canary['id']}-copy{k}") for k in range(canary["repetitions"])]
    if tokenizer is None:
        from ppt_core.models import load_tokenizer

        tokenizer = load_tokenizer(params["model"])
    audit = corpus.audit_canary_records(params, tokenizer)
    check_canaries_fit(canaries + audit, params, tokenizer)
    train += [record for record in audit if record["included"]]
    random.Random(params["seed"] + 1).shuffle(train)
    splits = DatasetSplits(train=train, heldout=heldout, public=public, canaries=canaries, audit=audit)

    card = dataset_card(splits, params, tokenizer)
    out_dir = Path(out_dir)
    for split in SPLITS:
        artifacts.write_jsonl(out_dir / f"{split}.jsonl", getattr(splits, split))
    artifacts.write_json(out_dir / "dataset_card.json", card)
    return splits


def known_pii_notes(splits: DatasetSplits, params: dict) -> list[dict]:
    """Notes whose PII fields are known, to score the PII detector on: train's synthetic notes, or with
    user data (whose records carry only what was detected) the synthetic notes of `public`."""
    return splits.public if params.get("data_path") else [r for r in splits.train if r["kind"] == "note"]


def check_canaries_fit(records: list[dict], params: dict, tokenizer) -> None:
    """Stop, before anything is written, if training would cut off part of a canary: its secret would then
    never be trained on, and every exposure and audit score of it would measure nothing."""
    kept = int(params.get("train_max_length") or params["max_length"])
    lengths = token_lengths(tokenizer, [r["text"] for r in records])
    if lengths.max() >= kept:  # one position to spare for a special token the tokenizer may add
        longest = records[int(lengths.argmax())]
        raise DataError(f"canary {longest['id']!r} has {int(lengths.max())} tokens but training keeps "
                        f"{kept} per record (train_max_length): raise train_max_length to at least "
                        f"{int(lengths.max()) + 1}")


def load_splits(data_dir: str | Path) -> DatasetSplits:
    """Read the splits that build_dataset wrote."""
    data_dir = Path(data_dir)
    missing = [s for s in SPLITS if not (data_dir / f"{s}.jsonl").exists()]
    if missing:
        raise DataError(f"{data_dir} has no {', '.join(missing)}.jsonl: run notebook 00_data first")
    return DatasetSplits(**{s: artifacts.read_jsonl(data_dir / f"{s}.jsonl") for s in SPLITS})


def first_notes(splits: DatasetSplits, n: int) -> list[dict]:
    """The first `n` notes of train (no canary or audit record): a reader's first look at the data."""
    return [r for r in splits.train if r["kind"] == "note"][:n]


def note_token_lengths(splits: DatasetSplits, tokenizer) -> dict[str, np.ndarray]:
    """{split: tokens per note} for train, heldout and public."""
    return {split: token_lengths(tokenizer, splits.texts(split, kind="note"))
            for split in ("train", "heldout", "public")}


def token_lengths(tokenizer, texts: list[str]) -> np.ndarray:
    return np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]])


def dataset_card(splits: DatasetSplits, params: dict, tokenizer) -> dict:
    """Counts, token lengths and the canary design: what a reader needs to judge the data. With user data
    also `pii_detected`: per split, the values ppt_core.data.pii found in the user's records, by type."""
    def length_stats(texts):
        lengths = token_lengths(tokenizer, texts)
        return {
            "records": len(texts),
            "tokens_mean": round(float(lengths.mean()), 1),
            "tokens_median": float(np.median(lengths)),
            "tokens_p95": float(np.percentile(lengths, 95)),
            "tokens_max": int(lengths.max()),
            "truncated_at_max_length": int((lengths + 1 > params["max_length"]).sum()),
        }

    card = {
        "source": params.get("data_path") or "synthetic clinical notes (ppt_core.data)",
        "seed": params["seed"],
        "max_length": params["max_length"],
        "splits": {s: length_stats(splits.texts(s)) for s in SPLITS if getattr(splits, s)},
        "train_notes": len([r for r in splits.train if r["kind"] == "note"]),
        "train_canary_copies": len([r for r in splits.train if r["kind"] == "canary"]),
        "train_audit_canaries": len([r for r in splits.train if r["kind"] == "audit"]),
        "canary_design": {
            "template": corpus.CANARY_TEMPLATE,
            "secret_space": 10 ** params["secret_digits"],
            "repetitions": sorted({c["repetitions"] for c in splits.canaries}),
            "inserted": len(splits.inserted_canaries),
            "reference": len(splits.reference_canaries),
        },
        "audit_design": {
            "prefix": corpus.AUDIT_PREFIX,
            "words_per_canary": params["audit_canary_tokens"],
            "canaries": len(splits.audit),
            "included": sum(r["included"] for r in splits.audit),
        },
    }
    if params.get("data_path"):  # the synthetic corpus's card stays as it was: its notes' PII is known, not detected
        from ppt_core.data import pii

        card["pii_detected"] = {split: pii.type_counts([r["pii"] for r in getattr(splits, split)
                                                         if r["kind"] == "note"])
                                for split in ("train", "heldout")}
    return card



# --- which data a run uses ---------------------------------------------------------------------
def source_sentence(params: dict) -> str:
    """One line on the data a run uses: the synthetic corpus, or how many of the user's records go where
    and how to use more of them."""
    if not params.get("data_path"):
        return (f"synthetic clinical notes, seed {params['seed']}: {params['n_train']} training, "
                f"{params['n_heldout']} held-out and {params['n_public']} public notes")
    sizes = user_data.split_sizes(params, len(user_data.profile_texts(params)))
    line = (f"data {params['data_path']}: {sizes['records']} records; {sizes['train']} for training, "
            f"{sizes['heldout']} held out")
    if sizes["unused"]:
        line += (f", {sizes['unused']} unused (the profile's n_train={params['n_train']}): "
                 f"--set n_train={sizes['train'] + sizes['unused']} uses them all")
    return line

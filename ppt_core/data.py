"""The study's data: a synthetic clinical-notes corpus with PII and canaries, and user-data loaders.

The corpus stands in for private clinical text. Each record is a short discharge-summary-style note
about one synthetic patient: PII fields (name, date of birth, MRN, phone, address) and clinical
content drawn from curated vocabularies, written through one of several templates with varied
phrasing, all under a seed.

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
  its own (`audit_stream`), kept apart from every other draw of the study; `included` says which.
  Random words cannot be guessed from the rest of the data, so a model only predicts them well if it
  saw them: a fine-tuned model's gain on them over its starting model is the audit's score.
"""

from __future__ import annotations

import csv
import io
import json
import random
import reprlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from faker import Faker

from ppt_core import artifacts

SPLITS = ("train", "heldout", "public", "canaries", "audit")


class DataError(ValueError):
    """Bad user data or impossible data settings."""


# --- curated vocabularies ----------------------------------------------------------------------
DIAGNOSES = [
    "community-acquired pneumonia", "acute exacerbation of COPD", "congestive heart failure",
    "type 2 diabetes mellitus with hyperglycemia", "acute kidney injury", "urinary tract infection",
    "cellulitis of the left lower extremity", "atrial fibrillation with rapid ventricular response",
    "non-ST elevation myocardial infarction", "diabetic ketoacidosis", "acute pancreatitis",
    "small bowel obstruction", "pulmonary embolism", "deep vein thrombosis", "sepsis secondary to pyelonephritis",
    "ischemic stroke", "gastrointestinal bleed", "hypertensive urgency", "asthma exacerbation",
    "acute cholecystitis", "syncope", "hyponatremia", "alcohol withdrawal", "appendicitis",
]
MEDICATIONS = [
    "metformin 500 mg twice daily", "lisinopril 10 mg daily", "atorvastatin 40 mg nightly",
    "apixaban 5 mg twice daily", "furosemide 40 mg daily", "metoprolol succinate 50 mg daily",
    "amoxicillin-clavulanate 875 mg twice daily", "insulin glargine 20 units at bedtime",
    "prednisone 40 mg daily for 5 days", "albuterol inhaler as needed", "pantoprazole 40 mg daily",
    "levothyroxine 75 mcg daily", "aspirin 81 mg daily", "ceftriaxone 1 g IV daily",
    "enoxaparin 40 mg subcutaneously daily", "tamsulosin 0.4 mg daily", "sertraline 50 mg daily",
    "gabapentin 300 mg three times daily", "amlodipine 5 mg daily", "clopidogrel 75 mg daily",
]
PROCEDURES = [
    "chest radiograph", "CT of the abdomen and pelvis", "transthoracic echocardiogram",
    "upper endoscopy", "cardiac catheterization", "lumbar puncture", "MRI of the brain",
    "ultrasound of the right upper quadrant", "laparoscopic cholecystectomy", "blood cultures",
    "CT pulmonary angiogram", "colonoscopy", "paracentesis", "bronchoscopy", "renal ultrasound",
]
COURSE = [
    "was started on intravenous antibiotics and improved over {days} days",
    "required supplemental oxygen, which was weaned to room air by day {days}",
    "was managed with fluids and electrolyte repletion with steady improvement",
    "was monitored on telemetry without further events",
    "had pain controlled with oral analgesics and tolerated a regular diet",
    "was seen by physical therapy and cleared for discharge home",
    "had an uncomplicated postoperative course",
    "was transitioned from intravenous to oral therapy after {days} days",
    "had blood glucose stabilised on a basal-bolus regimen",
    "was anticoagulated and remained hemodynamically stable",
]
DISPOSITION = [
    "Discharged home in stable condition.", "Discharged home with home health services.",
    "Discharged to a skilled nursing facility.", "Discharged home with family.",
    "Discharged to inpatient rehabilitation.",
]
FOLLOW_UP = [
    "Follow up with primary care in one week.", "Follow up in cardiology clinic in two weeks.",
    "Repeat labs in three days.", "Return if symptoms worsen.", "Follow up with surgery in ten days.",
]
SEX = ["male", "female"]

TEMPLATES = [
    (
        "DISCHARGE SUMMARY\nPatient: {name}\nDOB: {dob}\nMRN: {mrn}\nPhone: {phone}\nAddress: {address}\n"
        "Admission diagnosis: {dx}.\nHospital course: The patient {course}. {procedure_sentence}\n"
        "Discharge medications: {meds}.\n{disposition} {follow_up}"
    ),
    (
        "Discharge note for {name} (MRN {mrn}, born {dob}). {age}-year-old {sex} admitted with {dx}. "
        "{procedure_sentence} During the stay the patient {course}. Medications on discharge: {meds}. "
        "{disposition} Contact: {phone}, {address}. {follow_up}"
    ),
    (
        "Name: {name} | DOB: {dob} | MRN: {mrn}\nReason for admission: {dx}\nSummary: {age}-year-old {sex} "
        "who {course}. {procedure_sentence}\nPlan: {meds}. {follow_up}\nPhone {phone}. Lives at {address}.\n"
        "{disposition}"
    ),
    (
        "HOSPITAL DISCHARGE - {name}, MRN {mrn}\nThis {age}-year-old {sex} (DOB {dob}) presented with {dx} "
        "and {course}. {procedure_sentence} Secondary issue: {dx2}.\nGo-home medications: {meds}.\n"
        "{disposition} {follow_up} Reachable at {phone}."
    ),
    (
        "Summary of care. {name}, date of birth {dob}, medical record number {mrn}, residing at {address}. "
        "Principal diagnosis: {dx}; also treated for {dx2}. The patient {course}. {procedure_sentence} "
        "Continue {meds}. {follow_up} {disposition}"
    ),
]
PROCEDURE_SENTENCES = [
    "A {procedure} was performed.", "Workup included a {procedure}.", "{Procedure} was unremarkable.",
    "{Procedure} confirmed the diagnosis.", "The team obtained a {procedure}.",
]
CANARY_TEMPLATE = "Patient portal access code for {name} (MRN {mrn}): {secret}."
AUDIT_PREFIX = "Audit words:"
# The audit's own random stream: entropy that no other draw of the study uses (any fixed number does).
AUDIT_STREAM = 0xA0D17


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


def audit_inclusions(params: dict) -> np.ndarray:
    """Which of the profile's audit canaries go into `train`: independent fair coins from the audit's
    own stream (a function of the seed alone, so N is known before any data is written)."""
    return _audit_rng(params).random(int(params["n_audit_canaries"])) < 0.5


def _audit_rng(params: dict) -> np.random.Generator:
    return np.random.default_rng([AUDIT_STREAM, int(params["seed"])])


def train_size(params: dict) -> int:
    """Records in `train` for a profile on the synthetic corpus: notes, canary copies and included audit canaries."""
    copies = params["canaries_per_repetition"] * sum(params["canary_repetitions"])
    return params["n_train"] + copies + int(audit_inclusions(params).sum())


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
        load_texts(params["data_path"], text_field=params.get("text_field", "text"))


# --- the synthetic corpus ------------------------------------------------------------------------
class _NoteWriter:
    """Draws patients and writes their notes; one seeded Faker and one seeded RNG for everything."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.fake = Faker("en_US")
        self.fake.seed_instance(seed)
        self.used_mrns: set[str] = set()
        self.used_names: set[str] = set()

    def patient(self) -> dict:
        while True:
            name = self.fake.name()
            if name not in self.used_names:
                break
        while True:
            mrn = f"{self.rng.randrange(10**7, 10**8)}"
            if mrn not in self.used_mrns:
                break
        self.used_names.add(name)
        self.used_mrns.add(mrn)
        dob = self.fake.date_of_birth(minimum_age=18, maximum_age=95)
        return {
            "name": name,
            "dob": dob.strftime("%m/%d/%Y"),
            "mrn": mrn,
            "phone": self.fake.numerify("(###) ###-####"),
            "address": self.fake.address().replace("\n", ", "),
            "age": 2026 - dob.year,
        }

    def note(self, patient: dict) -> str:
        rng = self.rng
        dx, dx2 = rng.sample(DIAGNOSES, 2)
        procedure = rng.choice(PROCEDURES)
        sentence = rng.choice(PROCEDURE_SENTENCES)
        fields = dict(
            {k: v for k, v in patient.items()},
            sex=rng.choice(SEX),
            dx=dx,
            dx2=dx2,
            course=rng.choice(COURSE).format(days=rng.randint(2, 6)),
            procedure_sentence=sentence.format(procedure=procedure, Procedure=procedure[0].upper() + procedure[1:]),
            meds=", ".join(rng.sample(MEDICATIONS, rng.randint(2, 4))),
            disposition=rng.choice(DISPOSITION),
            follow_up=rng.choice(FOLLOW_UP),
        )
        return rng.choice(TEMPLATES).format(**fields)

    def secret(self, digits: int, used: set[str]) -> str:
        while True:
            code = f"{self.rng.randrange(10**digits):0{digits}d}"
            if code not in used:
                used.add(code)
                return code


def _note_records(writer: _NoteWriter, split: str, n: int) -> list[dict]:
    records = []
    for i in range(n):
        patient = writer.patient()
        pii = {k: patient[k] for k in ("name", "dob", "mrn", "phone", "address")}
        records.append({"id": f"{split}-{i:05d}", "kind": "note", "text": writer.note(patient), "pii": pii})
    return records


def _canaries(writer: _NoteWriter, params: dict) -> list[dict]:
    plan = [r for r in params["canary_repetitions"] for _ in range(params["canaries_per_repetition"])]
    plan += [0] * params["n_reference_canaries"]
    used: set[str] = set()
    canaries = []
    for i, repetitions in enumerate(plan):
        patient = writer.patient()
        secret = writer.secret(params["secret_digits"], used)
        text = CANARY_TEMPLATE.format(name=patient["name"], mrn=patient["mrn"], secret=secret)
        canaries.append({
            "id": f"canary-{i:03d}",
            "kind": "canary",
            "text": text,
            "prefix": text[: text.rindex(secret)],
            "secret": secret,
            "secret_digits": params["secret_digits"],
            "repetitions": repetitions,
            "inserted": repetitions > 0,
            "pii": {"name": patient["name"], "mrn": patient["mrn"]},
        })
    return canaries


def audit_vocabulary(tokenizer) -> list[str]:
    """Lower-case words of 3+ letters that the tokenizer keeps as one token after a space, and that come
    back as that one token when re-encoded: random draws from them tokenize exactly as drawn."""
    words = set()
    for token_id in range(len(tokenizer)):
        text = tokenizer.decode([token_id])
        if len(text) >= 4 and text[0] == " " and text[1:].isascii() and text[1:].isalpha() and text[1:].islower():
            words.add(text[1:])
    return sorted(w for w in words if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1)


def _audit_canaries(params: dict, tokenizer) -> list[dict]:
    included = audit_inclusions(params)
    rng = _audit_rng(params)
    rng.random(len(included))  # the inclusions above came first from this stream
    vocabulary = audit_vocabulary(tokenizer) if len(included) else []
    n_words = int(params["audit_canary_tokens"])
    if len(included) and len(vocabulary) < 10 * n_words:
        raise DataError(f"the tokenizer has only {len(vocabulary)} single-token words: too few to draw audit canaries "
                        f"of {n_words} words; set n_audit_canaries=0")
    canaries = []
    for i, include in enumerate(included):
        words = [vocabulary[j] for j in rng.choice(len(vocabulary), n_words, replace=False)]
        canaries.append({"id": f"audit-{i:04d}", "kind": "audit", "text": AUDIT_PREFIX + "".join(" " + w for w in words),
                         "secret_tokens": n_words, "included": bool(include), "pii": {}})
    return canaries


def build_dataset(params: dict, out_dir: str | Path, *, tokenizer=None) -> DatasetSplits:
    """Build the profile's splits (synthetic, or from params['data_path']) and write them to out_dir.

    Writes train/heldout/public/canaries.jsonl and dataset_card.json. The same seed gives the same
    bytes. `tokenizer` (default: the profile model's) is used only for the card's token lengths.
    User records' `pii` is what ppt_core.pii detects in them; a synthetic note's is its known fields.
    """
    check_params(params)
    writer = _NoteWriter(params["seed"])
    if params.get("data_path"):
        user = load_texts(params["data_path"], text_field=params.get("text_field", "text"))
        order = np.random.default_rng(params["seed"]).permutation(len(user))
        sizes = user_split_sizes(params, len(user))
        heldout_ix, train_ix = order[: sizes["heldout"]], order[sizes["heldout"]:][: sizes["train"]]
        notes = [{"id": f"user-{i:06d}", "kind": "note", "text": user[i], "pii": {}} for i in range(len(user))]
        train = [notes[i] for i in train_ix]
        heldout = [notes[i] for i in heldout_ix]
        if len(train) < 2:
            raise DataError(f"{params['data_path']} has {len(user)} records: at least 3 are needed (train and heldout)")
        # User records come without PII labels: what the detector finds in them stands in for the
        # synthetic notes' known fields (ppt_core.pii says which types it finds and what it misses).
        from ppt_core import pii

        for record, found in zip(train + heldout, pii.detect([r["text"] for r in train + heldout])):
            record["pii"] = found
        # The pruning decision must not see private data: calibration text stays the synthetic
        # public corpus, which is public by construction.
        public = _note_records(writer, "public", params["n_public"])
    else:
        train = _note_records(writer, "train", params["n_train"])
        heldout = _note_records(writer, "heldout", params["n_heldout"])
        public = _note_records(writer, "public", params["n_public"])
    canaries = _canaries(writer, params)
    for canary in canaries:
        train += [dict(canary, id=f"{canary['id']}-copy{k}") for k in range(canary["repetitions"])]
    if tokenizer is None:
        from ppt_core.models import load_tokenizer

        tokenizer = load_tokenizer(params["model"])
    audit = _audit_canaries(params, tokenizer)
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


def token_lengths(tokenizer, texts: list[str]) -> np.ndarray:
    return np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]])


def dataset_card(splits: DatasetSplits, params: dict, tokenizer) -> dict:
    """Counts, token lengths and the canary design: what a reader needs to judge the data. With user data
    also `pii_detected`: per split, the values ppt_core.pii found in the user's records, by type."""
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
            "template": CANARY_TEMPLATE,
            "secret_space": 10 ** params["secret_digits"],
            "repetitions": sorted({c["repetitions"] for c in splits.canaries}),
            "inserted": len(splits.inserted_canaries),
            "reference": len(splits.reference_canaries),
        },
        "audit_design": {
            "prefix": AUDIT_PREFIX,
            "words_per_canary": params["audit_canary_tokens"],
            "canaries": len(splits.audit),
            "included": sum(r["included"] for r in splits.audit),
        },
    }
    if params.get("data_path"):  # the synthetic corpus's card stays as it was: its notes' PII is known, not detected
        from ppt_core import pii

        card["pii_detected"] = {split: pii.type_counts([r["pii"] for r in getattr(splits, split)
                                                         if r["kind"] == "note"])
                                for split in ("train", "heldout")}
    return card


# --- user data -----------------------------------------------------------------------------------
def user_split_sizes(params: dict, n_records: int) -> dict:
    """How many of a user file's `n_records` records each split takes: held-out first (n_heldout, at most a
    fifth of the file), then train (at most n_train of the rest); `unused` are left out of the study."""
    heldout = min(int(params["n_heldout"]), max(1, n_records // 5))
    train = min(int(params["n_train"]), n_records - heldout)
    return {"records": n_records, "train": train, "heldout": heldout, "unused": n_records - heldout - train}


def source_sentence(params: dict) -> str:
    """One line on the data a run uses: the synthetic corpus, or how many of the user's records go where
    and how to use more of them."""
    if not params.get("data_path"):
        return (f"synthetic clinical notes, seed {params['seed']}: {params['n_train']} training, "
                f"{params['n_heldout']} held-out and {params['n_public']} public notes")
    sizes = user_split_sizes(params, len(load_texts(params["data_path"], text_field=params.get("text_field", "text"))))
    line = (f"data {params['data_path']}: {sizes['records']} records; {sizes['train']} for training, "
            f"{sizes['heldout']} held out")
    if sizes["unused"]:
        line += (f", {sizes['unused']} unused (the profile's n_train={params['n_train']}): "
                 f"--set n_train={sizes['train'] + sizes['unused']} uses them all")
    return line


def load_texts(path: str | Path, *, text_field: str = "text") -> list[str]:
    """Records of a user file: .jsonl (`text_field` key), .csv (`text_field` column), or .txt
    (one record per line, or blank-line separated paragraphs when the file has blank lines).

    The file must be UTF-8 text (a byte-order mark, as spreadsheets write it, is accepted); a compressed,
    binary or otherwise-encoded file stops with its name, what was found and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist: pass an existing .jsonl, .csv or .txt file")
    if path.suffix not in (".jsonl", ".csv", ".txt"):
        raise DataError(f"data file {str(path)!r} has suffix {path.suffix!r}: use .jsonl, .csv or .txt")
    raw = _decoded(path)
    if not raw.strip():
        raise DataError(f"data file {str(path)!r} is empty: it needs at least 3 records")
    if path.suffix == ".jsonl":
        texts = _jsonl_texts(path, raw, text_field)
    elif path.suffix == ".csv":
        texts = _csv_texts(path, raw, text_field)
    else:
        blocks = raw.split("\n\n") if "\n\n" in raw.strip() else raw.splitlines()
        texts = [b.strip() for b in blocks if b.strip()]
    if len(texts) < 3:
        raise DataError(f"data file {str(path)!r} has {len(texts)} record(s): at least 3 are needed")
    return texts


# File signatures of formats that are not text (the first bytes of the file).
_BINARY_SIGNATURES = {b"\x1f\x8b": "a gzip archive", b"PK\x03\x04": "a zip archive (e.g. an .xlsx workbook)",
                      b"BZh": "a bzip2 archive", b"\xfd7zXZ": "an xz archive", b"PAR1": "a Parquet file",
                      b"%PDF": "a PDF document"}


def _decoded(path: Path) -> str:
    """The file's text: UTF-8, with or without a byte-order mark; newlines as the file has them (CSV
    fields may hold line breaks, which only the CSV reader can tell from record ends)."""
    head = path.read_bytes()
    for signature, kind in _BINARY_SIGNATURES.items():
        if head.startswith(signature):
            raise DataError(f"data file {str(path)!r} is {kind}, not text: decompress or export it as a UTF-8 "
                            f"{path.suffix} file first")
    if b"\x00" in head:
        raise DataError(f"data file {str(path)!r} holds NUL bytes (the first at byte {head.index(0)}): it is binary "
                        "or UTF-16 encoded, not UTF-8 text; save it as UTF-8")
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = head[: err.start].count(b"\n") + 1
        raise DataError(f"data file {str(path)!r} is not UTF-8: byte 0x{head[err.start]:02x} on line {line} "
                        "(a Latin-1 or Windows-1252 export, perhaps); save it as UTF-8 "
                        "(e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`)") from None
    return text if path.suffix == ".csv" else text.replace("\r\n", "\n").replace("\r", "\n")


def _jsonl_texts(path: Path, raw: str, text_field: str) -> list[str]:
    texts = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{path}: line {number} has no field {text_field!r} (found {_brief(fields)}); "
                            "pass --text-field")
        texts.append(_checked_text(record[text_field], path, f"line {number}"))
    return texts


def _csv_texts(path: Path, raw: str, text_field: str) -> list[str]:
    # The csv module reads the whole text: a quoted field may span lines ("Hello,\nmy order is late.").
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    try:
        if not reader.fieldnames or text_field not in reader.fieldnames:
            raise DataError(f"{path}: no column {text_field!r} (columns: {_brief(reader.fieldnames)}); "
                            "pass --text-field")
        return [_checked_text(row[text_field], path, f"record {n} (ending on line {reader.line_num})")
                for n, row in enumerate(reader, start=1)]
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num} is not valid CSV ({err}); save it as a comma-separated "
                        "UTF-8 file") from None


def _brief(value) -> str:
    """A short repr for an error message: a file's first line can be kilobytes long."""
    brief = reprlib.Repr()
    brief.maxlist, brief.maxstring, brief.maxother = 12, 40, 40
    return brief.repr(value)


def _checked_text(value, path: Path, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}: {where} has an empty or non-text value; every record needs text")
    return value.strip()

"""The synthetic clinical-notes corpus: patients, notes, canaries and audit canaries, all under a seed.

The corpus stands in for private clinical text. Each record is a short discharge-summary-style note
about one synthetic patient: PII fields (name, date of birth, MRN, phone, address) and clinical
content drawn from curated vocabularies, written through one of several templates with varied
phrasing. Canaries are secret-bearing sentences ("... portal access code: 048213.") with a secret
drawn uniformly from 10**secret_digits codes. Audit canaries (Steinke, Nasr & Jagielski, 2023) are a
short fixed prefix and `audit_canary_tokens` words drawn at random from the tokenizer's single-token
words; each is included in `train` independently with probability 1/2 by a random stream of its own
(`AUDIT_STREAM`), kept apart from every other draw of the study. `ppt_core.data.splits` puts them into splits.
"""

from __future__ import annotations

import random
from datetime import date, timedelta

import numpy as np
from faker import Faker
from faker.providers.date_time import change_year

from ppt_core.run.errors import DataError

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



def audit_inclusions(params: dict) -> np.ndarray:
    """Which of the profile's audit canaries go into `train`: independent fair coins from the audit's
    own stream (a function of the seed alone, so N is known before any data is written)."""
    return _audit_rng(params).random(int(params["n_audit_canaries"])) < 0.5


def _audit_rng(params: dict) -> np.random.Generator:
    return np.random.default_rng([AUDIT_STREAM, int(params["seed"])])



# --- the synthetic corpus ------------------------------------------------------------------------
# The day the notes are written: every date of birth and age counts from it, never from the clock (Faker's own
# date_of_birth counts from today, so the same seed gave other notes after midnight).
NOTES_WRITTEN_ON = date(2026, 12, 7)


def date_of_birth(fake: Faker, *, minimum_age: int, maximum_age: int, today: date = NOTES_WRITTEN_ON) -> date:
    """Faker's date_of_birth with `today` fixed: the same draw from the same stream, on any day it runs."""
    start, end = change_year(today, -(maximum_age + 1)), change_year(today, -minimum_age)
    dob = fake.date_time_ad(start_datetime=start, end_datetime=end).date()
    return dob if dob != start else dob + timedelta(days=1)


class NoteWriter:
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
        dob = date_of_birth(self.fake, minimum_age=18, maximum_age=95)
        return {
            "name": name,
            "dob": dob.strftime("%m/%d/%Y"),
            "mrn": mrn,
            "phone": self.fake.numerify("(###) ###-####"),
            "address": self.fake.address().replace("\n", ", "),
            "age": NOTES_WRITTEN_ON.year - dob.year,
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


def note_records(writer: NoteWriter, split: str, n: int) -> list[dict]:
    records = []
    for i in range(n):
        patient = writer.patient()
        pii = {k: patient[k] for k in ("name", "dob", "mrn", "phone", "address")}
        records.append({"id": f"{split}-{i:05d}", "kind": "note", "text": writer.note(patient), "pii": pii})
    return records


def canary_records(writer: NoteWriter, params: dict) -> list[dict]:
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


def audit_canary_records(params: dict, tokenizer) -> list[dict]:
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
        canaries.append({"id": f"audit-{i:04d}", "kind": "audit",
                         "text": AUDIT_PREFIX + "".join(" " + w for w in words),
                         "secret_tokens": n_words, "included": bool(include), "pii": {}})
    return canaries

"""PII in free text: what Microsoft Presidio's pattern recognizers find, offline.

A user's own records (`data_path`) come without PII labels, so the leak measures of notebooks 05 and 06
have nothing to look for unless the text is searched. `detect` gives each record the PII found in it, in
the shape the synthetic notes' known fields already have ({field: value}), and `detector_quality` scores
the detector against those known fields.

What it detects: the entity types of Presidio's predefined recognizers that need no language model,
listed by `detected_types()`: e-mail addresses, phone numbers (Google's libphonenumber), credit-card
numbers (Luhn checksum), IBANs (checksum), IP and MAC addresses, URLs, crypto wallet addresses, UUIDs,
numeric dates, US SSNs, ITINs, passports, driver licences and bank numbers, UK NHS numbers and medical
licences. Each is a pattern, a checksum or a validation, never a guess from meaning.

What it cannot detect: names (PERSON), places and street addresses (LOCATION), organisations and
nationalities. Presidio finds those with a spaCy NER model (en_core_web_lg), which is downloaded from
GitHub at run time: this study never downloads. The spaCy pipeline here is a blank English one: it only
tokenises, and gives each word its lower-case form as its "lemma", so that Presidio's context words
("phone", "email", "card") still raise a match's score. Free-form identifiers (an MRN, an order number, a
customer id) look like any other number: Presidio's bank-account and licence patterns flag them only
with a weak score, below SCORE_THRESHOLD, so they are rarely reported. What a record is found to hold is a
lower bound of the PII it holds, and a leak measure on user data counts only what was found.

Offline: Presidio validates an e-mail address's domain with tldextract, whose default fetches the public
suffix list over the network on first use (and waits on it where the network hangs); here it reads the
snapshot bundled with the package instead.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

# Presidio's score of a phone number with no context word nearby, the weakest detection kept. Weaker
# patterns (0.01-0.3: any 8-17 digits as a bank account, 9 digits as a passport) are guesses Presidio
# expects context words to confirm; on free text they flag every order number and quantity.
SCORE_THRESHOLD = 0.4
BATCH_SIZE = 64  # texts per spaCy batch; tokenising is cheap, so this only bounds memory


class Span(NamedTuple):
    """One detection: Presidio's entity type, character offsets [start, end) and score in [0, 1]."""

    entity_type: str
    start: int
    end: int
    score: float


@functools.cache
def analyzer():
    """Presidio's AnalyzerEngine on a blank spaCy pipeline, with its pattern recognizers (built once)."""
    # imported here: spaCy and Presidio take seconds to import, and only detection needs them
    import spacy
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import EmailRecognizer
    from spacy.language import Language

    @Language.component("ppt_lowercase_lemma")
    def lowercase_lemma(doc):
        for token in doc:
            token.lemma_ = token.lower_
        return doc

    class BlankSpacyNlpEngine(SpacyNlpEngine):
        """SpacyNlpEngine on spacy.blank("en"): tokens and lower-case lemmas, no entities, nothing downloaded."""

        def load(self) -> None:
            nlp = spacy.blank("en")
            nlp.add_pipe("ppt_lowercase_lemma")
            self.nlp = {"en": nlp}

    bundled_suffixes = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's e-mail recognizer, its domain checked against tldextract's bundled suffix list."""

        def validate_result(self, pattern_text: str) -> bool:
            return bundled_suffixes(pattern_text).fqdn != ""

    engine = BlankSpacyNlpEngine()
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    # The NER recognizer reads entities a blank pipeline never produces; listing it would claim PERSON.
    registry.remove_recognizer("SpacyRecognizer")
    registry.remove_recognizer("EmailRecognizer")
    registry.add_recognizer(OfflineEmailRecognizer())
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


def detected_types() -> list[str]:
    """The entity types the detector can report, from the analyzer itself."""
    return sorted(analyzer().get_supported_entities())


def find_spans(texts: Sequence[str]) -> list[list[Span]]:
    """Per text, its detections scoring >= SCORE_THRESHOLD, in text order. Where spans overlap (a URL
    inside an e-mail address) only the highest-scoring one, then the longest, is kept."""
    from presidio_analyzer import BatchAnalyzerEngine

    batches = BatchAnalyzerEngine(analyzer()).analyze_iterator(
        list(texts), language="en", batch_size=BATCH_SIZE, score_threshold=SCORE_THRESHOLD)
    spans = []
    for results in batches:
        kept: list[Span] = []
        for r in sorted(results, key=lambda r: (-r.score, r.start - r.end, r.start)):
            if all(r.end <= k.start or r.start >= k.end for k in kept):
                kept.append(Span(r.entity_type, r.start, r.end, float(r.score)))
        spans.append(sorted(kept, key=lambda s: s.start))
    return spans


def detect(texts: Sequence[str]) -> list[dict[str, str]]:
    """Per text, the PII found in it as {field: value}: the field is the entity type ("EMAIL_ADDRESS"),
    numbered from the second value of a type on ("EMAIL_ADDRESS_2"); a value repeated in a text counts once."""
    found = []
    for text, spans in zip(texts, find_spans(texts)):
        fields: dict[str, str] = {}
        for span in spans:
            value = text[span.start:span.end]
            if value in fields.values():
                continue
            n = sum(entity_type(field) == span.entity_type for field in fields)
            fields[span.entity_type if n == 0 else f"{span.entity_type}_{n + 1}"] = value
        found.append(fields)
    return found


def entity_type(field: str) -> str:
    """The entity type of a field of `detect` ("EMAIL_ADDRESS_2" -> "EMAIL_ADDRESS")."""
    return re.sub(r"_\d+$", "", field)


def type_counts(found: Sequence[dict[str, str]]) -> dict[str, int]:
    """Values found per entity type over records (each a dict from `detect`), most frequent first."""
    return dict(Counter(entity_type(field) for fields in found for field in fields).most_common())


def detector_quality(records: Sequence[dict]) -> dict:
    """How well the detector finds PII whose values are known (records with a `pii` dict, e.g. the synthetic notes).

    fields[name]: of the field's values that occur in their record's text, how many a detected span covers
    whole (recall), and as what entity type. spans: of all detected spans, how many overlap a known value
    (precision; a span on PII the records do not list counts against it).
    """
    records = [r for r in records if r.get("pii")]
    spans = find_spans([r["text"] for r in records])
    fields: dict[str, dict] = {}
    on_known = 0
    for record, found in zip(records, spans):
        known = []  # (field, start, end) of every known value where it occurs in the text
        for field, value in record["pii"].items():
            starts = [m.start() for m in re.finditer(re.escape(value), record["text"])]
            entry = fields.setdefault(field, {"values": 0, "found": 0, "found_as": Counter()})
            entry["values"] += bool(starts)
            covering = [s for s in found for start in starts if s.start <= start and start + len(value) <= s.end]
            entry["found"] += bool(covering)
            entry["found_as"].update({covering[0].entity_type} if covering else ())
            known += [(field, start, start + len(value)) for start in starts]
        on_known += sum(any(s.start < end and start < s.end for _, start, end in known) for s in found)
    detected = sum(len(found) for found in spans)
    return {
        "records": len(records),
        "score_threshold": SCORE_THRESHOLD,
        "fields": {field: {"values": e["values"], "found": e["found"],
                           "recall": e["found"] / e["values"] if e["values"] else None,
                           "found_as": ", ".join(t for t, _ in e["found_as"].most_common()) or None}
                   for field, e in fields.items()},
        "spans": {"detected": detected, "on_known_pii": on_known,
                  "precision": on_known / detected if detected else None},
        "spans_by_type": dict(Counter(s.entity_type for found in spans for s in found).most_common()),
    }

"""The PII detector: what it finds in plain text, offline; how it scores against the synthetic notes'
known fields; and that user records carry what it finds while the synthetic corpus stays as it was."""

import socket

from ppt_core import data
from ppt_core.data import pii
from ppt_core.run import profiles


def test_finds_emails_and_phone_numbers_in_plain_text():
    text = ("Hi, my order is late. Reach me at dana.k@example.com or (212) 555-0147; "
            "my partner reads jo.k@example.org. Again: dana.k@example.com")
    found = pii.detect([text, "Nothing personal here, just a late parcel."])
    assert found[0] == {"EMAIL_ADDRESS": "dana.k@example.com", "PHONE_NUMBER": "(212) 555-0147",
                        "EMAIL_ADDRESS_2": "jo.k@example.org"}  # a repeated value counts once
    assert found[1] == {}
    assert pii.entity_type("EMAIL_ADDRESS_2") == "EMAIL_ADDRESS"
    assert pii.type_counts(found) == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1}


def test_a_url_inside_an_email_address_is_not_a_second_finding():
    assert pii.detect(["write to help@shop.example.com"]) == [{"EMAIL_ADDRESS": "help@shop.example.com"}]


def test_names_are_not_among_the_types_it_claims():
    types = pii.detected_types()
    assert {"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "DATE_TIME"} <= set(types)
    assert "PERSON" not in types and "LOCATION" not in types  # no NER model: it cannot find them


def test_detection_never_reaches_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    pii.analyzer.cache_clear()  # a fresh analyzer, whose e-mail validation has loaded no suffix list yet
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert pii.detect(["mail dana.k@example.co.uk today"]) == [{"EMAIL_ADDRESS": "dana.k@example.co.uk"}]


def test_detector_quality_is_reported_per_known_field(tiny, tmp_path):
    params = profiles.get_profile("smoke")
    splits = data.build_dataset(params, tmp_path, tokenizer=tiny[1])
    notes = data.known_pii_notes(splits, params)[:12]
    quality = pii.detector_quality(notes)
    assert quality["records"] == 12 and set(quality["fields"]) == {"name", "dob", "mrn", "phone", "address"}
    fields = quality["fields"]
    assert fields["dob"]["recall"] > 0.5 and fields["phone"]["recall"] > 0
    assert fields["dob"]["found_as"] == "DATE_TIME"
    assert fields["name"]["recall"] == 0  # no NER model: names are beyond it, and the report says so
    assert 0 < quality["spans"]["precision"] <= 1
    assert sum(quality["spans_by_type"].values()) == quality["spans"]["detected"]


def test_user_records_carry_the_pii_detected_in_them(tiny, tickets_file, tmp_path):
    params = dict(profiles.get_profile("smoke"), data_path=str(tickets_file))
    splits = data.build_dataset(params, tmp_path / "out", tokenizer=tiny[1])
    for record in splits.train + splits.heldout:
        if record["kind"] != "note":
            continue
        i = int(record["text"].split()[1].rstrip(":"))
        assert record["pii"]["EMAIL_ADDRESS"] == f"customer{i}@example.com"
        assert record["pii"]["PHONE_NUMBER"] == f"(212) 555-01{i:02d}"
        assert record["pii"]["EMAIL_ADDRESS_2"] == "help@shop.example.com"
    card = data.dataset_card(splits, params, tiny[1])
    n_heldout = len(splits.heldout)
    assert card["pii_detected"]["heldout"] == {"EMAIL_ADDRESS": 2 * n_heldout, "PHONE_NUMBER": n_heldout}
    # the detector is scored on the synthetic notes of `public`, whose PII is known
    assert data.known_pii_notes(splits, params) == splits.public


def test_the_synthetic_corpus_keeps_its_known_fields_and_card(tiny, tmp_path):
    params = profiles.get_profile("smoke")
    splits = data.build_dataset(params, tmp_path, tokenizer=tiny[1])
    assert all(set(r["pii"]) == {"name", "dob", "mrn", "phone", "address"} for r in splits.train if r["kind"] == "note")
    assert "pii_detected" not in data.dataset_card(splits, params, tiny[1])


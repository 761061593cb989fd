"""The synthetic corpus: one seed writes the same patients and notes, every patient is new, each canary's
secret is drawn from its space, and the audit's coins come from a stream of their own."""

import pytest

from ppt_core.data import corpus
from ppt_core.run import profiles


@pytest.fixture(scope="module")
def params():
    return profiles.get_profile("smoke", canary_repetitions=[1, 3], canaries_per_repetition=2, n_reference_canaries=3)


def test_one_seed_writes_the_same_notes_and_every_patient_is_new():
    first, again, other = (corpus.note_records(corpus.NoteWriter(seed), "train", 50) for seed in (0, 0, 1))
    assert first == again and first != other
    assert len({r["pii"]["mrn"] for r in first}) == len({r["pii"]["name"] for r in first}) == 50
    for record in first:
        assert record["pii"]["name"] in record["text"] and record["kind"] == "note"


def test_canaries_follow_the_plan_and_their_secrets_the_space(params):
    canaries = corpus.canary_records(corpus.NoteWriter(0), params)
    assert [c["repetitions"] for c in canaries] == [1, 1, 3, 3, 0, 0, 0]
    assert len({c["secret"] for c in canaries}) == len(canaries)
    for canary in canaries:
        assert len(canary["secret"]) == params["secret_digits"] and canary["secret"].isdigit()
        assert canary["text"] == canary["prefix"] + canary["secret"] + "."


def test_audit_inclusions_come_from_their_own_stream(params):
    # The coins depend on the seed alone, not on any other setting of the data.
    same = corpus.audit_inclusions(dict(params, n_train=params["n_train"] * 2, canary_repetitions=[2, 7]))
    assert list(same) == list(corpus.audit_inclusions(params))
    assert list(corpus.audit_inclusions(dict(params, seed=params["seed"] + 1))) != list(same)

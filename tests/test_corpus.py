"""The synthetic corpus: one seed writes the same patients and notes, every patient is new, each canary's
secret is drawn from its space, and the audit's coins come from a stream of their own."""

import datetime

import faker.providers.date_time
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


def test_the_notes_are_the_same_on_any_day(monkeypatch):
    """Dates of birth count from the day the notes are written (corpus.NOTES_WRITTEN_ON), not from the clock: the
    same seed writes the same notes years later, and the draw is Faker's own date_of_birth on that day."""
    today = corpus.note_records(corpus.NoteWriter(0), "train", 20)

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2031, 3, 1, tzinfo=tz)

    monkeypatch.setattr(faker.providers.date_time, "datetime", Later)
    assert corpus.note_records(corpus.NoteWriter(0), "train", 20) == today
    written_on = corpus.NOTES_WRITTEN_ON

    class ThatDay(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(written_on.year, written_on.month, written_on.day, tzinfo=tz)

    monkeypatch.setattr(faker.providers.date_time, "datetime", ThatDay)
    fakers = [corpus.Faker("en_US") for _ in range(2)]
    for fake in fakers:
        fake.seed_instance(7)
    assert ([fakers[0].date_of_birth(minimum_age=18, maximum_age=95) for _ in range(20)]
            == [corpus.date_of_birth(fakers[1], minimum_age=18, maximum_age=95) for _ in range(20)])


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

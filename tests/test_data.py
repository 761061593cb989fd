"""The study's splits: deterministic, disjoint, sized by the profile, canaries inserted exactly as designed."""

import pytest

from ppt_core import data
from ppt_core.data import corpus
from ppt_core.run import errors, profiles


@pytest.fixture(scope="module")
def params():
    return profiles.get_profile("smoke", canary_repetitions=[1, 3, 5], canaries_per_repetition=2,
                                n_reference_canaries=3)


@pytest.fixture(scope="module")
def splits(params, tiny, tmp_path_factory):
    return data.build_dataset(params, tmp_path_factory.mktemp("data"), tokenizer=tiny[1])


def test_same_seed_gives_identical_files(params, tiny, tmp_path):
    data.build_dataset(params, tmp_path / "a", tokenizer=tiny[1])
    data.build_dataset(params, tmp_path / "b", tokenizer=tiny[1])
    data.build_dataset(dict(params, seed=1), tmp_path / "c", tokenizer=tiny[1])
    for name in ("train.jsonl", "heldout.jsonl", "public.jsonl", "canaries.jsonl", "audit.jsonl", "dataset_card.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()


def test_splits_are_disjoint(splits):
    notes = {s: [r for r in getattr(splits, s) if r["kind"] == "note"] for s in ("train", "heldout", "public")}
    for a, b in (("train", "heldout"), ("train", "public"), ("heldout", "public")):
        assert not {r["text"] for r in notes[a]} & {r["text"] for r in notes[b]}
        assert not {r["pii"]["mrn"] for r in notes[a]} & {r["pii"]["mrn"] for r in notes[b]}
        assert not {r["pii"]["name"] for r in notes[a]} & {r["pii"]["name"] for r in notes[b]}


def test_sizes_follow_the_profile(params, splits):
    assert len(splits.heldout) == params["n_heldout"] and len(splits.public) == params["n_public"]
    assert len(splits.train) == data.train_size(params)


def test_canaries_appear_exactly_their_repetitions(params, splits):
    every_text = {s: splits.texts(s) for s in ("train", "heldout", "public")}
    assert len(splits.inserted_canaries) == len(params["canary_repetitions"]) * params["canaries_per_repetition"]
    assert len(splits.reference_canaries) == params["n_reference_canaries"]
    for canary in splits.canaries:
        in_train = sum(canary["secret"] in text for text in every_text["train"])
        assert in_train == canary["repetitions"], canary["id"]
        assert not any(canary["secret"] in t for t in every_text["heldout"] + every_text["public"])


def test_canary_secrets_are_drawn_from_the_secret_space(params, splits):
    secrets = [c["secret"] for c in splits.canaries]
    assert len(set(secrets)) == len(secrets)
    for canary in splits.canaries:
        assert len(canary["secret"]) == params["secret_digits"] and canary["secret"].isdigit()
        assert canary["text"] == canary["prefix"] + canary["secret"] + "."


def test_notes_vary_and_carry_their_pii(splits):
    notes = [r for r in splits.train if r["kind"] == "note"]
    assert len({r["text"].split()[0] for r in notes}) >= 3  # several templates
    for record in notes:
        assert record["pii"]["mrn"] in record["text"] and record["pii"]["name"] in record["text"]


def test_user_data_replaces_the_notes(params, tiny, tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(f'{{"body": "record number {i} of my own data"}}\n' for i in range(20)))
    user = dict(params, data_path=str(path), text_field="body")
    splits = data.build_dataset(user, tmp_path / "out", tokenizer=tiny[1])
    mine = [r for r in splits.train + splits.heldout if r["kind"] == "note"]
    assert len(mine) == 20 and all("of my own data" in r["text"] for r in mine)
    assert not any("of my own data" in t for t in splits.texts("public"))  # calibration stays public


@pytest.mark.parametrize("key,value", [("n_train", 0), ("canary_repetitions", [0, 2]), ("secret_digits", 1)])
def test_impossible_settings_are_refused(params, key, value):
    with pytest.raises(errors.DataError, match=key):
        data.check_params(dict(params, **{key: value}))


def test_audit_canaries_join_train_exactly_when_included(params, splits):
    assert len(splits.audit) == params["n_audit_canaries"]
    train_texts = [r["text"] for r in splits.train if r["kind"] == "audit"]
    for record in splits.audit:
        assert train_texts.count(record["text"]) == int(record["included"]), record["id"]
    assert list(corpus.audit_inclusions(params)) == [r["included"] for r in splits.audit]
    assert 0 < sum(r["included"] for r in splits.audit) < len(splits.audit)


def test_audit_words_are_the_tokens_the_audit_scores(splits, tiny):
    tokenizer = tiny[1]
    for record in splits.audit[:8]:
        words = record["text"][len(corpus.AUDIT_PREFIX):].split(" ")[1:]
        ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"]
        assert len(words) == record["secret_tokens"]
        assert ids[-len(words):] == [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]


def test_a_training_length_that_would_cut_canaries_is_refused_before_anything_is_written(tmp_path):
    params = profiles.get_profile("smoke", train_max_length=12)
    with pytest.raises(errors.DataError, match=r"train_max_length\): raise train_max_length to at least"):
        data.build_dataset(params, tmp_path / "data")
    assert not (tmp_path / "data").exists()

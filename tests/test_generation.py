"""Synthetic-data generation: seeded determinism, left padding, prompts free of training text, and the
quality and leakage measures on texts whose answers we know."""

import pytest

from ppt_core import data
from ppt_core.data import corpus
from ppt_core.leakage import generation
from ppt_core.run import profiles

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sampling_is_deterministic_under_a_seed(tiny):
    model, tokenizer = tiny
    prompts = ["DISCHARGE SUMMARY\nPatient:", "Discharge note for", "Name:"]
    kw = dict(max_new_tokens=12, temperature=0.8, top_p=0.95, batch_size=2, progress=False)
    first = generation.generate(model, tokenizer, prompts, seed=3, **kw)
    assert first == generation.generate(model, tokenizer, prompts, seed=3, **kw)
    assert first != generation.generate(model, tokenizer, prompts, seed=4, **kw)
    assert all(text.startswith(prompt) for text, prompt in zip(first, prompts))


def test_left_padding_leaves_each_continuation_as_if_alone(tiny):
    model, tokenizer = tiny
    short = tokenizer("Name:", add_special_tokens=False)["input_ids"]
    long = tokenizer("HOSPITAL DISCHARGE - Jane Doe, MRN 12345678", add_special_tokens=False)["input_ids"]
    alone = generation.generate_ids(model, tokenizer, [short], max_new_tokens=8, progress=False)
    batched = generation.generate_ids(model, tokenizer, [long, short], max_new_tokens=8, progress=False)
    assert batched[1] == alone[0]


def test_prompts_are_template_headers_never_training(tiny, tmp_path):
    _, tokenizer = tiny
    params = profiles.get_profile("smoke", n_synthetic=7)
    splits = data.build_dataset(params, tmp_path, tokenizer=tokenizer)
    prompts = generation.synthesis_prompts(params, splits, tokenizer)
    assert len(prompts) == 7 and set(prompts) <= {t.split("{")[0].rstrip() for t in corpus.TEMPLATES}
    train_pii = {value for r in splits.train for value in r["pii"].values()}
    assert not any(value in p for p in prompts for value in train_pii)


@pytest.fixture(scope="module")
def user_splits(tiny, tickets_file, tmp_path_factory):
    params = profiles.get_profile("smoke", n_synthetic=9, data_path=str(tickets_file))
    return params, data.build_dataset(params, tmp_path_factory.mktemp("user-data"), tokenizer=tiny[1])


def test_user_data_prompts_open_held_out_records_never_training(tiny, user_splits):
    params, splits = user_splits
    prompts = generation.synthesis_prompts(params, splits, tiny[1])
    assert len(prompts) == params["n_synthetic"]
    assert all(any(t.startswith(p) for t in splits.texts("heldout")) for p in prompts)
    assert not any(t.startswith(p) for p in prompts for t in splits.texts("train", kind="note"))
    assert not any(t.startswith(p) for p in prompts for t in splits.texts("public"))  # not the synthetic notes


def test_distinct_n():
    assert generation.distinct_n(["a b c d"], 1) == 1.0
    assert generation.distinct_n(["a a a a"], 1) == 0.25
    assert generation.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)


def test_leakage_counts_only_training_only_pii(tiny, tmp_path):
    _, tokenizer = tiny
    params = profiles.get_profile("smoke")
    splits = data.build_dataset(params, tmp_path, tokenizer=tokenizer)
    private = generation.training_only_pii(splits)
    member = next(r for r in splits.train if r["kind"] == "note")["pii"]
    outsider = splits.heldout[0]["pii"]
    assert member["mrn"] in private["values"] and outsider["mrn"] not in private["values"]
    assert generation.leaked_pii(f"MRN {member['mrn']}.", private) == [member["mrn"]]
    # A name alone is not enough; with its date of birth it is.
    assert generation.leaked_pii(f"{member['name']} came in.", private) == []
    named = f"{member['name']}, born {member['dob']}"
    assert generation.leaked_pii(named, private) == [f"{member['name']} / {member['dob']}"]
    assert generation.leaked_pii(f"MRN {outsider['mrn']}, {outsider['name']} {outsider['dob']}", private) == []


def test_user_data_leaks_are_detected_training_values_no_other_record_holds(user_splits):
    params, splits = user_splits
    private = generation.training_only_pii(splits, user_data=True)
    member = next(r for r in splits.train if r["kind"] == "note")
    email, phone = member["pii"]["EMAIL_ADDRESS"], member["pii"]["PHONE_NUMBER"]
    assert member["pii"]["EMAIL_ADDRESS_2"] == "help@shop.example.com"
    copied = f"Hello, I am writing again. Reach me at {email} or {phone}. Copy to help@shop.example.com."
    assert generation.leaked_pii(copied, private) == sorted([email, phone])
    # the help desk is in held-out tickets too: no one record's secret, never a leak
    assert "help@shop.example.com" in generation.shared_pii(splits)
    assert "help@shop.example.com" not in private["values"]
    # a held-out ticket's own value was never trained on
    outsider = splits.heldout[0]["pii"]["EMAIL_ADDRESS"]
    assert generation.leaked_pii(f"Reach me at {outsider}.", private) == []
    # the synthetic corpus's measure (MRNs, names with DOBs) is blind to all of it
    assert generation.leaked_pii(copied, generation.training_only_pii(splits)) == []


def test_synthetic_report_on_user_data_counts_a_copied_ticket_as_a_leak(tiny, user_splits):
    params, splits = user_splits
    copy = next(r for r in splits.train if r["kind"] == "note")["text"]
    texts = [copy, "An unrelated reply."]
    summary, rows = generation.synthetic_report(texts, splits, dict(params, n_bootstrap=20), tiny[1])
    assert summary["pii_leak_share"]["value"] == 0.5
    assert rows[0]["leaked_pii"] and rows[1]["leaked_pii"] == []


def test_rounded_keeps_six_significant_digits_and_drops_nan():
    assert generation.rounded({"a": [1.23456789, float("nan")], "b": 7}) == {"a": [1.23457, None], "b": 7}


def test_the_preview_shows_base_and_the_profiles_first_fine_tuned_arm_by_name():
    rows = {arm: [{"text": f"a note by {arm}"}] for arm in ("base", "pruned-noft", "pruned-nodp", "pruned-dp8")}
    params = profiles.get_profile("smoke", train_arms=["pruned"], epsilons=[8])
    assert generation.sample_preview(rows, params) == ("--- base ---\na note by base\n\n"
                                                       "--- pruned-nodp ---\na note by pruned-nodp\n")
    untrained = profiles.get_profile("smoke", train_arms=[])
    assert generation.sample_preview(rows, untrained) == "--- base ---\na note by base\n"


def test_synthetic_table_has_a_row_per_arm_with_the_leakage_shares():
    summary = {"distinct_1": 0.5, "distinct_2": 0.8, "mean_tokens": 40.0,
               "bertscore_nearest_heldout": {"value": 0.7}, "memorisation_share": {"value": 0.55},
               "pii_leak_share": {"value": 0.0}}
    table = generation.synthetic_table({"base": summary, "full-nodp": dict(summary, pii_leak_share={"value": 0.25})})
    assert list(table.index) == ["base", "full-nodp"]
    assert table.loc["full-nodp", "records with training-only PII"] == 0.25
    assert table.loc["base", "closer to train than held-out"] == 0.55

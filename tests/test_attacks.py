"""The attacks: exact ranks on scorers whose ranks we know, ROC arithmetic, the KV-cached scorers against plain
scoring, and membership (reference attack included), extraction and canaries against a tiny model that memorised
a few records."""

import warnings

import numpy as np
import pytest
import torch

from ppt_core import attacks, data, evaluation, profiles, tokens
from ppt_core.models import load_model

MEMORISED_TOKENS = 32  # records are truncated to this many tokens, for training and scoring alike


pytestmark = pytest.mark.usefixtures("one_thread")


# --- exact ranks on a hand-built scorer -----------------------------------------------------------
def _table_scorer(table: np.ndarray):
    """next_digit_logprobs from a table: log p(digit d at position i | any partial code) = table[i, d]."""
    def next_digit_logprobs(partials):
        return np.array([table[len(p)] for p in partials])
    return next_digit_logprobs


def _brute_force_rank(table: np.ndarray, secret: str) -> float:
    digits = len(secret)
    scores = {f"{v:0{digits}d}": sum(table[i, int(c)] for i, c in enumerate(f"{v:0{digits}d}")) for v in range(10**digits)}
    mine = scores.pop(secret)
    above = sum(s > mine + attacks.TIE_TOLERANCE for s in scores.values())
    ties = sum(abs(s - mine) <= attacks.TIE_TOLERANCE for s in scores.values())
    return 1 + above + ties / 2


@pytest.mark.parametrize("secret", ["000", "137", "999", "520"])
def test_digit_tree_rank_is_the_brute_force_rank(secret):
    table = np.log(np.random.default_rng(3).dirichlet(np.ones(10), size=3))
    found = attacks.digit_tree_rank(_table_scorer(table), secret, cap=1000, batch_size=7)
    assert found["exact"] and found["rank"] == _brute_force_rank(table, secret)


def test_digit_tree_rank_counts_ties_half():
    # Digits 0-4 equally likely, 5-9 equally (less) likely: every code shares its score with many others.
    table = np.log(np.tile(np.r_[np.full(5, 0.15), np.full(5, 0.05)], (3, 1)))
    for secret in ("000", "059", "999"):
        found = attacks.digit_tree_rank(_table_scorer(table), secret, cap=1000)
        assert found["exact"] and found["rank"] == _brute_force_rank(table, secret)
    # "000" is as likely as every other code of digits 0-4 (124 of them) and less likely than none
    assert attacks.digit_tree_rank(_table_scorer(table), "000", cap=1000)["rank"] == 1 + 124 / 2


def test_digit_tree_rank_past_the_cap_brackets_the_true_rank():
    table = np.log(np.random.default_rng(4).dirichlet(np.ones(10), size=4))
    secret = "9999"
    true_rank = _brute_force_rank(table, secret)
    found = attacks.digit_tree_rank(_table_scorer(table), secret, cap=50, batch_size=5)
    assert true_rank > 50 and not found["exact"] and found["rank"] is None
    assert 50 < found["rank_at_least"] <= true_rank <= found["rank_at_most"]


def test_exposure_from_samples_brackets_a_known_share():
    # 10% of the space is more likely than the secret: exposure log2(10) = 3.32 bits.
    rng = np.random.default_rng(0)
    samples = np.where(rng.random(2000) < 0.1, 1.0, -1.0)
    low, high = attacks.exposure_from_samples(0.0, samples, 10**6)
    assert low < np.log2(10) < high and high - low < 0.5


# --- ROC ------------------------------------------------------------------------------------------
def test_roc_auc_and_tpr_at_low_fpr():
    member, nonmember = np.array([0.9, 0.8, 0.7, 0.2]), np.array([0.6, 0.5, 0.4, 0.3])
    assert attacks.roc_auc(member, nonmember) == pytest.approx(0.75)  # 12 of 16 pairs ordered right
    assert attacks.roc_auc(nonmember, member) == pytest.approx(0.25)
    assert attacks.roc_auc(np.ones(5), np.ones(5)) == pytest.approx(0.5)  # ties count half
    assert attacks.tpr_at_fpr(member, nonmember, 0.0) == pytest.approx(0.75)
    assert attacks.tpr_at_fpr(member, nonmember, 0.25) == pytest.approx(0.75)
    fpr, tpr = attacks.roc_curve(member, nonmember)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


# --- the KV-cached canary scorer ------------------------------------------------------------------
def test_secret_logprobs_equal_plain_full_sequence_scoring(tiny):
    model, tokenizer = tiny
    prefix = "Patient portal access code for Ada Lovelace (MRN 12345678): "
    secrets = ["048213", "999999", "000001", "512"]
    cached = attacks.secret_logprobs(model, tokenizer, prefix, secrets, batch_size=3)
    n_prefix = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    for secret, value in zip(secrets, cached):
        logprobs = evaluation.token_logprobs(model, tokenizer, [prefix + secret], max_length=64, progress=False)[0]
        # logprobs[i] scores token i+1; drop the EOS that scoring appends.
        assert value == pytest.approx(logprobs[n_prefix - 1:-1].sum(), abs=1e-3)


def test_next_digit_scorer_agrees_with_plain_scoring_and_ranks_exactly(tiny):
    model, tokenizer = tiny
    prefix, secret = "Patient portal access code for Ada Lovelace (MRN 12345678): ", "407"
    scorer = attacks.NextDigitScorer(model, tokenizer, prefix, secret)
    path = scorer([secret[:i] for i in range(3)])
    via_digits = sum(path[i, int(c)] for i, c in enumerate(secret))
    assert via_digits == pytest.approx(attacks.secret_logprobs(model, tokenizer, prefix, [secret])[0], abs=1e-4)
    codes = [f"{v:03d}" for v in range(1000)]
    every = attacks.secret_logprobs(model, tokenizer, prefix, codes, batch_size=250)
    mine = every[codes.index(secret)]
    others = np.delete(every, codes.index(secret))
    expected = 1 + (others > mine + attacks.TIE_TOLERANCE).sum() + (np.abs(others - mine) <= attacks.TIE_TOLERANCE).sum() / 2
    found = attacks.digit_tree_rank(scorer, secret, cap=1000, batch_size=32)
    assert found["exact"] and found["rank"] == expected


def test_a_tokenizer_that_merges_digits_is_detected(tiny):
    model, tokenizer = tiny

    class Merging:  # spells "12" as one token, like GPT-2's BPE does for digit runs
        def __call__(self, text, add_special_tokens=False):
            ids = tokenizer(text.replace("12", "\x00"), add_special_tokens=False)["input_ids"]
            return {"input_ids": ids}

    with pytest.raises(attacks.DigitTokenizationError):
        attacks.NextDigitScorer(model, Merging(), "code: ", "12")


# --- against a model that memorised a handful of records --------------------------------------------
@pytest.fixture(scope="module")
def memorised(tmp_path_factory, one_thread):
    """A fresh tiny model fine-tuned (all weights, non-private) to near-zero loss on 4 notes and 2
    copies of one canary. training.finetune trains LoRA only, and LoRA cannot move the tiny random
    model's frozen embeddings and norms far enough for near-zero loss, so this is a plain Adam loop."""
    params = profiles.get_profile("smoke")
    splits = data.build_dataset(params, tmp_path_factory.mktemp("data"))
    model, tokenizer = load_model("tiny-random-llama", device="cpu")
    notes = [r for r in splits.train if r["kind"] == "note"][:4]
    canary = splits.inserted_canaries[0]
    batch = tokens.encode(tokenizer, [r["text"] for r in notes] + [canary["text"]] * 2, MEMORISED_TOKENS)
    torch.manual_seed(0)
    steps = 200
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return model, tokenizer, splits, notes, canary, loss.item()


def _scores(model, tokenizer, texts):
    return attacks.record_scores(model, tokenizer, texts, max_length=MEMORISED_TOKENS, min_k_percent=20,
                                 progress=False)


def _signals(model, tokenizer, texts, start=None):
    scores = _scores(model, tokenizer, texts)
    return attacks.membership_signals(scores, None if start is None else _scores(*start, texts))


def test_membership_auc_near_one_on_memorised_records_and_near_half_on_unseen(memorised, tiny):
    model, tokenizer, splits, notes, _, final_loss = memorised
    assert final_loss < 0.25, f"the fixture did not memorise (loss {final_loss:.3f})"
    heldout_texts, public_texts = splits.texts("heldout", kind="note")[:24], splits.texts("public", kind="note")[:24]
    members = _signals(model, tokenizer, [r["text"] for r in notes], start=tiny)
    heldout = _signals(model, tokenizer, heldout_texts, start=tiny)
    start_members = _signals(*tiny, [r["text"] for r in notes])
    start_heldout = _signals(*tiny, heldout_texts)
    summary, _ = attacks.membership_inference(members, heldout, start_members, start_heldout, n_boot=50)
    for signal in ("loss", "zlib", "min_k", "reference"):
        assert summary["signals"][signal]["auc"]["value"] >= 0.95, signal
    # the starting model never saw the members: the arm's gain over it is the leak
    assert summary["signals"]["reference"]["delta_auc_vs_start"]["low"] > 0.3
    assert list(summary["signals"]["loss"]["tpr_at_fpr"]) == ["0.1"]  # 24 non-members resolve 10%, not 1%
    # Two sets the model never saw, from one distribution: no signal (AUC sd ~ 0.085 at 24 vs 24).
    public = _signals(model, tokenizer, public_texts, start=tiny)
    unseen, _ = attacks.membership_inference(heldout, public, n_boot=50)
    for signal in ("loss", "zlib", "min_k", "reference"):
        assert abs(unseen["signals"][signal]["auc"]["value"] - 0.5) < 0.25, signal


def test_extraction_and_canaries_succeed_on_memorised_data_only(memorised):
    model, tokenizer, splits, notes, canary, _ = memorised
    kw = dict(prefix_tokens=8, suffix_tokens=MEMORISED_TOKENS - 9, progress=False)  # suffix stays in the trained span
    member_rows = attacks.extraction_attack(model, tokenizer, notes, **kw)
    heldout_rows = attacks.extraction_attack(model, tokenizer, splits.heldout[:4], **kw)
    assert np.mean([r["bertscore_f1"] for r in member_rows]) > np.mean([r["bertscore_f1"] for r in heldout_rows]) + 0.2
    assert np.mean([r["exact_suffix"] for r in member_rows]) >= 0.5
    assert not any(r["exact_suffix"] for r in heldout_rows)

    reference = splits.reference_canaries[0]
    inserted, never = (attacks.canary_exposure(model, tokenizer, c, rank_cap=20, n_samples=16) for c in (canary, reference))
    assert inserted["method"] == "exact" and inserted["rank"] <= 2 and inserted["exposure_low"] > 18
    assert never["method"] == "beyond cap" and never["exposure_low"] <= never["exposure_high"] < 16
    band = attacks.reference_band([dict(never, repetitions=0)])
    assert inserted["exposure_low"] > band[1]
    assert attacks.canary_extraction(model, tokenizer, [canary, reference], progress=False) == [True, False]


# --- user data: the PII the detector found ---------------------------------------------------------
def test_extraction_counts_the_detected_email_of_a_user_record(tiny, tickets_file, tmp_path, monkeypatch):
    model, tokenizer = tiny
    params = profiles.get_profile("smoke", data_path=str(tickets_file))
    splits = data.build_dataset(params, tmp_path, tokenizer=tokenizer)
    record = next(r for r in splits.train if r["kind"] == "note")
    ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"]
    kw = dict(prefix_tokens=6, suffix_tokens=len(ids) - 6, progress=False)  # the e-mail lies in the suffix
    # a model that memorised the record: its continuation of the prefix is the record's own next tokens
    monkeypatch.setattr(attacks, "generate_ids", lambda m, t, prompts, *, max_new_tokens, **_: [
        ids[len(p):len(p) + max_new_tokens] for p in prompts])
    row, = attacks.extraction_attack(model, tokenizer, [record], **kw)
    assert row["exact_suffix"] and row["pii_extracted"] == row["pii_in_suffix"]
    assert row["pii_extracted"] == ["EMAIL_ADDRESS", "EMAIL_ADDRESS_2", "PHONE_NUMBER"]
    # the help desk every ticket copies is no one record's: not counted once shared values are passed
    row, = attacks.extraction_attack(model, tokenizer, [record], shared=attacks.shared_pii(splits), **kw)
    assert row["pii_in_suffix"] == ["EMAIL_ADDRESS", "PHONE_NUMBER"] == row["pii_extracted"]


def test_pii_extraction_rate_without_pii_is_undefined_and_warns_nothing():
    row = {"bertscore_f1": 0.5, "exact_suffix": False, "pii_in_suffix": [], "pii_extracted": []}
    with_pii = dict(row, pii_in_suffix=["EMAIL_ADDRESS"], pii_extracted=["EMAIL_ADDRESS"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's All-NaN RuntimeWarning was what a 0-of-0 rate gave
        none = attacks.extraction_summary([row] * 4, [row] * 4, np.ones(4), np.ones(4), n_boot=50)
        members_only = attacks.extraction_summary([with_pii] * 4, [row] * 4, np.ones(4), np.ones(4), n_boot=50)
    assert none["pii_extraction_rate"] == {"members": None, "heldout": None, "members_minus_heldout": None}
    assert members_only["pii_extraction_rate"] == {"members": 1.0, "heldout": None, "members_minus_heldout": None}

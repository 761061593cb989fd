"""Canary exposure: exact ranks on scorers whose ranks we know, the exposure interval from samples, the
KV-cached scorers against plain scoring, and what notebook 06 shows of the canaries."""

import numpy as np
import pytest

from ppt_core import canaries, evaluation

pytestmark = pytest.mark.usefixtures("one_thread")


# --- exact ranks on a hand-built scorer -----------------------------------------------------------
def _table_scorer(table: np.ndarray):
    """next_digit_logprobs from a table: log p(digit d at position i | any partial code) = table[i, d]."""
    def next_digit_logprobs(partials):
        return np.array([table[len(p)] for p in partials])
    return next_digit_logprobs


def _brute_force_rank(table: np.ndarray, secret: str) -> float:
    digits = len(secret)
    scores = {f"{v:0{digits}d}": sum(table[i, int(c)] for i, c in enumerate(f"{v:0{digits}d}"))
              for v in range(10**digits)}
    mine = scores.pop(secret)
    above = sum(s > mine + canaries.TIE_TOLERANCE for s in scores.values())
    ties = sum(abs(s - mine) <= canaries.TIE_TOLERANCE for s in scores.values())
    return 1 + above + ties / 2


@pytest.mark.parametrize("secret", ["000", "137", "999", "520"])
def test_digit_tree_rank_is_the_brute_force_rank(secret):
    table = np.log(np.random.default_rng(3).dirichlet(np.ones(10), size=3))
    found = canaries.digit_tree_rank(_table_scorer(table), secret, cap=1000, batch_size=7)
    assert found["exact"] and found["rank"] == _brute_force_rank(table, secret)


def test_digit_tree_rank_counts_ties_half():
    # Digits 0-4 equally likely, 5-9 equally (less) likely: every code shares its score with many others.
    table = np.log(np.tile(np.r_[np.full(5, 0.15), np.full(5, 0.05)], (3, 1)))
    for secret in ("000", "059", "999"):
        found = canaries.digit_tree_rank(_table_scorer(table), secret, cap=1000)
        assert found["exact"] and found["rank"] == _brute_force_rank(table, secret)
    # "000" is as likely as every other code of digits 0-4 (124 of them) and less likely than none
    assert canaries.digit_tree_rank(_table_scorer(table), "000", cap=1000)["rank"] == 1 + 124 / 2


def test_digit_tree_rank_past_the_cap_brackets_the_true_rank():
    table = np.log(np.random.default_rng(4).dirichlet(np.ones(10), size=4))
    secret = "9999"
    true_rank = _brute_force_rank(table, secret)
    found = canaries.digit_tree_rank(_table_scorer(table), secret, cap=50, batch_size=5)
    assert true_rank > 50 and not found["exact"] and found["rank"] is None
    assert 50 < found["rank_at_least"] <= true_rank <= found["rank_at_most"]


def test_exposure_from_samples_brackets_a_known_share():
    # 10% of the space is more likely than the secret: exposure log2(10) = 3.32 bits.
    rng = np.random.default_rng(0)
    samples = np.where(rng.random(2000) < 0.1, 1.0, -1.0)
    low, high = canaries.exposure_from_samples(0.0, samples, 10**6)
    assert low < np.log2(10) < high and high - low < 0.5


# --- the KV-cached canary scorer ------------------------------------------------------------------
def test_secret_logprobs_equal_plain_full_sequence_scoring(tiny):
    model, tokenizer = tiny
    prefix = "Patient portal access code for Ada Lovelace (MRN 12345678): "
    secrets = ["048213", "999999", "000001", "512"]
    cached = canaries.secret_logprobs(model, tokenizer, prefix, secrets, batch_size=3)
    n_prefix = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    for secret, value in zip(secrets, cached):
        logprobs = evaluation.token_logprobs(model, tokenizer, [prefix + secret], max_length=64, progress=False)[0]
        # logprobs[i] scores token i+1; drop the EOS that scoring appends.
        assert value == pytest.approx(logprobs[n_prefix - 1:-1].sum(), abs=1e-3)


def test_next_digit_scorer_agrees_with_plain_scoring_and_ranks_exactly(tiny):
    model, tokenizer = tiny
    prefix, secret = "Patient portal access code for Ada Lovelace (MRN 12345678): ", "407"
    scorer = canaries.NextDigitScorer(model, tokenizer, prefix, secret)
    path = scorer([secret[:i] for i in range(3)])
    via_digits = sum(path[i, int(c)] for i, c in enumerate(secret))
    assert via_digits == pytest.approx(canaries.secret_logprobs(model, tokenizer, prefix, [secret])[0], abs=1e-4)
    codes = [f"{v:03d}" for v in range(1000)]
    every = canaries.secret_logprobs(model, tokenizer, prefix, codes, batch_size=250)
    mine = every[codes.index(secret)]
    others = np.delete(every, codes.index(secret))
    ties = (np.abs(others - mine) <= canaries.TIE_TOLERANCE).sum()
    expected = 1 + (others > mine + canaries.TIE_TOLERANCE).sum() + ties / 2
    found = canaries.digit_tree_rank(scorer, secret, cap=1000, batch_size=32)
    assert found["exact"] and found["rank"] == expected


def test_a_tokenizer_that_merges_digits_is_detected(tiny):
    model, tokenizer = tiny

    class Merging:  # spells "12" as one token, like GPT-2's BPE does for digit runs
        def __call__(self, text, add_special_tokens=False):
            ids = tokenizer(text.replace("12", "\x00"), add_special_tokens=False)["input_ids"]
            return {"input_ids": ids}

    with pytest.raises(canaries.DigitTokenizationError):
        canaries.NextDigitScorer(model, Merging(), "code: ", "12")


def test_canary_summary_counts_the_canaries_above_the_reference_band():
    summary = canaries.canary_summary(CANARY_ROWS, secret_space=10**6, rank_cap=100)
    assert summary["reference_band"] == [1.0, 2.5] and summary["highest_repetitions"] == 4
    assert summary["by_repetitions"]["4"] == {"canaries": 2, "exact": 1, "above_reference_band": 1,
                                              "exposure_low_min": 2.0, "exposure_high_max": 9.0,
                                              "greedy_extracted": 0.5}
    assert summary["by_repetitions"]["1"]["above_reference_band"] == 0  # 2 bits: inside the null band


CANARY_ROWS = [{"id": f"c{i}", "repetitions": reps, "method": method, "rank": None, "exposure_low": low,
                "exposure_high": high, "greedy_extracted": hit}
               for i, (reps, method, low, high, hit) in enumerate([
                   (0, "exact", 1.0, 1.0, False), (0, "exact", 2.5, 2.5, False),  # the null: never inserted
                   (4, "exact", 6.0, 6.0, True), (4, "beyond cap", 2.0, 9.0, False), (1, "exact", 2.0, 2.0, False)])]

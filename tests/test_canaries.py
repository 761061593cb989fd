"""Canaries: exact ranks on scorers whose ranks we know, the exposure interval from samples, the KV-cached
scorers against plain scoring, the rank p-value of a secret gain under the null, and what notebook 06 shows."""

import numpy as np
import pytest

from ppt_core.leakage import canaries
from ppt_core.scoring import evaluation

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
    one_each = canaries.canary_secret_logprobs(model, tokenizer, [{"prefix": prefix, "secret": s} for s in secrets])
    for secret, value, alone in zip(secrets, cached, one_each):
        logprobs = evaluation.token_logprobs(model, tokenizer, [prefix + secret], max_length=64, progress=False)[0]
        # logprobs[i] scores token i+1; drop the EOS that scoring appends.
        assert value == pytest.approx(logprobs[n_prefix - 1:-1].sum(), abs=1e-3)
        assert alone == pytest.approx(value, abs=1e-4)  # one candidate alone: its whole secret, as among many


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


def test_next_digit_scorer_scores_codes_of_mixed_lengths_in_one_batch_as_each_alone(tiny):
    """Partial codes of several lengths share one padded forward: each row equals the code scored on its own (the
    padding after a shorter code never reaches its last digit), in any order."""
    model, tokenizer = tiny
    scorer = canaries.NextDigitScorer(model, tokenizer, "Patient portal access code for Ada (MRN 1234): ", "4071")
    partials = ["40", "", "4", "407", "9", "12", "0"]
    together = scorer(partials)
    alone = np.concatenate([scorer([partial]) for partial in partials])
    assert np.abs(together - alone).max() < 1e-5
    assert np.abs(scorer(partials[::-1]) - together[::-1]).max() < 1e-5
    assert np.abs(together[0] - together[-2]).max() > 1e-3  # the rows differ: the test can tell them apart


def test_canaries_searched_in_lockstep_rank_as_each_searched_alone_in_fewer_forwards(tiny, monkeypatch):
    """canary_exposures runs the digit-tree searches of canaries with prefixes of one token length side by side,
    one forward per round for all of them: each canary's rank and exposure are those of its search alone (prefix
    lengths of 2 groups, exact ranks and ranks past the cap), from fewer forward passes."""
    model, tokenizer = tiny
    prefixes = ["Patient portal access code for Ada (MRN 1234): ", "Patient portal access code for Bo (MRN 5678): ",
                "Patient portal access code for Mr. James Hall (MRN 89611467): "]
    found = [canaries.digit_tree_rank(canaries.NextDigitScorer(model, tokenizer, p, "4071"), "4071", cap=10_000)
             for p in prefixes]
    assert len({len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prefixes}) == 2
    group = [{"id": f"canary-{i}", "repetitions": 0, "prefix": p, "secret": secret, "secret_digits": 4}
             for i, (p, secret) in enumerate((p, s) for p in prefixes for s in ("4071", "9922"))]
    forwards = []
    forward = evaluation.causal_lm_forward
    monkeypatch.setattr(evaluation, "causal_lm_forward", lambda *a, **k: forwards.append(1) or forward(*a, **k))
    for cap in (10_000, 20):
        together = canaries.canary_exposures(model, tokenizer, group, rank_cap=cap, n_samples=16, batch_size=8)
        in_lockstep = len(forwards)
        alone = [canaries.canary_exposure(model, tokenizer, c, rank_cap=cap, n_samples=16, batch_size=8)
                 for c in group]
        assert len(forwards) - in_lockstep > 2 * in_lockstep
        forwards.clear()
        for mine, theirs in zip(together, alone):
            assert mine["method"] == theirs["method"] and mine["rank"] == theirs["rank"]
            assert mine["exposure_low"] == pytest.approx(theirs["exposure_low"], abs=1e-9)
            assert mine["exposure_high"] == pytest.approx(theirs["exposure_high"], abs=1e-9)
    assert {row["method"] for row in together} == {"beyond cap"} and {row["method"] for row in alone} == {"beyond cap"}
    exact = canaries.canary_exposures(model, tokenizer, group[::2], rank_cap=10_000, n_samples=16)  # each "4071"
    assert [row["rank"] for row in exact] == [f["rank"] for f in found]
    assert {row["method"] for row in exact} == {"exact"}


def test_the_bf16_digit_scorer_reads_what_float32_does_within_bf16_rounding(tiny):
    """Under bf16 (the blocks in bf16 autocast, the head in float32: evaluation.causal_lm_forward) the scorer's
    KV cache and its kept positions give what bf16 scoring of the whole text gives, and stay within bf16's
    rounding of the float32 scorer, which they differ from (so the setting reaches the forward)."""
    model, tokenizer = tiny
    prefix, secret = "Patient portal access code for Ada (MRN 1234): ", "4071"
    exact = canaries.NextDigitScorer(model, tokenizer, prefix, secret)
    rounded = canaries.NextDigitScorer(model, tokenizer, prefix, secret, bf16=True)
    partials = ["", "4", "40", "407", "9", "12"]
    difference = np.abs(rounded(partials) - exact(partials)).max()
    assert 0 < difference < 0.05
    path = rounded([secret[:i] for i in range(len(secret))])
    via_digits = sum(path[i, int(c)] for i, c in enumerate(secret))
    n_prefix = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
    whole = evaluation.token_logprobs(model, tokenizer, [prefix + secret], max_length=64, bf16=True, progress=False)[0]
    assert via_digits == pytest.approx(whole[n_prefix - 1:-1].sum(), abs=2e-2)
    assert canaries.secret_logprobs(model, tokenizer, prefix, [secret], bf16=True)[0] == pytest.approx(via_digits,
                                                                                                     abs=2e-2)
    found = canaries.canary_exposure(model, tokenizer, {"id": "canary-0", "repetitions": 1, "prefix": prefix,
                                                        "secret": secret, "secret_digits": 4},
                                     rank_cap=10_000, n_samples=16, bf16=True)
    assert found["method"] == "exact" and found["exposure_low"] == found["exposure_high"]


def test_a_tokenizer_that_merges_digits_is_detected(tiny):
    model, tokenizer = tiny

    class Merging:  # spells "12" as one token, like GPT-2's BPE does for digit runs
        def __call__(self, text, add_special_tokens=False):
            ids = tokenizer(text.replace("12", "\x00"), add_special_tokens=False)["input_ids"]
            return {"input_ids": ids}

    with pytest.raises(canaries.DigitTokenizationError):
        canaries.NextDigitScorer(model, Merging(), "code: ", "12")


def test_a_canary_whose_secret_merges_is_ranked_by_samples_and_leaves_its_group_to_the_digit_tree(tiny):
    model, tokenizer = tiny

    class Merging:  # spells "12" as one token, like GPT-2's BPE does for digit runs
        pad_token_id = tokenizer.pad_token_id

        def __call__(self, text, add_special_tokens=False):
            merged = [t.replace("12", "\x00") for t in ([text] if isinstance(text, str) else text)]
            ids = tokenizer(merged, add_special_tokens=False)["input_ids"]
            return {"input_ids": ids[0] if isinstance(text, str) else ids}

    prefix = "Patient portal access code for Ada (MRN 3456): "
    group = [{"id": f"canary-{i}", "repetitions": 0, "prefix": prefix, "secret": secret, "secret_digits": 4}
             for i, secret in enumerate(("4071", "1290", "5555"))]
    rows = canaries.canary_exposures(model, Merging(), group, rank_cap=10_000, n_samples=16)
    assert [row["method"] for row in rows] == ["exact", "sampled", "exact"]
    assert [row["id"] for row in rows] == ["canary-0", "canary-1", "canary-2"]
    alone = canaries.canary_exposure(model, Merging(), group[2], rank_cap=10_000, n_samples=16)
    assert rows[2]["rank"] == alone["rank"]


def test_rank_p_value_is_exact_under_the_null():
    """A never-inserted canary's gain ranks uniformly among the others': p <= k / 21 exactly k / 21 of the time."""
    draws = np.random.default_rng(0).normal(size=(4000, 21))
    p = np.array([canaries.rank_p_value(row[0], row[1:]) for row in draws])
    assert p.min() == pytest.approx(1 / 21)
    for k in (1, 5, 10):
        assert np.mean(p <= k / 21 + 1e-12) == pytest.approx(k / 21, abs=0.012)
    assert canaries.rank_p_value(1.0, [1.0, 0.0]) == pytest.approx(2 / 3)  # a tie counts against the canary


def test_canary_summary_ranks_the_secret_gains_against_the_reference_canaries():
    summary = canaries.canary_summary(CANARY_ROWS, secret_space=10**6, rank_cap=100)
    assert summary["reference_band"] == [1.0, 2.5] and summary["highest_repetitions"] == 4
    assert summary["n_reference"] == 2 and summary["reference_gain_max"] == 0.4
    assert summary["by_repetitions"]["4"] == {"canaries": 2, "exact": 1, "above_reference_band": 1,
                                              "exposure_low_min": 2.0, "exposure_high_max": 9.0,
                                              "greedy_extracted": 0.5}
    # The gain decides, not the exposure: 2 bits is inside the exposure band, but 0.5 nats beats every reference.
    assert summary["by_repetitions"]["1"]["above_reference_band"] == 1
    assert summary["by_repetitions"]["0"]["above_reference_band"] == 0
    p_values = [row["p_value"] for row in summary["rows"]]
    assert p_values == pytest.approx([1.0, 0.5, 1 / 3, 2 / 3, 1 / 3])  # a reference canary against the other one
    assert [row["secret_gain"] for row in summary["rows"]] == [0.1, 0.4, 2.0, 0.3, 0.5]
    assert "p_value" not in CANARY_ROWS[0]  # the rows it was given are left as they were


CANARY_ROWS = [{"id": f"c{i}", "repetitions": reps, "method": method, "rank": None, "exposure_low": low,
                "exposure_high": high, "greedy_extracted": hit, "secret_gain": gain}
               for i, (reps, method, low, high, hit, gain) in enumerate([
                   (0, "exact", 1.0, 1.0, False, 0.1), (0, "exact", 2.5, 2.5, False, 0.4),  # the null: never inserted
                   (4, "exact", 6.0, 6.0, True, 2.0), (4, "beyond cap", 2.0, 9.0, False, 0.3),
                   (1, "exact", 2.0, 2.0, False, 0.5)])]

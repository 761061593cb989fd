"""The attacks: exposure on a scorer whose ranks we know, ROC arithmetic, the KV-cached canary scorer
against plain scoring, and membership/extraction/canaries against a tiny model that memorised a few records."""

import numpy as np
import pytest
import scipy.stats
import torch

from ppt_core import attacks, data, evaluation, profiles, tokens
from ppt_core.models import load_model

MEMORISED_TOKENS = 32  # records are truncated to this many tokens, for training and scoring alike


pytestmark = pytest.mark.usefixtures("one_thread")


# --- exposure on a hand-built scorer --------------------------------------------------------------
def _normal_scorer(space: int):
    """log p(secret) = -Phi^-1((v + 0.5) / space) for secret v: secret v has rank exactly v + 1, and the
    log-perplexities of the space are normally distributed, as the extrapolating fit assumes."""
    def score(prefix, secrets):
        values = np.array([int(s) for s in secrets])
        return -scipy.stats.norm.ppf((values + 0.5) / space)
    return score


def _canary(secret: str, digits: int) -> dict:
    return {"id": "canary-007", "prefix": "code: ", "secret": secret, "secret_digits": digits, "repetitions": 4}


def test_exposure_is_exact_when_the_space_is_scored_in_full():
    # Secret 099 of 1000 has rank 100: exposure = log2(1000) - log2(100) = log2(10).
    row = attacks.canary_exposure(_normal_scorer(1000), [_canary("099", 3)], n_samples=2000, progress=False)[0]
    assert row["method"] == "exact rank"
    assert row["rank"] == 100
    assert row["exposure"] == pytest.approx(np.log2(10))


def test_exposure_sampled_estimates_the_known_rank():
    space = 10**4
    # A mid-rank secret: rank 1000, exposure log2(10) = 3.32, within reach of 400 samples.
    mid = attacks.canary_exposure(_normal_scorer(space), [_canary("0999", 4)], n_samples=400, progress=False)[0]
    assert mid["method"].startswith("rank among 400 sampled secrets")
    assert mid["exposure"] == mid["exposure_sampled"] == pytest.approx(np.log2(10), abs=0.6)
    assert mid["exposure_normal_fit"] == pytest.approx(np.log2(10), abs=0.6)
    # Rank 1: exposure log2(10**4) = 13.3, beyond what 400 samples can resolve (cap log2(401) = 8.6);
    # the secret beats every sample, so the headline extrapolates from the normal fit and still finds it.
    top = attacks.canary_exposure(_normal_scorer(space), [_canary("0000", 4)], n_samples=400, progress=False)[0]
    assert top["samples_more_likely"] == 0
    assert top["exposure_sampled"] == pytest.approx(np.log2(401))
    assert top["exposure"] == pytest.approx(np.log2(space), abs=1.0)


def test_candidate_secrets_are_the_same_for_every_arm_and_exclude_the_secret():
    canary = _canary("123456", 6)
    first, exhaustive = attacks.candidate_secrets(canary, 50, seed=0)
    again, _ = attacks.candidate_secrets(canary, 50, seed=0)
    assert not exhaustive and first == again and len(first) == 50
    assert "123456" not in first and all(len(s) == 6 for s in first)


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
    steps = 120
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


def test_membership_auc_near_one_on_memorised_records_and_near_half_on_unseen(memorised):
    model, tokenizer, splits, notes, _, final_loss = memorised
    assert final_loss < 0.25, f"the fixture did not memorise (loss {final_loss:.3f})"
    members = _scores(model, tokenizer, [r["text"] for r in notes])
    heldout = _scores(model, tokenizer, splits.texts("heldout", kind="note")[:24])
    summary, _ = attacks.membership_inference(members, heldout, n_boot=50)
    for signal in ("loss", "zlib", "min_k"):
        assert summary[signal]["auc"]["value"] >= 0.95, signal
    assert summary["loss"]["tpr_at_1pct_fpr"] >= 0.8
    # Two sets the model never saw, from one distribution: no signal (AUC sd ~ 0.085 at 24 vs 24).
    public = _scores(model, tokenizer, splits.texts("public", kind="note")[:24])
    unseen, _ = attacks.membership_inference(heldout, public, n_boot=50)
    for signal in ("loss", "zlib", "min_k"):
        assert abs(unseen[signal]["auc"]["value"] - 0.5) < 0.25, signal


def test_extraction_and_canaries_succeed_on_memorised_data_only(memorised):
    model, tokenizer, splits, notes, canary, _ = memorised
    kw = dict(prefix_tokens=8, suffix_tokens=MEMORISED_TOKENS - 9, progress=False)  # suffix stays in the trained span
    member_rows = attacks.extraction_attack(model, tokenizer, notes, **kw)
    heldout_rows = attacks.extraction_attack(model, tokenizer, splits.heldout[:4], **kw)
    assert np.mean([r["bertscore_f1"] for r in member_rows]) > np.mean([r["bertscore_f1"] for r in heldout_rows]) + 0.2
    assert np.mean([r["exact_suffix"] for r in member_rows]) >= 0.5
    assert not any(r["exact_suffix"] for r in heldout_rows)

    reference = splits.reference_canaries[0]
    score = lambda prefix, secrets: attacks.secret_logprobs(model, tokenizer, prefix, secrets)  # noqa: E731
    inserted, never = attacks.canary_exposure(score, [canary, reference], n_samples=100, progress=False)
    assert inserted["exposure_sampled"] == pytest.approx(np.log2(101))  # ranked above every sampled secret
    assert inserted["exposure"] > 10 and never["exposure"] < 5
    assert attacks.canary_extraction(model, tokenizer, [canary, reference], progress=False) == [True, False]

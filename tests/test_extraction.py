"""Prefix extraction: the PII a continuation reproduces, the rates members and held-out records get, and
what notebook 06 shows of them."""

import warnings

import numpy as np
import pytest
import scipy.stats

from ppt_core import data
from ppt_core.leakage import extraction, generation
from ppt_core.run import profiles
from ppt_core.uncertainty import power


# --- user data: the PII the detector found ---------------------------------------------------------
def test_extraction_counts_the_detected_email_of_a_user_record(tiny, tickets_file, tmp_path, monkeypatch):
    model, tokenizer = tiny
    params = profiles.get_profile("smoke", data_path=str(tickets_file))
    splits = data.build_dataset(params, tmp_path, tokenizer=tokenizer)
    record = next(r for r in splits.train if r["kind"] == "note")
    ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"]
    kw = dict(prefix_tokens=6, suffix_tokens=len(ids) - 6, progress=False)  # the e-mail lies in the suffix
    # a model that memorised the record: its continuation of the prefix is the record's own next tokens
    monkeypatch.setattr(extraction, "generate_ids", lambda m, t, prompts, *, max_new_tokens, **_: [
        ids[len(p):len(p) + max_new_tokens] for p in prompts])
    row, = extraction.extraction_attack(model, tokenizer, [record], **kw)
    assert row["exact_suffix"] and row["pii_extracted"] == row["pii_in_suffix"]
    assert row["pii_extracted"] == ["EMAIL_ADDRESS", "EMAIL_ADDRESS_2", "PHONE_NUMBER"]
    # the help desk every ticket copies is no one record's: not counted once shared values are passed
    row, = extraction.extraction_attack(model, tokenizer, [record], shared=generation.shared_pii(splits), **kw)
    assert row["pii_in_suffix"] == ["EMAIL_ADDRESS", "PHONE_NUMBER"] == row["pii_extracted"]


def test_pii_extraction_rate_without_pii_is_undefined_and_warns_nothing():
    row = {"bertscore_f1": 0.5, "exact_suffix": False, "pii_in_suffix": [], "pii_extracted": []}
    with_pii = dict(row, pii_in_suffix=["EMAIL_ADDRESS"], pii_extracted=["EMAIL_ADDRESS"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's All-NaN RuntimeWarning was what a 0-of-0 rate gave
        none = extraction.extraction_summary([row] * 4, [row] * 4, np.ones(4), np.ones(4), n_boot=50)
        members_only = extraction.extraction_summary([with_pii] * 4, [row] * 4, np.ones(4), np.ones(4), n_boot=50)
    assert none["pii_extraction_rate"] == {"members": None, "heldout": None, "members_minus_heldout": None}
    assert members_only["pii_extraction_rate"] == {"members": 1.0, "heldout": None, "members_minus_heldout": None}


def test_extraction_summary_compares_members_with_held_out_records():
    row = {"bertscore_f1": 0.9, "exact_suffix": True, "pii_in_suffix": ["MRN"], "pii_extracted": ["MRN"]}
    heldout = dict(row, bertscore_f1=0.5, exact_suffix=False, pii_extracted=[])
    summary = extraction.extraction_summary([row] * 4, [heldout] * 4, np.ones(4), np.ones(4), n_boot=50)
    assert summary["pii_extraction_rate"]["members"] == 1.0 and summary["pii_extraction_rate"]["heldout"] == 0.0
    assert summary["bertscore_f1"]["members_minus_heldout"]["value"] == pytest.approx(0.4)
    assert summary["records"] == {"members": 4, "heldout": 4}
    # every record alike: no spread, so any positive gap is detected at once; a perplexity gap of 0 never is
    assert summary["bertscore_f1"]["detectable_difference"] == 0.0 and summary["bertscore_f1"]["records_needed"] == 1
    assert summary["perplexity"]["records_needed"] is None
    spread = [dict(row, bertscore_f1=f) for f in (0.7, 0.9, 1.1, 0.9)]
    varied = extraction.extraction_summary(spread, [heldout] * 4, np.array([2.0, 3, 4, 3]), np.full(4, 5.0), n_boot=50)
    assert varied["bertscore_f1"]["detectable_difference"] == pytest.approx(
        power.detectable_difference(np.std([0.7, 0.9, 1.1, 0.9], ddof=1), 0.0, 4))
    members_sd = np.std([2, 3, 4, 3], ddof=1)
    assert varied["perplexity"]["records_needed"] == power.difference_sample_size(2.0, 0.0, members_sd)
    exact = summary["exact_suffix_rate"]  # exact intervals, and Fisher's one-sided test of members hitting more
    assert exact["members"]["value"] == 1.0 and exact["heldout"]["high"] == pytest.approx(0.602, abs=1e-3)
    assert exact["p_value"] == pytest.approx(scipy.stats.fisher_exact([[4, 0], [0, 4]], alternative="greater").pvalue)
    assert exact["p_value"] == pytest.approx(1 / 70)  # 1 of C(8, 4) tables is as extreme

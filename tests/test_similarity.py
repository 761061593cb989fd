"""Layer similarity: S is a proper similarity matrix and equals a direct per-pair computation."""

import numpy as np
import pytest
import torch

from ppt_core.data import tokens
from ppt_core.pruning import similarity

TEXTS = [
    "Patient admitted with community-acquired pneumonia and discharged on amoxicillin.",
    "Short note.",
    "Follow-up in two weeks with the cardiology clinic; continue apixaban 5 mg twice daily.",
    "The patient tolerated the procedure well.",
    "Atrial fibrillation with rapid ventricular response, rate controlled with metoprolol.",
]


def direct_similarity(model, tokenizer, texts, pooling):
    """Every boundary state of every text, one text at a time (no padding), then cosine per pair."""
    per_token = []
    for text in texts:
        batch = tokens.encode(tokenizer, [text], 64, add_eos=False)
        captured = {}
        # The raw output of the last block is the input of the final norm.
        handle = model.model.norm.register_forward_pre_hook(
            lambda m, args, captured=captured: captured.setdefault("last", args[0]))
        with torch.no_grad():
            out = model.model(input_ids=batch["input_ids"], output_hidden_states=True)
        handle.remove()
        states = list(out.hidden_states[:-1]) + [captured["last"]]  # HF's last state is after the norm
        states = torch.stack([s[0] for s in states])  # (L+1, T, D)
        if pooling == "last":
            states = states[:, -1:]
        per_token.append(states)
    states = torch.cat(per_token, dim=1)
    n = states.shape[0]
    result = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            result[i, j] = torch.nn.functional.cosine_similarity(states[i], states[j], dim=-1).mean().item()
    return result


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_matches_direct_per_pair_computation(tiny, pooling):
    model, tokenizer = tiny
    S = similarity.layer_similarity(model, tokenizer, TEXTS, batch_size=2, max_length=64, pooling=pooling,
                                    progress=False)
    depth = model.config.num_hidden_layers
    assert S.shape == (depth + 1, depth + 1)
    np.testing.assert_allclose(S, S.T, atol=0)
    np.testing.assert_allclose(np.diag(S), 1.0)
    np.testing.assert_allclose(S, direct_similarity(model, tokenizer, TEXTS, pooling), atol=2e-5)


def test_padding_and_batching_do_not_change_s(tiny):
    model, tokenizer = tiny
    one_by_one = similarity.layer_similarity(model, tokenizer, TEXTS, batch_size=1, max_length=64, progress=False)
    padded = similarity.layer_similarity(model, tokenizer, TEXTS, batch_size=5, max_length=64, progress=False)
    np.testing.assert_allclose(one_by_one, padded, atol=2e-5)


def test_last_state_is_the_raw_block_output_not_the_normed_one(tiny):
    # With HF's normed last hidden state, S[L-1, L] would differ; our S must not.
    model, tokenizer = tiny
    S = similarity.layer_similarity(model, tokenizer, TEXTS[:2], max_length=64, progress=False)
    batch = tokens.encode(tokenizer, TEXTS[:1], 64, add_eos=False)
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], output_hidden_states=True).hidden_states
    normed = torch.nn.functional.cosine_similarity(hidden[-2][0], hidden[-1][0], dim=-1).mean().item()
    assert abs(S[-2, -1] - normed) > 1e-3


def test_hooks_are_removed(tiny):
    model, tokenizer = tiny
    blocks = similarity.decoder_blocks(model)

    def hook_counts():  # transformers may hold hooks of its own on the blocks
        return [(len(b._forward_hooks), len(b._forward_pre_hooks)) for b in blocks]

    before = hook_counts()
    similarity.layer_similarity(model, tokenizer, TEXTS[:1], progress=False)
    assert hook_counts() == before


def test_bad_pooling_and_empty_texts_stop_clearly(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="pooling must be one of"):
        similarity.layer_similarity(model, tokenizer, TEXTS, pooling="max")
    with pytest.raises(ValueError, match="at least one calibration text"):
        similarity.layer_similarity(model, tokenizer, [])


def test_block_redundancy_reads_the_right_diagonal():
    S = np.arange(16, dtype=float).reshape(4, 4)
    np.testing.assert_array_equal(similarity.block_redundancy(S, 1), [S[0, 1], S[1, 2], S[2, 3]])
    np.testing.assert_array_equal(similarity.block_redundancy(S, 2), [S[0, 2], S[1, 3]])


def test_check_params_names_the_bad_value():
    from ppt_core.run import profiles

    params = profiles.get_profile("quick")
    similarity.check_params(params)
    with pytest.raises(ValueError, match="similarity_pooling must be one of"):
        similarity.check_params(dict(params, similarity_pooling="max"))
    with pytest.raises(ValueError, match=r"n_calibration \(500\) exceeds n_public"):
        similarity.check_params(dict(params, n_calibration=500))

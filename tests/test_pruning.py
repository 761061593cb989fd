"""Layer selection on hand-built S; bad removal requests (each architecture's removal: test_architectures.py)."""

import numpy as np
import pytest
from transformers import BertConfig, BertForMaskedLM, OPTConfig, OPTForCausalLM

from ppt_core import pruning
from ppt_core.pruning import similarity

# --- selection on a hand-built S ------------------------------------------------------------------
# 6 blocks. S[l, l+1] (block redundancy):   0.50 0.90 0.60 0.95 0.70 0.10
# S[l, l+2] (two-block runs):               0.40 0.55 0.80 0.65 0.30
PAIRS = [0.50, 0.90, 0.60, 0.95, 0.70, 0.10]
RUNS = [0.40, 0.55, 0.80, 0.65, 0.30]


def hand_built_similarity(pairs=PAIRS, runs=RUNS):
    n = len(pairs) + 1
    S = np.eye(n)
    for l, s in enumerate(pairs):
        S[l, l + 1] = S[l + 1, l] = s
    for l, s in enumerate(runs):
        S[l, l + 2] = S[l + 2, l] = s
    return S


def test_pairwise_picks_the_most_redundant_blocks():
    S = hand_built_similarity()
    assert pruning.select_layers(S, 1, "pairwise") == [3]
    assert pruning.select_layers(S, 2, "pairwise") == [1, 3]
    assert pruning.select_layers(S, 3, "pairwise") == [1, 3, 4]


def test_block_picks_the_best_consecutive_run():
    S = hand_built_similarity()
    assert pruning.select_layers(S, 2, "block") == [2, 3]  # S[2, 4] = 0.80, though pairwise picks [1, 3]
    assert pruning.select_layers(S, 1, "block") == [3]


def test_last_and_random_baselines():
    S = hand_built_similarity()
    assert pruning.select_layers(S, 2, "last") == [4, 5]
    draws = [pruning.select_layers(S, 3, "random", seed=seed) for seed in range(8)]
    for draw in draws:
        assert draw == sorted(set(draw)) and len(draw) == 3 and all(0 <= b < 6 for b in draw)
    assert draws[0] == pruning.select_layers(S, 3, "random", seed=0)
    assert len({tuple(d) for d in draws}) > 1


def test_iterative_recomputes_s_and_maps_back_to_original_indices(tiny, monkeypatch):
    model, tokenizer = tiny  # 6 blocks; the first step uses the S passed in
    S = hand_built_similarity()  # removes block 3 first
    # After block 3 is gone, the 5-block model's S says its position 3 (original block 4) is most redundant.
    second = hand_built_similarity(pairs=[0.2, 0.3, 0.4, 0.99, 0.1], runs=[0.1, 0.1, 0.1, 0.1])
    depths = []

    def fake_similarity(pruned_model, *args, **kw):
        depths.append(pruning.n_blocks(pruned_model))
        return second

    monkeypatch.setattr(similarity, "layer_similarity", fake_similarity)
    chosen = pruning.select_layers(S, 2, "iterative", model=model, tokenizer=tokenizer, texts=["x"])
    assert chosen == [3, 4]
    assert depths == [5]  # S was measured again on the pruned model, once
    assert pruning.select_layers(S, 2, "pairwise") != chosen
    # Removal order is kept by iterative_order; select_layers returns the blocks sorted.
    second[:] = hand_built_similarity(pairs=[0.2, 0.99, 0.4, 0.3, 0.1], runs=[0.1, 0.1, 0.1, 0.1])
    assert pruning.iterative_order(model, tokenizer, ["x"], 2, first_similarity=S, progress=False) == [3, 1]
    assert pruning.select_layers(S, 2, "iterative", model=model, tokenizer=tokenizer, texts=["x"]) == [1, 3]


def test_iterative_without_a_model_stops_clearly():
    with pytest.raises(pruning.PruningError, match="pass model, tokenizer and texts"):
        pruning.select_layers(hand_built_similarity(), 2, "iterative")


@pytest.mark.parametrize("n_remove", [0, 6, 7, -1])
def test_impossible_counts_stop_clearly(n_remove):
    with pytest.raises(pruning.PruningError, match="n_remove must be between 1 and 5"):
        pruning.select_layers(hand_built_similarity(), n_remove, "pairwise")


def test_unknown_strategy_stops_clearly():
    with pytest.raises(pruning.PruningError, match="unknown pruning strategy 'greedy'"):
        pruning.select_layers(hand_built_similarity(), 2, "greedy")


def test_check_params_and_depth():
    from ppt_core.run import profiles

    params = profiles.get_profile("quick")
    pruning.check_params(params)
    for key, value, message in (("prune_strategy", "magic", "unknown strategy 'magic'"),
                                ("n_remove", 0, "n_remove must be an integer >= 1"),
                                ("prune_sweep", [0, 8, 4], "prune_sweep must be increasing"),
                                ("prune_strategies", ["pairwise", "deepest"], "unknown strategy 'deepest'")):
        with pytest.raises(pruning.PruningError, match=message):
            pruning.check_params(dict(params, **{key: value}))
    pruning.check_depth(params, 30)
    with pytest.raises(pruning.PruningError, match="model has only 6"):
        pruning.check_depth(dict(params, n_remove=6, prune_sweep=[0]), 6)


# --- removal (every supported architecture is tested in test_architectures.py) ---------------------


def test_bad_layer_requests_stop_clearly(tiny):
    model, _ = tiny  # 6 blocks
    with pytest.raises(pruning.PruningError, match=r"block indices \[6\] are out of range"):
        pruning.prune_layers(model, [2, 6])
    with pytest.raises(pruning.PruningError, match="n_remove must be between 1 and 5"):
        pruning.prune_layers(model, list(range(6)))
    with pytest.raises(pruning.PruningError, match="n_remove must be between 1 and 5"):
        pruning.prune_layers(model, [])
    with pytest.raises(pruning.PruningError, match="duplicates"):
        pruning.prune_layers(model, [2, 2])


def test_a_decoder_without_a_named_row_prunes_and_an_encoder_stops_clearly():
    model = OPTForCausalLM(OPTConfig(vocab_size=97, hidden_size=32, ffn_dim=64, num_hidden_layers=3,
                                     num_attention_heads=4, word_embed_proj_dim=32))
    pruned = pruning.prune_layers(model, [0])  # its blocks are found in the model: model.decoder.layers
    assert pruning.n_blocks(pruned) == 2 and pruned.config.num_hidden_layers == 2
    encoder = BertForMaskedLM(BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                         intermediate_size=64))
    with pytest.raises(pruning.PruningError, match="model_type 'bert'.*is an encoder"):
        pruning.prune_layers(encoder, [0])


def test_target_blocks_reuses_the_sweep_and_falls_back_to_selection():
    similarity = np.eye(5)
    for l in range(4):
        similarity[l, l + 1] = similarity[l + 1, l] = [0.5, 0.9, 0.6, 0.8][l]
    swept = [{"strategy": "pairwise", "n_removed": 2, "removed_blocks": [0, 3]}]
    assert pruning.target_blocks(swept, similarity, 2, "pairwise") == [0, 3]  # taken as swept
    assert pruning.target_blocks([], similarity, 2, "pairwise") == [1, 3]  # chosen now

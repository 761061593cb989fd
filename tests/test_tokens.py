"""Record encoding: truncation to max_length with the EOS kept, padding on either side masked out of the
attention and the labels."""

import pytest
import torch

from ppt_core.data import tokens


def test_encode_truncates_keeps_eos_and_masks_padding(tiny):
    _, tokenizer = tiny
    texts = ["one two three four five six seven eight nine ten", "one"]
    right = tokens.encode(tokenizer, texts, max_length=5)
    left = tokens.encode(tokenizer, texts, max_length=5, padding_side="left")
    assert right["input_ids"].shape == (2, 5)
    assert right["input_ids"][0, -1] == tokenizer.eos_token_id  # truncated, still ends a record
    assert right["attention_mask"][1].tolist() == [1, 1, 0, 0, 0]
    assert left["attention_mask"][1].tolist() == [0, 0, 0, 1, 1]
    for batch in (right, left):
        assert (batch["labels"][batch["attention_mask"] == 0] == tokens.IGNORE_INDEX).all()
        assert (batch["labels"][batch["attention_mask"] == 1] == batch["input_ids"][batch["attention_mask"] == 1]).all()
    assert tokens.encode(tokenizer, texts, max_length=5, add_eos=False)["input_ids"][0, -1] != tokenizer.eos_token_id


def test_batched_slices_and_refuses_an_empty_batch_size():
    assert list(tokens.batched(list(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(tokens.batched([1], 0))
    with pytest.raises(ValueError, match="no texts"):
        tokens.encode(None, [], 8)


def test_pad_right_and_left_masks_exactly_the_real_tokens():
    sequences = [[5, 6, 7], [8], []]
    ids, mask = tokens.pad(sequences, 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask = tokens.pad(sequences, 0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]] and mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="'middle'"):
        tokens.pad(sequences, 0, side="middle")


def test_logsumexp_in_place_is_torchs_bit_for_bit_and_leaves_the_exponentials_of_the_softmax():
    """The normaliser every log-probability and the training loss subtract: equal to torch.logsumexp's to the bit
    (so no score moves), rows of large, masked (-inf) and infinite logits included, with the logits overwritten by
    exp(logit - max), which the returned sums turn into the softmax."""
    logits = torch.randn(3, 5, 1000, generator=torch.Generator().manual_seed(0)) * 8
    logits[0, 1] += 300  # far from 0: the max shift matters
    logits[1, 2, :500] = float("-inf")  # masked words
    logits[2, 3] = float("-inf")  # nothing possible
    logits[2, 4, 7] = float("inf")
    expected = torch.logsumexp(logits, dim=-1, keepdim=True)
    softmax = torch.softmax(logits[:2], dim=-1)
    normaliser, sums = tokens.logsumexp_in_place(logits)
    assert torch.equal(normaliser, expected)
    assert torch.allclose(logits[:2] / sums[:2], softmax, rtol=1e-5, atol=1e-7)
    assert normaliser[2, 3] == float("-inf") and normaliser[2, 4] == float("inf")

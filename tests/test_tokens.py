"""Record encoding: truncation to max_length with the EOS kept, padding on either side masked out of the
attention and the labels."""

import pytest

from ppt_core import tokens


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

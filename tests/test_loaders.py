"""Loaders for the user's own data: good files load, bad files stop with a message naming the problem."""

import pytest

from ppt_core.data import DataError, load_texts


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_jsonl_with_a_chosen_field(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"body": "one"}\n{"body": "two"}\n\n{"body": "three"}\n')
    assert load_texts(path, text_field="body") == ["one", "two", "three"]


def test_csv_with_a_chosen_column(tmp_path):
    path = write(tmp_path, "a.csv", 'id,note\n1,"first, with a comma"\n2,second\n3,third\n')
    assert load_texts(path, text_field="note") == ["first, with a comma", "second", "third"]


def test_text_one_record_per_line(tmp_path):
    assert load_texts(write(tmp_path, "a.txt", "one\ntwo\nthree\n")) == ["one", "two", "three"]


def test_text_blank_line_separated(tmp_path):
    path = write(tmp_path, "a.txt", "first line\nsame record\n\nsecond\n\nthird\n")
    assert load_texts(path) == ["first line\nsame record", "second", "third"]


@pytest.mark.parametrize("name,text,message", [
    ("a.jsonl", "", "is empty"),
    ("a.jsonl", '{"text": "ok"}\n{not json}\n', "line 2 is not valid JSON"),
    ("a.jsonl", '{"text": "ok"}\n{"body": "x"}\n', "line 2 has no field 'text'"),
    ("a.jsonl", '{"text": "ok"}\n{"text": ""}\n{"text": "x"}\n', "line 2 has an empty"),
    ("a.csv", "note\nx\ny\nz\n", "no column 'text'"),
    ("a.txt", "only\ntwo\n", "at least 3"),
    ("a.parquet", "x", "suffix"),
])
def test_bad_files_are_refused(tmp_path, name, text, message):
    with pytest.raises(DataError, match=message):
        load_texts(write(tmp_path, name, text))


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_texts(tmp_path / "nope.jsonl")

"""Loaders for the user's own data: good files load, bad files stop with a message naming the problem."""

import gzip

import pytest

from ppt_core.data.user_data import load_texts
from ppt_core.run.errors import DataError


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


def test_csv_field_with_line_breaks_keeps_them(tmp_path):
    """A quoted field may span lines; the CSV reader, not a line split, decides where a record ends."""
    path = write(tmp_path, "a.csv", 'id,body\n1,"Hello,\nmy order is late.\nRegards"\n2,two\n3,three\n')
    assert load_texts(path, text_field="body") == ["Hello,\nmy order is late.\nRegards", "two", "three"]


def test_csv_with_a_byte_order_mark_and_windows_line_ends(tmp_path):
    """Spreadsheets export UTF-8 with a BOM and CRLF line ends: the first column keeps its plain name."""
    path = tmp_path / "a.csv"
    path.write_bytes("\ufeffbody,id\r\nfirst,1\r\nsecond,2\r\nthird,3\r\n".encode())
    assert load_texts(path, text_field="body") == ["first", "second", "third"]


def test_text_with_windows_line_ends_splits_paragraphs(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\r\nstill one\r\n\r\ntwo\r\n\r\nthree\r\n")
    assert load_texts(path) == ["one\nstill one", "two", "three"]


@pytest.mark.parametrize("name,content,message", [
    ("a.csv", "text\nCaf\u00e9 au lait\nna\u00efve\nd\u00e9j\u00e0 vu\n".encode("latin-1"),
     r"'.*a\.csv' is not UTF-8: byte 0xe9 on line 2 .*save it as UTF-8"),
    ("a.jsonl", gzip.compress(b'{"text": "x"}\n' * 3), r"'.*a\.jsonl' is a gzip archive, not text: decompress"),
    ("a.txt", b"\x00" * 10_000, r"'.*a\.txt' holds NUL bytes .*save it as UTF-8"),
    ("a.csv", "text\nx\ny\nz\n".encode("utf-16"), r"'.*a\.csv' holds NUL bytes"),
])
def test_encodings_and_binary_files_name_the_file_and_the_fix(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        load_texts(path)
    assert len(str(err.value)) < 300  # one line, not the file


def test_a_long_header_is_shortened_in_the_message(tmp_path):
    path = write(tmp_path, "a.csv", ",".join(f"column{i}" for i in range(2000)) + "\n" + "x," * 1999 + "x\n")
    with pytest.raises(DataError, match="no column 'text'") as err:
        load_texts(path)
    assert len(str(err.value)) < 400

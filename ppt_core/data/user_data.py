"""User data: the records of a user's .jsonl, .csv or .txt file, each way a file can be wrong stopped with
one message naming the file and the fix, and how many of its records each split of the study takes."""

from __future__ import annotations

import csv
import io
import json
import reprlib
from pathlib import Path

from ppt_core.run.errors import DataError


def split_sizes(params: dict, n_records: int) -> dict:
    """How many of a user file's `n_records` records each split takes: held-out first (n_heldout, at most a
    fifth of the file), then train (at most n_train of the rest); `unused` are left out of the study."""
    heldout = min(int(params["n_heldout"]), max(1, n_records // 5))
    train = min(int(params["n_train"]), n_records - heldout)
    return {"records": n_records, "train": train, "heldout": heldout, "unused": n_records - heldout - train}



def profile_texts(params: dict) -> list[str]:
    """The records of the profile's data file (params["data_path"], field params["text_field"])."""
    return load_texts(params["data_path"], text_field=params.get("text_field", "text"))


def load_texts(path: str | Path, *, text_field: str = "text") -> list[str]:
    """Records of a user file: .jsonl (`text_field` key), .csv (`text_field` column), or .txt
    (one record per line, or blank-line separated paragraphs when the file has blank lines).

    The file must be UTF-8 text (a byte-order mark, as spreadsheets write it, is accepted); a compressed,
    binary or otherwise-encoded file stops with its name, what was found and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {str(path)!r} does not exist: pass an existing .jsonl, .csv or .txt file")
    if path.suffix not in (".jsonl", ".csv", ".txt"):
        raise DataError(f"data file {str(path)!r} has suffix {path.suffix!r}: use .jsonl, .csv or .txt")
    raw = _decoded(path)
    if not raw.strip():
        raise DataError(f"data file {str(path)!r} is empty: it needs at least 3 records")
    if path.suffix == ".jsonl":
        texts = _jsonl_texts(path, raw, text_field)
    elif path.suffix == ".csv":
        texts = _csv_texts(path, raw, text_field)
    else:
        blocks = raw.split("\n\n") if "\n\n" in raw.strip() else raw.splitlines()
        texts = [b.strip() for b in blocks if b.strip()]
    if len(texts) < 3:
        raise DataError(f"data file {str(path)!r} has {len(texts)} record(s): at least 3 are needed")
    return texts


# File signatures of formats that are not text (the first bytes of the file).
_BINARY_SIGNATURES = {b"\x1f\x8b": "a gzip archive", b"PK\x03\x04": "a zip archive (e.g. an .xlsx workbook)",
                      b"BZh": "a bzip2 archive", b"\xfd7zXZ": "an xz archive", b"PAR1": "a Parquet file",
                      b"%PDF": "a PDF document"}


def _decoded(path: Path) -> str:
    """The file's text: UTF-8, with or without a byte-order mark; newlines as the file has them (CSV
    fields may hold line breaks, which only the CSV reader can tell from record ends)."""
    head = path.read_bytes()
    for signature, kind in _BINARY_SIGNATURES.items():
        if head.startswith(signature):
            raise DataError(f"data file {str(path)!r} is {kind}, not text: decompress or export it as a UTF-8 "
                            f"{path.suffix} file first")
    if b"\x00" in head:
        raise DataError(f"data file {str(path)!r} holds NUL bytes (the first at byte {head.index(0)}): it is binary "
                        "or UTF-16 encoded, not UTF-8 text; save it as UTF-8")
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = head[: err.start].count(b"\n") + 1
        raise DataError(f"data file {str(path)!r} is not UTF-8: byte 0x{head[err.start]:02x} on line {line} "
                        "(a Latin-1 or Windows-1252 export, perhaps); save it as UTF-8 "
                        "(e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`)") from None
    return text if path.suffix == ".csv" else text.replace("\r\n", "\n").replace("\r", "\n")


def _jsonl_texts(path: Path, raw: str, text_field: str) -> list[str]:
    texts = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{path}: line {number} has no field {text_field!r} (found {_brief(fields)}); "
                            "pass --text-field")
        texts.append(_checked_text(record[text_field], path, f"line {number}"))
    return texts


def _csv_texts(path: Path, raw: str, text_field: str) -> list[str]:
    # The csv module reads the whole text: a quoted field may span lines ("Hello,\nmy order is late.").
    reader = csv.DictReader(io.StringIO(raw, newline=""))
    try:
        if not reader.fieldnames or text_field not in reader.fieldnames:
            raise DataError(f"{path}: no column {text_field!r} (columns: {_brief(reader.fieldnames)}); "
                            "pass --text-field")
        return [_checked_text(row[text_field], path, f"record {n} (ending on line {reader.line_num})")
                for n, row in enumerate(reader, start=1)]
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num} is not valid CSV ({err}); save it as a comma-separated "
                        "UTF-8 file") from None


def _brief(value) -> str:
    """A short repr for an error message: a file's first line can be kilobytes long."""
    brief = reprlib.Repr()
    brief.maxlist, brief.maxstring, brief.maxother = 12, 40, 40
    return brief.repr(value)


def _checked_text(value, path: Path, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}: {where} has an empty or non-text value; every record needs text")
    return value.strip()

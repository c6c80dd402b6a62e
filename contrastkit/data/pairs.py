"""Pairs and triplets: the record type, strict readers (JSONL, CSV, TSV, Parquet, HF Dataset), a writer.

Columns: the anchor as "anchor" or "query", the positive as "positive" or "pos", optional hard
negatives as "negative" (one text), "negatives" (a list; in a CSV/TSV cell, a JSON list; also
FlagEmbedding's "neg" (its "pos", a list there, must hold one text here: one pair a line), or
"hard_negatives"), or "negative_1", "negative_2", ... (one text
each, as sentence-transformers' n-tuple data sets), optional "anchor_id" and "positive_id", and an
optional "source" (which data set the pair comes from: with `group_by_source` each training batch
holds pairs of one source). Other columns are ignored. CSV and TSV cells follow CSV quoting (as
pandas reads and writes them): a cell with the delimiter, a newline or a leading double quote is
quoted whole.
Every reader streams and checks each record as it goes; the first problem stops it with a DataError
naming file, line and field (for Parquet files and Datasets, "line" is the 1-based row number).

    for pair in iter_pairs("train.jsonl"):      # streams: files larger than memory are fine
        ...
    pairs = read_pairs("train.parquet")         # or all at once
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from contrastkit.data.validate import check_object, check_text, check_text_list, pick_field
from contrastkit.errors import DataError
from contrastkit.files import write_whole
from contrastkit.jsonl import iter_jsonl, iter_text_lines, require_file

ANCHOR = ("anchor", "query")
POSITIVE = ("positive", "pos")
NEGATIVES = ("negatives", "negative", "neg", "hard_negatives")  # "negative": one text; the others: a list
NUMBERED_NEGATIVE = re.compile(r"negative_(\d+)")  # sentence-transformers' n-tuples: negative_1, negative_2, ...
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


@dataclass
class Pair:
    """An anchor, its positive and any hard negatives; ids link back to a BEIR query / document."""

    anchor: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    anchor_id: str | None = None
    positive_id: str | None = None
    source: str | None = None

    def to_dict(self) -> dict:
        """The JSONL record: anchor, positive, then negatives and ids only where there are some."""
        out: dict = {"anchor": self.anchor, "positive": self.positive}
        if self.negatives:
            out["negatives"] = list(self.negatives)
        if self.anchor_id is not None:
            out["anchor_id"] = self.anchor_id
        if self.positive_id is not None:
            out["positive_id"] = self.positive_id
        if self.source is not None:
            out["source"] = self.source
        return out


def pair_from_record(record: Mapping, *, path: str | None = None, line: int | None = None) -> Pair:
    """Check one record (a mapping of column → value) and turn it into a Pair."""
    check_object(record, path=path, line=line)
    where = dict(path=path, line=line)
    name, value = pick_field(record, ANCHOR, **where)
    anchor = check_text(value, field=name, **where)
    name, value = pick_field(record, POSITIVE, **where)
    positive = check_text(value, field=name, **where)
    name, value = pick_field(record, NEGATIVES, required=False, **where)
    numbered = sorted(((int(m.group(1)), key) for key in record if isinstance(key, str)
                       and (m := NUMBERED_NEGATIVE.fullmatch(key)) and record[key] is not None))
    if name is not None and numbered:
        raise DataError(f'given twice, as "{name}" and "{numbered[0][1]}"', path=path, line=line, field=NEGATIVES[0])
    if numbered:
        negatives = [check_text(record[key], field=key, **where) for _, key in numbered]
    elif name is None:
        negatives = []
    elif name == "negative":
        negatives = [check_text(value, field=name, **where)]
    else:
        negatives = check_text_list(value, field=name, **where)
    ids = {key: check_text(record[key], field=key, **where) if record.get(key) is not None else None
           for key in ("anchor_id", "positive_id", "source")}
    return Pair(anchor, positive, negatives, **ids)


def check_columns(columns: Iterable[str], *, path: str | None, line: int | None = None) -> None:
    """Fail early, once, when a table lacks the anchor or the positive column or repeats a name."""
    columns = list(columns)
    for names in (ANCHOR, POSITIVE):
        if not any(n in columns for n in names):
            raise DataError(f'no such column (or "{names[1]}"); columns are: {", ".join(columns)}', path=path,
                            line=line, field=names[0])
    for name in columns:
        if columns.count(name) > 1:
            raise DataError("names two columns", path=path, line=line, field=name)


# ---------------------------------------------------------------------- readers
def pair_format(path: str | Path) -> str:
    """The reader for a file, from its extension."""
    if not Path(path).exists():
        raise DataError("file not found", path=str(path))
    if Path(path).is_dir():
        raise DataError("is a folder, not a pair file (a BEIR folder needs corpus.jsonl, queries.jsonl and "
                        "qrels/)", path=str(path))
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(f"unknown pair file type {Path(path).suffix or '(no extension)'!r}; expected one of "
                        f"{', '.join(FORMATS)}", path=str(path))
    return fmt


def iter_pairs(path: str | Path, *, format: str | None = None) -> Iterator[Pair]:
    """Stream the pairs of a JSONL, CSV, TSV or Parquet file, checking each record as it comes.

    format: "jsonl", "csv", "tsv" or "parquet"; by default taken from the file extension.
    A file with no pairs at all is an error too.
    """
    fmt = format or pair_format(path)
    readers = {"jsonl": _jsonl_records, "csv": _csv_records, "tsv": _csv_records,
               "parquet": _parquet_records}
    if fmt not in readers:
        raise DataError(f"unknown pair format {fmt!r}; expected one of {', '.join(readers)}", path=str(path))
    count = 0
    for line, record in readers[fmt](Path(path), fmt):
        yield pair_from_record(record, path=str(path), line=line)
        count += 1
    if count == 0:
        raise DataError("the file is empty: no pairs to read", path=str(path))


def read_pairs(path: str | Path, *, format: str | None = None) -> list[Pair]:
    """All pairs of a file as a list (see `iter_pairs`)."""
    return list(iter_pairs(path, format=format))


def _jsonl_records(path: Path, fmt: str) -> Iterator[tuple[int, object]]:
    return iter_jsonl(path)


def _csv_records(path: Path, fmt: str) -> Iterator[tuple[int, dict]]:
    """CSV / TSV rows as records. Empty cells in optional columns count as absent (CSV has no null)."""
    # Long documents overflow csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    numbered = iter_text_lines(path, keep_ends=True)  # csv needs them inside quoted cells
    current = [0]  # the physical line csv is reading, for errors inside a multi-line quoted cell

    def lines() -> Iterator[str]:
        for line_no, text in numbered:
            current[0] = line_no
            yield text

    reader = csv.reader(lines(), delimiter="," if fmt == "csv" else "\t", strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        check_columns(header, path=str(path), line=1)
        start = current[0] + 1
        for row in reader:
            if row:
                if len(row) != len(header):
                    raise DataError(f"{len(row)} cells, the header has {len(header)}", path=str(path),
                                    line=start)
                record = {k: v for k, v in zip(header, row) if v != "" or k in ANCHOR + POSITIVE}
                for name in NEGATIVES:
                    if name == "negative" and record.get(name, "").lstrip().startswith("["):
                        _refuse_a_list_in_one_negative(record[name], str(path), start)
                    elif name in record and name != "negative":
                        record[name] = _json_list_cell(record[name], str(path), start, name)
                if fmt == "tsv":
                    _refuse_merged_tsv_cells(header, row, str(path), start)
                yield start, record
            start = current[0] + 1
    except csv.Error as exc:
        hint = ("; TSV cells follow CSV quoting here (as pandas reads them): a cell that begins with a double "
                "quote must be quoted whole, with \"\" for a quote inside (or write the pairs as JSONL)"
                if fmt == "tsv" else "")
        raise DataError(f"malformed {fmt.upper()}: {exc}{hint}", path=str(path), line=current[0]) from exc


def _json_list_cell(cell: str, path: str, line: int, name: str = "negatives") -> object:
    try:
        return json.loads(cell)
    except json.JSONDecodeError as exc:
        raise DataError(f"expected a JSON list of strings in the cell: {exc.msg}", path=path, line=line,
                        field=name) from exc


def _refuse_a_list_in_one_negative(cell: str, path: str, line: int) -> None:
    """A "negative" cell is one text; one that reads as a JSON list was meant as several."""
    try:
        value = json.loads(cell)
    except json.JSONDecodeError:
        return  # a text that begins with "[": one negative
    if isinstance(value, list):
        raise DataError('holds a JSON list, but "negative" is one text: name the column "negatives" for a list',
                        path=path, line=line, field="negative")


def _refuse_merged_tsv_cells(header: list[str], row: list[str], path: str, line: int) -> None:
    """A TSV cell holding a tab: in a plain (unquoted) TSV, a cell that began with a double quote was
    read as quoted up to a later quote, swallowing the tabs (and lines) between: refused, not merged.
    (A quoted cell with a real tab in its text is refused too: the two cannot be told apart.)"""
    for name, cell in zip(header, row):
        if "\t" in cell:
            raise DataError('holds a tab: most often a cell that begins with a double quote, read (TSV cells '
                            'follow CSV quoting here, as pandas reads them) up to a later quote across tabs '
                            'and lines; a tab inside a text cannot be told from that in a TSV: quote such a '
                            'cell whole (with "" for a quote inside) and write the pairs as CSV or JSONL',
                            path=path, line=line, field=name)


def _parquet_records(path: Path, fmt: str) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    require_file(path)
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError variants for non-Parquet bytes
        raise DataError(f"not a Parquet file ({exc})", path=str(path)) from exc
    check_columns(table.schema_arrow.names, path=str(path))
    row = 0
    for batch in table.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def pairs_from_dataset(dataset, *, name: str = "dataset") -> list[Pair]:
    """Pairs from a Hugging Face `datasets.Dataset` (or any iterable of row dicts).

    Same columns and checks as the file readers; errors name `name` and the 1-based row.
    `datasets` itself is never imported here, so the package works without it.
    """
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        check_columns(columns, path=name)
    pairs = [pair_from_record(record, path=name, line=row) for row, record in enumerate(dataset, start=1)]
    if not pairs:
        raise DataError("is empty: no pairs to read", path=name)
    return pairs


# ---------------------------------------------------------------------- writer
def write_pairs(pairs: Iterable[Pair], path: str | Path) -> Path:
    """Write pairs as JSONL (see `Pair.to_dict`), whole: a hidden file renamed into place (`write_whole`)."""
    def write(handle) -> None:
        for pair in pairs:
            handle.write((json.dumps(pair.to_dict(), ensure_ascii=False) + "\n").encode("utf-8"))
    return write_whole(path, write)

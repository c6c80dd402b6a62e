"""Pair readers: the same pairs from every format, streaming, and an exact message for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contrastkit.data import Pair, iter_pairs, pairs_from_dataset, read_pairs, write_pairs
from contrastkit.errors import DataError

EXPECTED = [
    Pair("what is a fox", "A fox is a small canid."),
    Pair("capital of France", "Paris is the capital of France.", ["Lyon is in France."]),
    Pair("largest planet", "Jupiter is the largest planet.", ["Mars is red.", "Venus is hot."],
         anchor_id="q3", positive_id="d3"),
]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records),
                    encoding="utf-8")
    return path


def test_jsonl_reads_aliases_single_negative_lists_ids_and_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"anchor": "what is a fox", "positive": "A fox is a small canid.", "score": 0.9},
        "",
        {"query": "capital of France", "pos": "Paris is the capital of France.", "negative": "Lyon is in France."},
        {"anchor": "largest planet", "positive": "Jupiter is the largest planet.",
         "negatives": ["Mars is red.", "Venus is hot."], "anchor_id": "q3", "positive_id": "d3"},
    ])
    assert read_pairs(path) == EXPECTED


def test_an_emoji_written_as_a_surrogate_pair_escape_is_read(tmp_path):
    """json.dumps writes 😀 as "\\ud83d\\ude00": a whole pair is one character, only half of one is refused."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"anchor": "smile \U0001F600", "positive": "b"}) + "\n", encoding="utf-8")
    assert "\\ud83d\\ude00" in path.read_text() and read_pairs(path)[0].anchor == "smile \U0001F600"


def test_other_tools_names_for_negatives_are_read(tmp_path):
    """FlagEmbedding's "neg" list, "hard_negatives", and sentence-transformers' negative_1, negative_2, ...
    were silently dropped: training then said no pair had negatives, and mining discarded them."""
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"query": "q1", "pos": "p1", "neg": ["n1", "n2"]},
        {"anchor": "q2", "positive": "p2", "hard_negatives": ["n3"]},
        {"anchor": "q3", "positive": "p3", "negative_2": "n5", "negative_1": "n4", "negative_10": "n6"},
        {"anchor": "q4", "positive": "p4", "negative": "[in brackets] one text"},
    ])
    assert [p.negatives for p in read_pairs(path)] == [["n1", "n2"], ["n3"], ["n4", "n5", "n6"], ["[in brackets] one text"]]
    table = tmp_path / "pairs.csv"
    table.write_text('anchor,positive,negative_1,negative_2,neg\nq,p,n1,n2,\nr,s,,,"[""m""]"\n', encoding="utf-8")
    assert [p.negatives for p in read_pairs(table)] == [["n1", "n2"], ["m"]]


def test_a_plain_tsv_cell_that_begins_with_a_quote_is_refused_not_merged(tmp_path):
    """Unquoted TSV: a cell opening with a double quote ran to a later quote, swallowing a tab and a
    line: two rows read as one, without a word. Now refused, naming the row and the way out."""
    path = tmp_path / "pairs.tsv"
    path.write_text('anchor\tpositive\n"unterminated quote\tpassage one\nscreen of 13"\tpassage two\nq3\tp3\n',
                    encoding="utf-8")
    with pytest.raises(DataError, match=r'line 2: field "anchor": holds a tab: most often a cell that begins with a double quote'):
        read_pairs(path)
    path.write_text('anchor\tpositive\n"free form" text\tp1\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 2: malformed TSV: .*a cell that begins with a double quote must be quoted"):
        read_pairs(path)


def test_csv_and_tsv_read_the_same_pairs_with_quoted_multiline_cells(tmp_path):
    rows = [["anchor", "positive", "negatives", "anchor_id", "positive_id"],
            ["what is a fox", "A fox is a small canid.", "", "", ""],
            ["capital of France", "Paris is the capital of France.", '["Lyon is in France."]', "", ""],
            ["largest planet", "Jupiter is the largest planet.", '["Mars is red.", "Venus is hot."]', "q3", "d3"]]
    import csv

    for ext, delimiter in ((".csv", ","), (".tsv", "\t")):
        path = tmp_path / f"pairs{ext}"
        with path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f, delimiter=delimiter).writerows(rows)
        assert read_pairs(path) == EXPECTED, ext
    multiline = tmp_path / "multi.csv"
    multiline.write_text('query,pos\n"two\nlines",b\nc,d\n', encoding="utf-8")
    assert read_pairs(multiline) == [Pair("two\nlines", "b"), Pair("c", "d")]


def test_parquet_reads_list_and_null_columns(tmp_path):
    table = pa.table({"anchor": [p.anchor for p in EXPECTED], "positive": [p.positive for p in EXPECTED],
                      "negatives": [p.negatives for p in EXPECTED],
                      "anchor_id": [None, None, "q3"], "positive_id": [None, None, "d3"]})
    pq.write_table(table, tmp_path / "pairs.parquet", row_group_size=2)
    assert read_pairs(tmp_path / "pairs.parquet") == EXPECTED


def test_hugging_face_dataset():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"query": ["a", "b"], "positive": ["x", "y"], "negative": ["n1", "n2"]})
    assert pairs_from_dataset(ds) == [Pair("a", "x", ["n1"]), Pair("b", "y", ["n2"])]
    with pytest.raises(DataError) as err:
        pairs_from_dataset(datasets.Dataset.from_dict({"query": ["a"], "text": ["x"]}))
    assert str(err.value) == 'dataset: field "positive": no such column (or "pos"); columns are: query, text'
    with pytest.raises(DataError) as err:
        pairs_from_dataset(datasets.Dataset.from_dict({"anchor": ["a", "b"], "positive": ["x", " "]}), name="hf")
    assert str(err.value) == 'hf line 2: field "positive": is empty'


def test_iter_pairs_streams_one_record_at_a_time(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", [{"anchor": "a", "positive": "b"}, "{broken"])
    stream = iter_pairs(path)
    assert next(stream) == Pair("a", "b")  # read before the broken line is reached
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        next(stream)


def test_write_pairs_round_trips_atomically(tmp_path):
    out = write_pairs(EXPECTED, tmp_path / "sub" / "out.jsonl")
    assert read_pairs(out) == EXPECTED
    assert json.loads(out.read_text().splitlines()[0]) == {"anchor": "what is a fox",
                                                            "positive": "A fox is a small canid."}
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]


def test_source_field_is_read_and_written(tmp_path):
    pairs = [Pair("q1", "d1", source="faq"), Pair("q2", "d2")]
    out = write_pairs(pairs, tmp_path / "p.jsonl")
    assert json.loads(out.read_text().splitlines()[0])["source"] == "faq"
    assert "source" not in json.loads(out.read_text().splitlines()[1])
    assert [p.source for p in read_pairs(out)] == ["faq", None]


# ------------------------------------------------------------------------ bad input, exact messages
SURROGATE = ("holds a lone UTF-16 surrogate escape (half of a character such as an emoji, cut in two by "
             "whatever wrote the file): not text")
BAD_JSONL = [
    ('{"anchor": "a", "positive": }', 'line 1: not valid JSON: Expecting value (column 29)'),
    ('["a", "b"]', "line 1: expected a JSON object, got list"),
    ('{"positive": "b"}', 'line 1: field "anchor": is missing (also accepted: "query")'),
    ('{"anchor": "a", "positive": "  "}', 'line 1: field "positive": is empty'),
    ('{"anchor": "a", "positive": 3}', 'line 1: field "positive": expected a string, got number'),
    ('{"anchor": "a", "query": "a", "positive": "b"}', 'line 1: field "anchor": given twice, as "anchor" and "query"'),
    ('{"anchor": "a", "positive": "b", "negatives": "c"}',
     'line 1: field "negatives": expected a list of strings, got string'),
    ('{"anchor": "a", "positive": "b", "negatives": ["c", null]}',
     'line 1: field "negatives[1]": expected a string, got null'),
    ('{"anchor": "a", "positive": "b", "negative": "c", "negatives": ["d"]}',
     'line 1: field "negatives": given twice, as "negatives" and "negative"'),
    ('{"anchor": "a", "positive": "b", "anchor_id": 7}', 'line 1: field "anchor_id": expected a string, got number'),
    ('{"anchor": "a", "positive": "b", "source": ""}', 'line 1: field "source": is empty'),
    ('{"anchor": "a", "positive": "b", "anchor": "c"}', 'line 1: field "anchor": given twice in one object'),
    # half an emoji (a lone surrogate escape): JSON takes it, the tokenizer and every writer refuse it
    ('{"anchor": "cut \\ud83d", "positive": "b"}', f'line 1: field "anchor": {SURROGATE}'),
    ('{"anchor": "a", "positive": "b", "negatives": ["c", "\\udc00 d"]}', f'line 1: field "negatives[1]": {SURROGATE}'),
]


@pytest.mark.parametrize("line,message", BAD_JSONL)
def test_bad_jsonl_record(tmp_path, line, message):
    path = write_jsonl(tmp_path / "pairs.jsonl", [line])
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert str(err.value) == f"{path} {message}"


def test_bad_utf8_names_the_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"anchor": "a", "positive": "b"}\n{"anchor": "caf\xe9", "positive": "b"}\n')
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert str(err.value) == f"{path} line 2: not valid UTF-8 (byte 15)"


BAD_TABLES = [
    ("anchor,text\na,b\n", 'line 1: field "positive": no such column (or "pos"); columns are: anchor, text'),
    ("anchor,positive,negative\na,b,c\nd,e\n", "line 3: 2 cells, the header has 3"),
    ('anchor,positive,negatives\na,b,"[oops"\n',
     'line 2: field "negatives": expected a JSON list of strings in the cell: Expecting value'),
    ('anchor,positive\n"a,b\n', "line 2: malformed CSV: unexpected end of data"),
    ("anchor,positive\na,\n", 'line 2: field "positive": is empty'),
    ("anchor,positive,anchor\na,b,c\n", 'line 1: field "anchor": names two columns'),
    # after a quoted cell that spans lines, the physical line
    ('anchor,positive\n"two\nlines",b\nc\n', "line 4: 1 cells, the header has 2"),
    ('anchor,positive\n"a\nb\nc",d\n\ne,f,g\n', "line 6: 3 cells, the header has 2"),
    ('anchor,positive\n"x\ny",b\nc, \n', 'line 4: field "positive": is empty'),
    ('anchor,positive,negatives\n"x\ny",b,\nc,d,[oops\n',
     'line 4: field "negatives": expected a JSON list of strings in the cell: Expecting value'),
    ('anchor,positive,negative\na,b,"[""n1"", ""n2""]"\n',
     'line 2: field "negative": holds a JSON list, but "negative" is one text: name the column "negatives" for a list'),
    ('anchor,positive,negative,negatives\na,b,c,"[""d""]"\n', 'line 2: field "negatives": given twice, as "negatives" and "negative"'),
    ('anchor,positive,negatives,negative_1\na,b,"[""c""]",d\n', 'line 2: field "negatives": given twice, as "negatives" and "negative_1"'),
]


@pytest.mark.parametrize("text,message", BAD_TABLES)
def test_bad_csv(tmp_path, text, message):
    path = tmp_path / "pairs.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert str(err.value) == f"{path} {message}"


def test_bad_parquet_value_and_non_parquet_bytes(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": ["a", "b"], "positive": ["x", None]}), path)
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert str(err.value) == f'{path} row 2: field "positive": is missing (also accepted: "pos")'
    pq.write_table(pa.table({"anchor": ["a"], "positive": [1]}), path)
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert str(err.value) == f'{path} row 1: field "positive": expected a string, got number'
    path.write_text("anchor,positive\n")
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert str(err.value).startswith(f"{path}: not a Parquet file (")


@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", "\n\n", "the file is empty: no pairs to read"),
    ("header_only.tsv", "query\tpositive\n", "the file is empty: no pairs to read"),
    ("pairs.txt", "a b\n", "unknown pair file type '.txt'; expected one of .jsonl, .ndjson, .csv, .tsv, .parquet"),
    ("missing.jsonl", None, "file not found"),
    ("nowhere", None, "file not found"),  # not "unknown pair file type '(no extension)'"
    ("folder", "dir", "is a folder, not a pair file (a BEIR folder needs corpus.jsonl, queries.jsonl and qrels/)"),
])
def test_empty_unknown_and_missing_files(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as err:
        read_pairs(path)
    assert str(err.value) == f"{path}: {message}"

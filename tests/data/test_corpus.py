"""A corpus JSONL read one way (strings or objects, optional title and id), every error with file, line and field."""

import pytest

from contrastkit.data.corpus import Document, read_corpus, read_documents
from contrastkit.errors import DataError

from _support import write_jsonl


def test_read_documents_accepts_strings_objects_and_skips_empty_ones(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", ["a plain  string", {"text": "body one", "title": "T1", "_id": "x"},
                                              {"text": "  ", "title": ""}, {"text": "no title", "id": 7}])
    docs = read_documents(path)
    assert docs == [Document("1", "", "a plain string"), Document("x", "T1", "body one"),
                    Document("7", "", "no title")]


def test_read_documents_takes_a_beir_folder(tmp_path):
    (tmp_path / "beir").mkdir()
    write_jsonl(tmp_path / "beir" / "corpus.jsonl", [{"_id": "d0", "title": "t", "text": "x y"}])
    assert read_documents(tmp_path / "beir") == [Document("d0", "t", "x y")]
    with pytest.raises(DataError, match="corpus.jsonl"):
        read_documents(tmp_path)  # a folder without corpus.jsonl


def test_read_corpus_leaves_out_empty_documents_and_joins_title_and_text(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", ["a plain string", {"text": "body", "title": "T1", "_id": "x"},
                                              {"text": "", "title": ""}, {"text": " no title ", "id": 7},
                                              {"text": "last", "title": "  "}, {"text": "t", "title": " T2 "}])
    ids, titles, texts = read_corpus(path)
    assert ids == ["0", "x", "7", "4", "5"]  # a line without an id gets its position, empty ones counted
    assert titles == ["", "T1", "", "", "T2"]  # a title of spaces is none (search then prints the snippet)
    assert texts == ["a plain string", "T1 body", "no title", "last", "T2  t"]


@pytest.mark.parametrize("reader, lines, message", [
    (read_documents, ['{"text": "ok"}', '{"text": 3}'], 'line 2: field "text": expected a string, got number'),
    (read_documents, ['{"text": "ok"}', '{"title": "t"}'], 'line 2: field "text": is missing'),
    (read_documents, ['{"text": "ok", "title": ["t"]}'], 'line 1: field "title": expected a string, got list'),
    (read_documents, ['{"text": "ok"}', '{"text": "b"'], "line 2: not valid JSON"),
    (read_documents, ['[1, 2]'], "line 1: expected a JSON object, got list"),
    (read_documents, ['{"text": ""}'], "no non-empty document"),
    (read_documents, [""], "the file is empty"),
    (read_corpus, ['{"text": "ok", "title": 3}'], 'line 1: field "title": expected a string, got number'),
    (read_corpus, ['{"text": "ok", "_id": "a", "id": "b"}'], 'line 1: field "_id": given twice'),
    (read_corpus, [""], "the file is empty"),
    (read_corpus, ['{"text": " ", "_id": "a"}'], "no non-empty document to search"),
    (read_corpus, ['{"text": "a", "_id": "d1"}', '{"text": "b", "_id": "d1"}'],
     'line 2: field "_id": duplicate id "d1" (first on line 1'),
    (read_corpus, ['{"text": "a", "_id": "1"}', '{"text": "b"}'],
     'line 2: field "_id": duplicate id "1" (first on line 1; a line without an id takes its position'),
])
def test_errors_name_file_line_field(tmp_path, reader, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as exc:
        reader(path)
    assert str(exc.value).startswith(str(path)) and message in str(exc.value)

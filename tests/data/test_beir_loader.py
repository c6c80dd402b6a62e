"""BEIR folders: a tiny good one, one bad file at a time (exact messages), and the two real ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contrastkit.data import BeirDataset, Pair, load_beir, pairs_from_beir
from contrastkit.errors import DataError

CORPUS = [{"_id": "d1", "title": "Foxes", "text": "A fox is a small canid."},
          {"_id": "d2", "title": "", "text": "Paris is the capital of France."},
          {"_id": "d3", "text": "Jupiter is the largest planet."},
          {"_id": "d4", "title": "", "text": ""}]
QUERIES = [{"_id": "q1", "text": "what is a fox"}, {"_id": "q2", "text": "capital of France"},
           {"_id": "q3", "text": "largest planet", "metadata": {}}]
QRELS = {"train": "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq1\td4\t1\nq2\td2\t1\n",
         "test": "query-id\tcorpus-id\tscore\nq3\td3\t1\n"}


def make_folder(root: Path, corpus=None, queries=None, qrels=None) -> Path:
    """A BEIR folder; each file's content is given as records or raw lines (str)."""
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    for name, records in (("corpus.jsonl", corpus or CORPUS), ("queries.jsonl", queries or QUERIES)):
        (root / name).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    for split, text in (qrels or QRELS).items():
        (root / "qrels" / f"{split}.tsv").write_text(text)
    return root


def test_loads_all_queries_and_the_splits_qrels(tmp_path):
    data = load_beir(make_folder(tmp_path), split="train")
    assert isinstance(data, BeirDataset) and data.split == "train"
    assert data.corpus["d1"] == {"title": "Foxes", "text": "A fox is a small canid."}
    assert data.corpus["d3"] == {"title": "", "text": "Jupiter is the largest planet."}
    assert list(data.queries) == ["q1", "q2", "q3"]
    assert data.qrels == {"q1": {"d1": 2, "d2": 0, "d4": 1}, "q2": {"d2": 1}}
    assert data.split_queries == {"q1": "what is a fox", "q2": "capital of France"}
    assert data.doc_text("d1") == "Foxes A fox is a small canid."
    assert data.doc_text("d2") == "Paris is the capital of France."
    # grade 0 and the empty document d4 give no pair
    assert pairs_from_beir(data) == [
        Pair("what is a fox", "Foxes A fox is a small canid.", anchor_id="q1", positive_id="d1"),
        Pair("capital of France", "Paris is the capital of France.", anchor_id="q2", positive_id="d2")]
    assert load_beir(tmp_path).qrels == {"q3": {"d3": 1}}  # split defaults to test


def test_qrels_header_is_optional(tmp_path):
    data = load_beir(make_folder(tmp_path, qrels={"test": "q3\td3\t1\n"}))
    assert data.qrels == {"q3": {"d3": 1}}


BAD = [
    ("corpus.jsonl", dict(corpus=[CORPUS[0], '{"_id": "d2" "text": "x"}']),
     'line 2: not valid JSON: Expecting \',\' delimiter (column 14)'),
    ("corpus.jsonl", dict(corpus=[CORPUS[0], {"title": "t", "text": "x"}]), 'line 2: field "_id": is missing'),
    ("corpus.jsonl", dict(corpus=[*CORPUS, {"_id": "d1", "text": "again"}]),
     'line 5: field "_id": duplicate id "d1" (first on line 1)'),
    ("corpus.jsonl", dict(corpus=[{"_id": 1, "text": "x"}]), 'line 1: field "_id": expected a string, got number'),
    ("corpus.jsonl", dict(corpus=[{"_id": "d1", "title": "t"}]), 'line 1: field "text": is missing'),
    ("corpus.jsonl", dict(corpus=[{"_id": "d1", "title": ["t"], "text": "x"}]),
     'line 1: field "title": expected a string, got list'),
    ("queries.jsonl", dict(queries=[QUERIES[0], {"_id": "q2", "text": ""}]), 'line 2: field "text": is empty'),
    ("queries.jsonl", dict(queries=[QUERIES[0], "7"]), "line 2: expected a JSON object, got number"),
    ("qrels/test.tsv", dict(qrels={"test": "query-id\tcorpus-id\tscore\nq9\td3\t1\n"}),
     'line 2: field "query-id": unknown id "q9" (not in queries.jsonl)'),
    ("qrels/test.tsv", dict(qrels={"test": "q3\td3\t1\nq3\td9\t1\n"}),
     'line 2: field "corpus-id": unknown id "d9" (not in corpus.jsonl)'),
    ("qrels/test.tsv", dict(qrels={"test": "q3\td3\thigh\n"}), "line 1: field \"score\": expected an integer, got 'high'"),
    ("qrels/test.tsv", dict(qrels={"test": "q3 d3 1\n"}),
     "line 1: expected 3 tab-separated columns (query-id, corpus-id, score), got 1"),
    ("qrels/test.tsv", dict(qrels={"test": "q3\td3\t1\nq1\td1\t1\nq3\td3\t2\n"}),
     'line 3: field "corpus-id": "d3" judged twice for query "q3" (first on line 1)'),
    ("qrels/test.tsv", dict(qrels={"test": "query-id\tcorpus-id\tscore\n"}), ": the file is empty: no judgements to read"),
]


@pytest.mark.parametrize("name,files,message", BAD, ids=[m.split(":")[-1].strip()[:40] for _, _, m in BAD])
def test_bad_folder(tmp_path, name, files, message):
    folder = make_folder(tmp_path, **files)
    with pytest.raises(DataError) as err:
        load_beir(folder)
    sep = "" if message.startswith(":") else " "
    assert str(err.value) == f"{folder / name}{sep}{message}"


def test_missing_split_and_folder(tmp_path):
    folder = make_folder(tmp_path)
    with pytest.raises(DataError) as err:
        load_beir(folder, split="dev")
    assert str(err.value) == f"{folder / 'qrels' / 'dev.tsv'}: no such split file (splits here: test, train)"
    with pytest.raises(DataError) as err:
        load_beir(tmp_path / "nowhere")
    assert str(err.value) == f"{tmp_path / 'nowhere'}: folder not found"
    (folder / "qrels" / "dev.tsv").mkdir()
    with pytest.raises(DataError) as err:
        load_beir(folder, split="dev")
    assert str(err.value) == f"{folder / 'qrels' / 'dev.tsv'}: is not a file"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        load_beir(tmp_path / "empty")
    assert str(err.value) == (f"{tmp_path / 'empty'}: a BEIR folder holds corpus.jsonl, queries.jsonl and "
                              "qrels/<split>.tsv; corpus.jsonl is missing")
    (folder / "queries.jsonl").unlink()
    with pytest.raises(DataError, match="queries.jsonl is missing"):
        load_beir(folder)


@pytest.mark.parametrize("name,split,corpus,queries,qrels,judged,pairs", [
    ("cranfield", "train", 1400, 225, 1078, 150, 1077),  # one relevant document (995) is empty
    ("cranfield", "test", 1400, 225, 534, 75, 534),
    ("debian-packages", "train", 15000, 15000, 14000, 14000, 14000),
    ("debian-packages", "test", 15000, 15000, 1000, 1000, 1000),
])
def test_real_folders_match_their_readme_counts(shared_data, name, split, corpus, queries, qrels, judged, pairs):
    data = load_beir(shared_data / name, split=split)
    assert (len(data.corpus), len(data.queries)) == (corpus, queries)
    assert sum(len(docs) for docs in data.qrels.values()) == qrels
    assert len(data.split_queries) == judged
    assert len(pairs_from_beir(data)) == pairs

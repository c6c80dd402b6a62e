"""BEIR folders: corpus.jsonl, queries.jsonl and qrels/<split>.tsv, read and cross-checked strictly.

    data = load_beir("../shared/data/cranfield", split="train")
    pairs = pairs_from_beir(data)          # one Pair per relevant (query, document)

Checks: malformed JSON, missing / empty / wrongly typed fields, duplicate ids, qrels rows that are
not three tab-separated columns with an integer score, qrels naming an unknown query or document,
and the same (query, document) judged twice. Each error names the file, line and field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from contrastkit.data.pairs import Pair
from contrastkit.data.validate import check_object, check_text, pick_field
from contrastkit.errors import DataError
from contrastkit.jsonl import iter_jsonl, iter_text_lines

QRELS_HEADER = ["query-id", "corpus-id", "score"]


def doc_text(doc: dict) -> str:
    """The text to encode for a BEIR document {"title", "text"}: title + " " + text, stripped."""
    return f"{doc.get('title') or ''} {doc['text']}".strip()


@dataclass
class BeirDataset:
    """A BEIR folder in memory: every document and query, and the judgements of one split."""

    corpus: dict[str, dict]              # doc id → {"title": str, "text": str}
    queries: dict[str, str]              # query id → text (all queries, whatever the split)
    qrels: dict[str, dict[str, int]]     # query id → {doc id: grade}, this split only
    split: str = "test"

    def doc_text(self, doc_id: str) -> str:
        """The text to encode for a document: title + " " + text, stripped."""
        return doc_text(self.corpus[doc_id])

    @property
    def split_queries(self) -> dict[str, str]:
        """The queries judged in this split, in qrels order."""
        return {qid: self.queries[qid] for qid in self.qrels}


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """Read and check a BEIR folder; `split` names the qrels file (qrels/<split>.tsv)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder" if folder.exists() else "folder not found", path=str(folder))
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / name).is_file():
            raise DataError(f"a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv; {name} "
                            + ("is not a file" if (folder / name).exists() else "is missing"), path=str(folder))
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        if qrels_path.exists():
            raise DataError("is not a file", path=str(qrels_path))
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv") if p.is_file())
        raise DataError(f"no such split file (splits here: {', '.join(splits) or 'none'})", path=str(qrels_path))
    corpus = load_corpus(folder / "corpus.jsonl")
    queries = load_queries(folder / "queries.jsonl")
    qrels = load_qrels(qrels_path, queries=queries, corpus=corpus)
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels, split=split)


def _check_new_id(record: dict, seen: dict[str, int], path: str, line: int) -> str:
    _, value = pick_field(record, ("_id",), path=path, line=line)
    doc_id = check_text(value, field="_id", path=path, line=line)
    if doc_id in seen:
        raise DataError(f'duplicate id "{doc_id}" (first on line {seen[doc_id]})', path=path, line=line,
                        field="_id")
    seen[doc_id] = line
    return doc_id


def load_corpus(path: str | Path) -> dict[str, dict]:
    """A BEIR corpus.jsonl → {doc id: {"title", "text"}}; "title" may be absent.

    Empty documents are kept, as BEIR keeps them (Cranfield has two); `pairs_from_beir` and mining
    leave them out.
    """
    path = Path(path)
    where, seen, corpus = str(path), {}, {}
    for line, value in iter_jsonl(path):
        record = check_object(value, path=where, line=line)
        doc_id = _check_new_id(record, seen, where, line)
        where_line = dict(path=where, line=line, allow_empty=True)
        title = record.get("title")
        title = "" if title is None else check_text(title, field="title", **where_line)
        _, text = pick_field(record, ("text",), path=where, line=line)
        text = check_text(text, field="text", **where_line)
        corpus[doc_id] = {"title": title, "text": text}
    if not corpus:
        raise DataError("the file is empty: no documents to read", path=where)
    return corpus


def load_queries(path: str | Path) -> dict[str, str]:
    """A BEIR queries.jsonl → {query id: text}."""
    path = Path(path)
    where, seen, queries = str(path), {}, {}
    for line, value in iter_jsonl(path):
        record = check_object(value, path=where, line=line)
        query_id = _check_new_id(record, seen, where, line)
        _, text = pick_field(record, ("text",), path=where, line=line)
        queries[query_id] = check_text(text, field="text", path=where, line=line)
    if not queries:
        raise DataError("the file is empty: no queries to read", path=where)
    return queries


def load_qrels(path: str | Path, *, queries: dict[str, str] | None = None,
               corpus: dict[str, dict] | None = None) -> dict[str, dict[str, int]]:
    """A BEIR qrels TSV (query-id, corpus-id, integer score; header optional) → {query: {doc: grade}}.

    Given `queries` / `corpus`, every id must be one of theirs.
    """
    where = str(path)
    qrels: dict[str, dict[str, int]] = {}
    first_seen: dict[tuple[str, str], int] = {}
    for line, text in iter_text_lines(path):
        if not text.strip():
            continue
        cells = text.split("\t")
        if line == 1 and cells == QRELS_HEADER:
            continue
        if len(cells) != 3:
            raise DataError(f"expected 3 tab-separated columns ({', '.join(QRELS_HEADER)}), got {len(cells)}",
                            path=where, line=line)
        query_id, doc_id, score = cells
        for name, value, known, source in (("query-id", query_id, queries, "queries.jsonl"),
                                           ("corpus-id", doc_id, corpus, "corpus.jsonl")):
            if not value.strip():
                raise DataError("is empty", path=where, line=line, field=name)
            if known is not None and value not in known:
                raise DataError(f'unknown id "{value}" (not in {source})', path=where, line=line, field=name)
        try:
            grade = int(score)
        except ValueError:
            raise DataError(f"expected an integer, got {score!r}", path=where, line=line, field="score") from None
        if (query_id, doc_id) in first_seen:
            raise DataError(f'"{doc_id}" judged twice for query "{query_id}" (first on line '
                            f'{first_seen[query_id, doc_id]})', path=where, line=line, field="corpus-id")
        first_seen[query_id, doc_id] = line
        qrels.setdefault(query_id, {})[doc_id] = grade
    if not qrels:
        raise DataError("the file is empty: no judgements to read", path=where)
    return qrels


def pairs_from_beir(dataset: BeirDataset) -> list[Pair]:
    """One Pair per relevant (grade > 0) judgement of the split: anchor = query, positive = document.

    A judgement of an empty document gives no pair (there is nothing to train on).
    """
    return [Pair(anchor=dataset.queries[qid], positive=dataset.doc_text(doc_id), anchor_id=qid,
                 positive_id=doc_id)
            for qid, docs in dataset.qrels.items() for doc_id, grade in docs.items()
            if grade > 0 and dataset.doc_text(doc_id)]

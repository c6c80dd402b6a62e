"""A corpus JSONL, read one way for `contrastkit search` and for self-supervised pairs.

Each line is a JSON string (the text) or an object with "text" and optional "title" and "_id"
(or "id"), as in a BEIR corpus.jsonl. Every problem is a DataError naming the file, line and
field. (`data.beir.load_corpus` reads BEIR's stricter form, where every line carries a unique "_id".)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from contrastkit.data.validate import check_object, check_text, pick_field
from contrastkit.errors import DataError
from contrastkit.jsonl import iter_jsonl


@dataclass(frozen=True)
class Document:
    """One document of a raw corpus: its id, its title ("" when none) and its body text."""

    id: str
    title: str
    text: str


def iter_corpus_lines(path: str | Path) -> Iterator[tuple[int, str | None, str, str]]:
    """(line number, id or None when the line gives none, title, text) for each non-blank line, checked."""
    where = str(path)
    for line, value in iter_jsonl(path):
        if isinstance(value, str):
            yield line, None, "", value
            continue
        record = check_object(value, path=where, line=line)
        _, raw = pick_field(record, ("text",), path=where, line=line)
        text = check_text(raw, field="text", allow_empty=True, path=where, line=line)
        raw_title = record.get("title")
        title = "" if raw_title is None else check_text(raw_title, field="title", allow_empty=True, path=where,
                                                        line=line)
        name, raw_id = pick_field(record, ("_id", "id"), required=False, path=where, line=line)
        yield line, None if name is None else str(raw_id), title, text


def read_corpus(path: str | Path) -> tuple[list[str], list[str], list[str]]:
    """A corpus JSONL → (ids, titles, texts to encode: title + " " + text, as BEIR corpora are encoded).

    A line without an id gets its position ("0", "1", ...); an id used twice (given, or given and a
    position) is a DataError naming both lines. Empty documents are left out: there is nothing in
    them to find, and an empty text embeds close to short queries (Cranfield has two).
    """
    ids, titles, texts, first_line, position = [], [], [], {}, 0
    for line, doc_id, title, text in iter_corpus_lines(path):
        doc_id = doc_id if doc_id is not None else str(position)
        position += 1
        if doc_id in first_line:
            raise DataError(f'duplicate id "{doc_id}" (first on line {first_line[doc_id]}; a line without an id '
                            "takes its position as id)", path=str(path), line=line, field="_id")
        first_line[doc_id] = line
        if text.strip() or title.strip():
            ids.append(doc_id)
            titles.append(title.strip())  # a title of spaces is none: search prints the snippet instead
            texts.append(f"{title} {text}".strip() if title.strip() else text.strip())
    if not texts:
        raise DataError("no non-empty document to search" if first_line else "the file is empty: no documents to read",
                        path=str(path))
    return ids, titles, texts


def read_documents(source: str | Path) -> list[Document]:
    """Documents from a corpus JSONL, or a BEIR folder's corpus.jsonl, with whitespace collapsed.

    Empty documents are left out (nothing to learn from); a line without an id gets its line number.
    """
    path = Path(source)
    if path.is_dir():
        path = path / "corpus.jsonl"
        if not path.is_file():
            raise DataError("a BEIR folder must hold corpus.jsonl; none found", path=str(path))
    documents, lines = [], 0
    for line, doc_id, title, text in iter_corpus_lines(path):
        lines += 1
        if text.strip() or title.strip():
            documents.append(Document(str(line) if doc_id is None else doc_id, " ".join(title.split()),
                                      " ".join(text.split())))
    if not documents:
        raise DataError("no non-empty document to learn from" if lines else "the file is empty", path=str(path))
    return documents


__all__ = ["Document", "iter_corpus_lines", "read_corpus", "read_documents"]

"""Read JSON Lines strictly: every problem is reported with the file and line number."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from contrastkit.errors import DataError


def require_file(path: str | Path) -> Path:
    """`path` as a Path, or a DataError if it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a file", path=str(path))
    return path


def iter_text_lines(path: str | Path, *, keep_ends: bool = False) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for each line, without its line ending unless `keep_ends`.

    Streams and checks UTF-8; a byte-order mark on the first line is dropped.
    """
    path = require_file(path)
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"not valid UTF-8 (byte {exc.start})", path=str(path), line=line_no) from exc
            if line_no == 1:
                text = text.removeprefix("\ufeff")
            yield line_no, text if keep_ends else text.rstrip("\r\n")


class _RepeatedKey(Exception):
    """A JSON object names a key twice (json.loads would silently keep the last value)."""


def _object_of(items: list[tuple[str, object]]) -> dict:
    record = dict(items)
    if len(record) < len(items):
        seen: set[str] = set()
        raise _RepeatedKey(next(key for key, _ in items if key in seen or seen.add(key)))
    return record


def _lone_surrogate(value: object, where: str = "") -> str | None:
    """Where (a field path such as "negatives[1]", or "" for the value itself) a string of `value`
    holds a lone UTF-16 surrogate; None when none does."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    items = (value.items() if isinstance(value, dict)
             else ((f"[{i}]", v) for i, v in enumerate(value)) if isinstance(value, list) else ())
    for key, item in items:
        found = _lone_surrogate(key, where) if isinstance(value, dict) else None
        if found is None:
            found = _lone_surrogate(item, f"{where}.{key}".lstrip(".") if isinstance(value, dict) else f"{where}{key}")
        if found is not None:
            return found
    return None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield (line number, parsed value) for each non-blank line; streams, never loads the whole file.

    Raises DataError naming the file and line for a missing file, bad UTF-8, malformed JSON, an
    object naming a key twice, or a string holding a lone surrogate escape ("\\ud83d", half of an
    emoji cut by whatever wrote the file: JSON accepts it, but it is no text, and the tokenizer and
    every file it would be written to refuse it).
    """
    for line_no, line in iter_text_lines(path):
        if not line.strip():
            continue
        try:
            value = json.loads(line, object_pairs_hook=_object_of)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON: {exc.msg} (column {exc.colno})", path=str(path), line=line_no) from exc
        except _RepeatedKey as exc:
            raise DataError("given twice in one object", path=str(path), line=line_no, field=str(exc)) from None
        if "\\u" in line and (field := _lone_surrogate(value)) is not None:
            raise DataError("holds a lone UTF-16 surrogate escape (half of a character such as an emoji, cut "
                            "in two by whatever wrote the file): not text", path=str(path), line=line_no,
                            field=field or None)
        yield line_no, value


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """Texts from a JSONL file: each line a JSON string or an object with `field` (plus optional title).

    For objects with a "title", the text is title + " " + field, as BEIR corpora are encoded.
    """
    texts = []
    for line_no, value in iter_jsonl(path):
        texts.append(_text_of(value, field, path, line_no))
    if not texts:
        raise DataError("the file is empty: no texts to read", path=str(path))
    return texts


def _text_of(value: object, field: str, path: str | Path, line_no: int, allow_empty: bool = False) -> str:
    from contrastkit.data.validate import type_name  # here: contrastkit.data imports this module
    if isinstance(value, str):
        text = value
    elif isinstance(value, dict):
        if field not in value:
            raise DataError("is missing", path=str(path), line=line_no, field=field)
        text = value[field]
        if not isinstance(text, str):
            raise DataError(f"expected a string, got {type_name(text)}", path=str(path), line=line_no,
                            field=field)
        title = value.get("title")
        if isinstance(title, str) and title.strip():
            text = f"{title} {text}"
    else:
        raise DataError(f"expected a JSON object or string, got {type_name(value)}", path=str(path),
                        line=line_no)
    if not text.strip() and not allow_empty:
        raise DataError("is empty", path=str(path), line=line_no, field=field)
    return text.strip()

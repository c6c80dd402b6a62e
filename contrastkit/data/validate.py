"""Field checks shared by every reader: each failure is a DataError naming file, line and field.

Readers hand a record (a mapping) and where it came from; these functions return the checked
value or raise. Type names in messages are JSON's (string, number, list, object, null), since
most data arrives as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping

from contrastkit.errors import DataError

_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", type(None): "null",
               list: "list", tuple: "list", dict: "object"}


def type_name(value: object) -> str:
    """The JSON name of a value's type ("string", "number", ...), else the Python one."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def check_object(value: object, *, path: str | None, line: int | None) -> Mapping:
    """`value` as a mapping (a JSON object, a table row)."""
    if not isinstance(value, Mapping):
        raise DataError(f"expected a JSON object, got {type_name(value)}", path=path, line=line)
    return value


def check_text(value: object, *, field: str, path: str | None, line: int | None,
               allow_empty: bool = False) -> str:
    """`value` as a non-blank string (kept as given, not stripped); blank too if `allow_empty`."""
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type_name(value)}", path=path, line=line, field=field)
    if not allow_empty and not value.strip():
        raise DataError("is empty", path=path, line=line, field=field)
    return value


def check_text_list(value: object, *, field: str, path: str | None, line: int | None) -> list[str]:
    """`value` as a list of non-blank strings; an element's error names it as field[i]."""
    if not isinstance(value, (list, tuple)):
        raise DataError(f"expected a list of strings, got {type_name(value)}", path=path, line=line,
                        field=field)
    return [check_text(v, field=f"{field}[{i}]", path=path, line=line) for i, v in enumerate(value)]


def pick_field(record: Mapping, names: tuple[str, ...], *, path: str | None, line: int | None,
               required: bool = True) -> tuple[str | None, object]:
    """The (name, value) of whichever alias in `names` the record holds; (None, None) if none.

    A missing required field and a field given under two aliases are both errors; the error names
    the first alias, the one the docs use.
    """
    present = [n for n in names if record.get(n) is not None]
    if len(present) > 1:
        raise DataError(f"given twice, as {_quoted(present, ' and ')}", path=path, line=line,
                        field=names[0])
    if not present:
        if required:
            also = f" (also accepted: {_quoted(names[1:], ', ')})" if len(names) > 1 else ""
            raise DataError(f"is missing{also}", path=path, line=line, field=names[0])
        return None, None
    return present[0], record[present[0]]


def _quoted(names, sep: str) -> str:
    return sep.join(f'"{n}"' for n in names)

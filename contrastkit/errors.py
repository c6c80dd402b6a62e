"""Errors meant for people: each says what is wrong and where (file, line, field)."""

from __future__ import annotations


class ContrastkitError(Exception):
    """Base class of every error contrastkit raises on purpose."""


class DataError(ContrastkitError, ValueError):
    """Input data is malformed: the message names the file, line (a Parquet file's row) and field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:  # a Parquet file has rows, not lines
            where.append(f"{'row' if str(path).lower().endswith('.parquet') else 'line'} {line}")
        prefix = " ".join(where)
        if field is not None:
            message = f'field "{field}": {message}'
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path, self.line, self.field = path, line, field


class ModelLoadError(ContrastkitError, ValueError):
    """A model path or folder cannot be loaded as an encoder."""


class ConfigError(ContrastkitError, ValueError):
    """A training or evaluation configuration is invalid."""


def parse_error_text(exc: Exception) -> str:
    """A YAML or TOML parse error in one line: "line 3, column 7: <problem>" where the parser marks it
    (PyYAML's own message spans lines and names "<unicode string>" instead of the file)."""
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        problem = getattr(exc, "problem", None) or "cannot parse"
        context = getattr(exc, "context", None)
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" + (f" ({context})" if context else "")
    return "cannot parse: " + " ".join(str(exc).split())

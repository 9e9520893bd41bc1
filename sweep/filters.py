"""MLflow search filter strings, built in one place with every key and value quoted the way MLflow parses them.

MLflow's filter parser (``mlflow.utils.search_utils.SearchUtils``) tokenizes a filter with sqlparse and then
strips a value's outer quotes without unescaping anything: ``'it''s'`` is the literal ``it''s``, not ``it's``.
So a value is written between single quotes when it has none, else between double quotes; a value with both
kinds of quote (or a quote-like backslash sequence at its end) cannot be written at all and is refused here,
instead of becoming a filter that silently matches something else. Keys are always backquoted, because a key
with a dot (``sweep.role``, ``mlflow.parentRunId``) is otherwise read as ``tags.sweep`` followed by junk.
"""

from __future__ import annotations


class FilterError(ValueError):
    """A key or value that no MLflow filter string can express; one-line message."""


def quote_key(key: str) -> str:
    """``key`` between backquotes (MLflow's identifier quoting)."""
    if not key or "`" in key:
        raise FilterError(f"MLflow filter key {key!r} is empty or contains a backquote")
    return f"`{key}`"


def quote_value(value: str) -> str:
    """``value`` as an MLflow string literal: ``'value'``, or ``"value"`` when it contains a single quote."""
    if value.endswith("\\"):
        # sqlparse reads a backslash before the closing quote as an escaped quote: the literal never ends.
        raise FilterError(f"MLflow filter value {value!r} ends with a backslash")
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise FilterError(f"MLflow filter value {value!r} contains both kinds of quote")


def tag_equals(key: str, value: str) -> str:
    """``tags.`key` = 'value'``: runs whose tag ``key`` is exactly ``value``."""
    return f"tags.{quote_key(key)} = {quote_value(value)}"


def and_(*clauses: str) -> str:
    """The clauses joined with AND (empty clauses dropped); ``""`` matches every run."""
    return " AND ".join(c for c in clauses if c)


__all__ = ["FilterError", "and_", "quote_key", "quote_value", "tag_equals"]

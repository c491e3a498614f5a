"""HTML tables for the model objects' ``_repr_html_`` (Jupyter shows an
object's ``_repr_html_`` instead of its repr)."""
from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

_STYLE = "border-collapse:collapse;font-family:monospace;font-size:12px"
_CELL = "border:1px solid #ccc;padding:2px 6px;text-align:left"


def _cell(value: Any, tag: str = "td") -> str:
    return f'<{tag} style="{_CELL}">{html.escape(str(value))}</{tag}>'


def fields_table(title: str, fields: Iterable[tuple[str, Any]]) -> str:
    """A two-column table: a name and a value per row, under a title."""
    rows = "".join(f"<tr>{_cell(k, 'th')}{_cell(v)}</tr>" for k, v in fields)
    return (f'<table style="{_STYLE}"><caption style="text-align:left;font-weight:bold">'
            f"{html.escape(title)}</caption>{rows}</table>")


def grid_table(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A table with a header row and a row per item."""
    head = "".join(_cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return (f'<table style="{_STYLE}"><caption style="text-align:left;font-weight:bold">'
            f"{html.escape(title)}</caption><tr>{head}</tr>{body}</table>")

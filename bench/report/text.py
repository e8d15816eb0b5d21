"""Markdown for the reports: numbers as percent, text made inert, tables, atomic writes.

Defense labels, package names and error texts come from plugins; in markdown they could close a
table cell (``|``), open a code span, carry HTML (``<img onerror=...>``), start a link or break a
row with a newline. :func:`md_escape` makes any such string plain text that renders as itself.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

# Backslash first, so the escapes added after it are not themselves escaped.
_MD_SPECIAL = {
    "\\": "\\\\",
    "|": "\\|",
    "`": "&#96;",
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
}
_MD_RE = re.compile("|".join(re.escape(c) for c in _MD_SPECIAL))
#: ``](`` and ``][`` turn bracketed text into a link; breaking them leaves ``[plugin: x]`` readable.
_LINK_RE = re.compile(r"\](?=[(\[])")
_PLAIN_RE = re.compile(r"[\w.+:/-]+")


def pct(x: float | None) -> str:
    """A fraction in percent with one decimal; an en dash for a missing value."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def md_escape(value: object) -> str:
    """``value`` as inert markdown text on one line: it renders as itself inside a table cell or
    a paragraph, and nothing in it is markup (HTML, code span, link, cell border); emphasis
    characters are left alone (harmless, and ``my_defense`` stays readable in the raw file)."""
    text = " ".join(str(value).split())  # newlines (and tabs) would end the row or the cell
    text = _MD_RE.sub(lambda m: _MD_SPECIAL[m.group(0)], text)
    return _LINK_RE.sub("]\\\\", text)


def md_code(value: object) -> str:
    """``value`` as a code span when it is a plain name (letters, digits, ``._+-:/``), else as
    escaped text: escapes do not work inside a code span, so nothing else may go in one."""
    text = str(value)
    return f"`{text}`" if _PLAIN_RE.fullmatch(text) else md_escape(text)


def md_table(header: list[str], rows: list[list[str]], escape: bool = True) -> list[str]:
    """A markdown table; every cell escaped unless ``escape`` is False (cells already built from
    escaped parts, such as a label followed by a footnote marker)."""
    fix = md_escape if escape else str
    cells = [[fix(v) for v in r] for r in [header, *rows]]
    return [
        "| " + " | ".join(cells[0]) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in cells[1:]),
    ]


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename: a reader never sees half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)

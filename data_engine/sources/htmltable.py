"""HTML tables as labels: one writer and one parser (standard library), used by charts and tables.

Labels are the minimal HTML the paper's table outputs use: ``<table>``, ``<tr>``, ``<td>``
(``<th>`` is read as a cell too), cells escaped, ``colspan``/``rowspan`` written only when > 1.
``parse_html_table`` reads any such table back into rows of cell texts (spans are expanded by
repeating the cell, so a parsed grid is rectangular when the table is).
"""

from __future__ import annotations

import html
from html.parser import HTMLParser


def cell(text: str, colspan: int = 1, rowspan: int = 1) -> str:
    attrs = (f' colspan="{colspan}"' if colspan > 1 else "") + (f' rowspan="{rowspan}"' if rowspan > 1 else "")
    return f"<td{attrs}>{html.escape(str(text), quote=False)}</td>"


def html_table(rows: list[list]) -> str:
    """Rows of plain cells (str/number, or (text, colspan, rowspan) tuples) -> ``<table>...</table>``."""
    out = ["<table>"]
    for row in rows:
        out.append("<tr>" + "".join(cell(*c) if isinstance(c, tuple) else cell(c) for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


class _TableParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows: list[list[tuple[str, int, int]]] = []
        self._cell: list[str] | None = None
        self._span = (1, 1)

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            a = dict(attrs)
            self._cell, self._span = [], (int(a.get("colspan") or 1), int(a.get("rowspan") or 1))
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            if not self.rows:
                self.rows.append([])
            self.rows[-1].append(("".join(self._cell).strip(), *self._span))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_html_table(text: str) -> list[list[str]]:
    """The first table's cells as rows of strings, spans expanded (never raises on odd HTML)."""
    p = _TableParser()
    p.feed(text)
    p.close()
    grid: dict[tuple[int, int], str] = {}
    for r, row in enumerate(p.rows):
        c = 0
        for txt, cs, rs in row:
            while (r, c) in grid:
                c += 1
            for dr in range(rs):
                for dc in range(cs):
                    grid[(r + dr, c + dc)] = txt
            c += cs
    if not grid:
        return []
    n_rows = max(r for r, _ in grid) + 1
    return [[grid[(r, c)] for c in range(max(cc for rr, cc in grid if rr == r) + 1) if (r, c) in grid]
            for r in range(n_rows)]

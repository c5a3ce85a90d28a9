"""Reading a written report.html: its images, tables, external references and visible text."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path


class ReportParser(HTMLParser):
    """Collects img sources, tables (as lists of cell texts), external references and all visible text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.external: list[str] = []
        self.text: list[str] = []
        self.warning_boxes = 0
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag in ("link", "script") or (tag != "img" and a.get("src")):
            self.external.append(tag)
        if tag == "div" and a.get("class") == "warning":
            self.warning_boxes += 1
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> ReportParser:
    p = ReportParser()
    p.feed(path.read_text(encoding="utf-8"))
    p.full_text = " ".join(p.text)  # type: ignore[attr-defined]
    return p

"""The report's document model and its two renderings: blocks (headings, paragraphs, tables, figures,
boxes) rendered to Markdown (figures linked from ``figures/``) and to a self-contained HTML page (figures
embedded as base64 PNG data URIs, inline CSS, no scripts), so the two files always say the same thing.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Box:
    """A highlighted box: ``kind`` "warning" (results cannot be trusted as they stand) or "note"."""

    kind: Literal["warning", "note"]
    title: str
    items: list[str] = field(default_factory=list)


@dataclass
class Table:
    frame: pd.DataFrame  # cells already formatted as text
    caption: str = ""


@dataclass
class Image:
    path: Path  # absolute; linked relative to the run dir in Markdown, embedded in HTML
    caption: str


@dataclass
class Pre:
    """Preformatted text; with a ``summary`` it is folded away (HTML ``<details>``) behind that line."""

    text: str
    summary: str = ""


Block = Heading | Para | Bullets | Box | Table | Image | Pre


# ------------------------------------------------------------------------------------------------ renderers


# Text that would open raw HTML in a Markdown viewer: a tag, a closing tag, a comment or a declaration.
_RAW_HTML = re.compile(r"<(?=[A-Za-z/!?])")


def _md_text(s: Any) -> str:
    """Text (run data included: arm names, error messages, parameters) as Markdown shows it, never as HTML:
    every ``<`` that would open a tag is written ``&lt;``, as report.html escapes it."""
    return _RAW_HTML.sub("&lt;", str(s))


def _md_cell(s: Any) -> str:
    return _md_text(s).replace("|", "\\|").replace("\n", " ")


def _md_fence(text: str) -> str:
    """``text`` in a code fence longer than any run of backticks inside it, so it cannot close the fence."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def render_markdown(blocks: Sequence[Block], run_dir: Path) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {_md_text(b.text)}")
        elif isinstance(b, Para):
            out.append(_md_text(b.text))
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {_md_text(i)}" for i in b.items))
        elif isinstance(b, Box):
            label = "Warning" if b.kind == "warning" else "Note"
            lines = [f"> **{label}: {_md_text(b.title)}**"] + [f"> - {_md_text(i)}" for i in b.items]
            out.append("\n".join(lines))
        elif isinstance(b, Table):
            f = b.frame
            lines = ["| " + " | ".join(_md_cell(c) for c in f.columns) + " |", "|" + "---|" * len(f.columns)]
            lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in f.itertuples(index=False)]
            if b.caption:
                lines.append(f"\n*{_md_text(b.caption)}*")
            out.append("\n".join(lines))
        elif isinstance(b, Image):
            caption = _md_text(b.caption)
            out.append(f"![{caption}]({b.path.relative_to(run_dir).as_posix()})\n\n*{caption}*")
        elif isinstance(b, Pre):
            fence = _md_fence(b.text)
            # GitHub and most Markdown viewers fold <details>; a blank line lets the fence render inside it.
            out.append(
                f"<details><summary>{html.escape(b.summary, quote=False)}</summary>\n\n{fence}\n\n</details>"
                if b.summary
                else fence
            )
    return "\n\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
caption{caption-side:bottom;font-style:italic;font-size:.9em;text-align:left;padding-top:.3em}
.warning{border-left:6px solid #d9822b;background:#fff4e5;padding:.6em 1em;margin:1em 0}
.note{border-left:6px solid #4a7ab5;background:#eef4fb;padding:.6em 1em;margin:1em 0}
figure{margin:1em 0}figure img{max-width:100%}figcaption{font-style:italic;font-size:.9em}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
summary{cursor:pointer}
"""


def render_html(blocks: Sequence[Block], title: str) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Box):
            label = "Warning" if b.kind == "warning" else "Note"
            items = "<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>" if b.items else ""
            out.append(f'<div class="{b.kind}"><strong>{label}: {e(b.title)}</strong>{items}</div>')
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(str(c))}</th>" for c in b.frame.columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{e(str(v))}</td>" for v in row) + "</tr>"
                for row in b.frame.itertuples(index=False)
            )
            cap = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
            # Wide tables scroll inside their own box, so a narrow screen can reach the last columns.
            out.append(
                f'<div class="table-scroll" style="overflow-x:auto"><table>{cap}'
                f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>"
            )
        elif isinstance(b, Image):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.caption)}">'
                f"<figcaption>{e(b.caption)}</figcaption></figure>"
            )
        elif isinstance(b, Pre):
            pre = f"<pre>{e(b.text)}</pre>"
            out.append(f"<details><summary>{e(b.summary)}</summary>{pre}</details>" if b.summary else pre)
    out.append("</body></html>")
    return "\n".join(out) + "\n"

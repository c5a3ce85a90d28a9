"""The report of a real run (the smoke study, run once per session by the `smoke_run` fixture), section by
section: what the synthetic tables of test_report.py cannot show (Ray's columns, the runner's files)."""

from __future__ import annotations

import html
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")


def sections(md: str) -> dict[str, str]:
    """``{title: body}`` for each ``## `` section of a Markdown report."""
    parts = re.split(r"^## (.+)$", md, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.fixture(scope="module")
def report(smoke_run: Path) -> tuple[str, str]:
    return (smoke_run / "report.md").read_text(encoding="utf-8"), (smoke_run / "report.html").read_text(
        encoding="utf-8"
    )


def test_no_section_is_na_and_no_file_is_skipped(report):
    md, _ = report
    empty = [title for title, body in sections(md).items() if "n/a:" in body]
    assert not empty, f"sections saying n/a: {empty}"
    notes = re.findall(r"^> \*\*Note: (.*)\*\*$", md, flags=re.M)
    assert not [n for n in notes if "skipped" in n or "example" in n], notes


def test_every_linked_figure_exists(report, smoke_run):
    md, _ = report
    links = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert len(links) >= 5  # forest, paired seeds, mean ranks, learning curves, image-task examples
    assert [x for x in links if not (smoke_run / x).is_file()] == []


def test_html_has_the_markdown_sections_and_fits_narrow_screens(report):
    md, page = report
    md_titles = [line[3:] for line in md.splitlines() if line.startswith("## ")]
    assert [html.unescape(t) for t in re.findall(r"<h2>(.*?)</h2>", page)] == md_titles
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "<details><summary>" in page and "</pre></details>" in page
    assert page.count("<table>") == page.count('style="overflow-x:auto"><table>')


def test_pretext_references_and_linear_probe_are_reported(report):
    """Needs the runner's pretext_ref_* and probe_auc columns (study/trainables.py)."""
    md, _ = report
    body = sections(md)
    pretext = body["Pretext tasks (paper Tables 2 and 3)"]
    assert pretext.count("| Best reference |") == 2  # Table 2 (rotation) and Table 3 (image tasks)
    assert "(headline)" in pretext and "learned on " in pretext
    probe = body["Linear probe (frozen encoder)"]
    assert "| probe AUC (%) |" in probe and "| Holm p |" in probe


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=768,2000",
    ]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


# Appended to a copy of the report (the report itself has no scripts): the page's and each table box's
# scroll and client widths after layout, written into the DOM for --dump-dom.
MEASURE = """<script>window.onload = function () {
  var e = document.documentElement, out = ["page " + e.scrollWidth + " " + e.clientWidth];
  document.querySelectorAll(".table-scroll").forEach(function (d) {
    out.push("table " + d.scrollWidth + " " + d.clientWidth + " " + getComputedStyle(d).overflowX);
  });
  var p = document.createElement("pre"); p.id = "measure"; p.textContent = out.join("\\n");
  document.body.appendChild(p);
};</script>"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed")
def test_report_renders_headless_at_768px(smoke_run, report, tmp_path):
    shot = tmp_path / "report.png"
    proc = _chromium(
        f"--screenshot={shot}", (smoke_run / "report.html").resolve().as_uri(), profile=tmp_path / "p1"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 768  # IHDR width

    # At 768 px the page itself does not scroll sideways; a wider table scrolls inside its own box.
    measured = tmp_path / "measure.html"
    measured.write_text(report[1].replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    proc = _chromium("--virtual-time-budget=5000", "--dump-dom", measured.as_uri(), profile=tmp_path / "p2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = re.search(r'<pre id="measure">(.*?)</pre>', proc.stdout, flags=re.S).group(1).splitlines()
    page_scroll, page_client = map(int, lines[0].split()[1:])
    assert page_scroll <= page_client <= 768
    boxes = [line.split()[1:] for line in lines[1:]]
    assert len(boxes) == report[1].count("<table>") and all(b[2] == "auto" for b in boxes)
    assert any(int(b[0]) > int(b[1]) for b in boxes)  # the comparison table is wider than the screen

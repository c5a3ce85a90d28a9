"""`check_dataset`: everything wrong with a dataset (problems make it unusable; warnings do not), and its
report.

The image checks are the same for both forms of dataset; `scan` runs them (and, given an image size, decodes
for the cache in the same pass).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from study.data.discovery import Resolved, resolve
from study.data.duplicates import MAX_EXAMPLES, duplicate_findings
from study.data.fingerprinting import UNREADABLE, fingerprint_records
from study.data.images import SMALL_IMAGE_PX, FileResult, inspect_file
from study.data.source import CLASSES, SPLITS, DataSource, as_source, counter_text, format_problems

__all__ = ["CheckReport", "check_dataset", "scan"]

_FORMAT_MAX_WARNINGS = 50  # format() shows at most this many warning lines


@dataclass
class CheckReport:
    """Result of `check_dataset`.

    ok: no problems. problems: make the dataset unusable, one line each naming the file and the fix.
    warnings: usable but worth knowing (conversions, near-duplicates, ignored files in class folders).
    counts: {split: {class: number of image files found}}. size_stats: original image sizes in pixels.
    duplicates: {"exact": [[paths with identical bytes], ...], "near": [{"a", "b", "distance"}, ...],
    "near_max_distance": int}. ignored: files not read that need no action (hidden files, notes at the root).
    conversions: the subset of warnings describing conversions applied when decoding.
    source: {"kind": "folder"}, or for a labels CSV {"kind": "csv", "csv", "images", "columns" (role -> column
    used), "split" (how test images were chosen), "n_rows", "n_groups"}.
    """

    root: str
    ok: bool
    problems: list[str]
    warnings: list[str]
    counts: dict[str, dict[str, int]]
    size_stats: dict[str, Any]
    duplicates: dict[str, Any]
    ignored: list[str] = field(default_factory=list)
    conversions: list[str] = field(default_factory=list)
    fingerprint: str = ""
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def format(self, all_warnings: bool = False) -> str:
        """The report for a terminal: counts, then every problem and the first warnings (all with
        `all_warnings`; `study data check --all`)."""
        status = "OK" if self.ok else f"NOT USABLE ({len(self.problems)} problem(s))"
        lines = [f"Dataset check: {self.root} — {status}"]
        if self.fingerprint:
            lines.append(f"fingerprint: {self.fingerprint}")
        if self.source.get("kind") == "csv":
            src = self.source
            cols = ", ".join(f"{role} {col}" for role, col in src.get("columns", {}).items() if col)
            groups = f", {src['n_groups']} groups" if src.get("columns", {}).get("group") else ""
            lines.append(
                f"labels CSV: {src['n_rows']} usable rows{groups}; columns: {cols or 'none matched'}; "
                f"images folder: {src.get('images')}; test split: {src.get('split') or 'n/a'}"
            )
            if src.get("classes"):
                by_label = {
                    lab: ", ".join(f"{k} ({n})" for k, (n, to) in src["classes"].items() if to == lab)
                    for lab in CLASSES[::-1]
                }
                lines.append(
                    "diagnosis classes: "
                    + "; ".join(f"{text} -> {lab}" for lab, text in by_label.items() if text)
                    + " (every class not given as malignant counts as benign)"
                )
        lines.append(f"  {'split':<6} {'benign':>8} {'malignant':>10} {'total':>7}")
        for split in SPLITS:
            c = self.counts.get(split, {})
            b, m = c.get("benign", 0), c.get("malignant", 0)
            lines.append(f"  {split:<6} {b:>8} {m:>10} {b + m:>7}")
        s = self.size_stats
        if s.get("n_images"):
            w, h = s["width"], s["height"]
            lines.append(
                f"image sizes (px): width {w['min']}/{w['median']:g}/{w['max']}, height "
                f"{h['min']}/{h['median']:g}/{h['max']} (min/median/max of {s['n_images']} decodable "
                f"images); modes {counter_text(s['modes'])}; formats {counter_text(s['formats'])}"
            )
        d = self.duplicates
        lines.append(
            f"duplicates: {len(d.get('exact', []))} group(s) of byte-identical files; "
            f"{len(d.get('near', []))} near-duplicate pair(s) (phash Hamming distance <= "
            f"{d.get('near_max_distance')} of {d.get('hash_bits')} bits)"
        )
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            lines.append(format_problems(self.problems))
        if self.warnings:
            lines.append(f"warnings ({len(self.warnings)}):")
            shown = len(self.warnings) if all_warnings else _FORMAT_MAX_WARNINGS
            lines.append(format_problems(self.warnings[:shown]))
            if len(self.warnings) > shown:
                lines.append(
                    f"  ... and {len(self.warnings) - _FORMAT_MAX_WARNINGS} more (`study data check --all` lists every one)"
                )
        if self.ignored:
            shown = ", ".join(self.ignored[:10]) + (" ..." if len(self.ignored) > 10 else "")
            lines.append(f"ignored ({len(self.ignored)}, not data): {shown}")
        return "\n".join(lines)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _outside_links(res: Resolved) -> list[tuple[str, str, bool]]:
    """(path relative to the read root, resolved target, target is a folder) of every symlink on the way to
    an entry that leads out of the dataset folder (a CSV's images folder): its target lies neither under
    that folder nor under the folder holding the link (a link inside a symlinked class folder to a sibling
    is not reported again). Each link once, sorted."""
    root = os.path.realpath(res.read_root)
    found: dict[str, tuple[str, bool]] = {}
    seen: set[str] = set()
    for e in res.listing.entries:
        parts = e.rel.split("/")
        for i in range(1, len(parts) + 1):
            rel = "/".join(parts[:i])
            if rel in seen:
                continue
            seen.add(rel)
            path = res.read_root / rel
            if not path.is_symlink():
                continue
            target = os.path.realpath(path)
            if not (_within(target, root) or _within(target, os.path.realpath(path.parent))):
                found[rel] = (target, os.path.isdir(target))
    return [(rel, target, is_dir) for rel, (target, is_dir) in sorted(found.items())]


def _outside_link_warnings(res: Resolved) -> list[str]:
    """One warning naming the symlinks that leave the dataset folder (the first few in full): their targets
    are read as data. Not a problem (a folder of links into a shared image store is a layout people use);
    nothing a file holds is ever printed, so a link to a private file shows only its path."""
    links = _outside_links(res)
    if not links:
        return []
    where = "the images folder" if res.table is not None else "the dataset folder"
    if len(links) == 1:
        rel, target, is_dir = links[0]
        what = "folder" if is_dir else "file"
        return [
            f"{rel}: symlink to a {what} outside {where} ({target}), read as data; copy the {what} into "
            f"{where}, or remove the link if it does not belong there"
        ]
    shown = "; ".join(f"{rel} -> {target}" for rel, target, _ in links[:MAX_EXAMPLES])
    more = f"; and {len(links) - MAX_EXAMPLES} more" if len(links) > MAX_EXAMPLES else ""
    return [
        f"{len(links)} symlinks lead outside {where} and are read as data: {shown}{more}; copy their targets "
        f"into {where}, or remove the links that do not belong there"
    ]


def scan(res: Resolved, image_size: int | None) -> tuple[CheckReport, list[FileResult]]:
    """(the check report, each entry's file result): reads every file once, decoding and resizing it too
    when `image_size` is given (for the cache)."""
    listing = res.listing
    results = [inspect_file(res.read_root, e, image_size) for e in listing.entries]
    problems = list(listing.problems) + [r.problem for r in results if r.problem]
    conversions = [note for r in results if r.problem is None for note in r.conversions]
    dup_problems, dup_warnings, duplicates = duplicate_findings(results)
    problems += dup_problems
    decoded = [r for r in results if r.problem is None]
    non_square = sum(r.width != r.height for r in decoded)
    if non_square:
        conversions.append(
            f"{non_square} non-square image(s) are centre-cropped to their largest square before resizing"
        )
    warns = conversions + list(listing.warnings) + _outside_link_warnings(res) + dup_warnings

    counts = {s: {c: 0 for c in CLASSES} for s in SPLITS}
    for e in listing.entries:
        counts[e.split][CLASSES[e.label]] += 1
    size_stats: dict[str, Any] = {"n_images": len(decoded)}
    if decoded:
        w = np.array([r.width for r in decoded])
        h = np.array([r.height for r in decoded])
        size_stats.update(
            width={"min": int(w.min()), "median": float(np.median(w)), "max": int(w.max())},
            height={"min": int(h.min()), "median": float(np.median(h)), "max": int(h.max())},
            modes=dict(Counter(r.mode for r in decoded)),
            formats=dict(Counter(r.format for r in decoded)),
            non_square=non_square,
            small=sum(min(r.width, r.height) < SMALL_IMAGE_PX for r in decoded),
        )
    records = [(r.entry, r.nbytes, r.digest or UNREADABLE) for r in results]
    report = CheckReport(
        root=res.source.path,
        ok=not problems,
        problems=problems,
        warnings=warns,
        counts=counts,
        size_stats=size_stats,
        duplicates=duplicates,
        ignored=sorted(listing.ignored),
        conversions=conversions,
        fingerprint=fingerprint_records(res, records),
        source=res.info(),
    )
    return report, results


def check_dataset(source: str | Path | DataSource) -> CheckReport:
    """Check a dataset (a folder, or a labels CSV: a path or a DataSource) without loading it for training:
    reads and decodes every image once.

    Problems (unusable): missing split/class folders, a file (or broken link) where a split/class folder goes,
    empty class folders, a class with a single training image (the validation split needs one to train on
    and one to validate; with groups: a class in a single group), unexpected folder names (labels are never
    guessed), images outside class folders, nested folders, broken symlinks, unreadable, empty, non-image
    (described by kind and size, never quoted: the file may be a link to anything), truncated/corrupt and
    oversized (PIL decompression-bomb limit) files, unsupported colour modes, byte-identical files across
    train/test (leakage) or across classes (conflicting labels).
    Warnings (usable): conversions to 8-bit RGB (grayscale, palette, RGBA/LA composited on black, 16-bit
    scaled, EXIF rotation, format/extension mismatch), very small images, non-square images (centre-cropped),
    same-label exact duplicates, near-duplicates (phash, see NEAR_DUPLICATE_MAX_DISTANCE) across train/test,
    across classes, or within a split and class, non-image files in class folders, symlinks whose target lies
    outside the dataset folder (a CSV's images folder; read as data, each named with its target), grouped
    data with which validation can lack benign images for some seeds. Symlinked folders are followed only at
    the fixed layout depth, so symlink loops cannot recurse.
    A labels CSV gets the same image checks (each line names the file and its CSV line), plus its own
    (`study.data.labels_csv`): problems for columns that cannot be matched, rows whose image is missing or
    ambiguous, empty cells, label or split values outside the accepted ones, conflicting labels for one image,
    a malignant class that does not occur, a diagnosis column without malignant classes, a group (lesion or
    patient) with rows in both train and test (test leakage), a split without images of a class; warnings
    for repeated identical rows, empty group cells and image files with no row.
    """
    report, _ = scan(resolve(as_source(source)), None)
    return report

"""A labels CSV's data rows, one at a time: each row's image file, label, split and group, or one line saying
what is wrong with it (see `study.data.labels_csv`)."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from study.data.labels_table import SPLIT_VALUES, Columns, CsvRow, Lines, hashed_test_split
from study.data.source import CLASSES

__all__ = ["FileIndex", "RowReader"]


class FileIndex:
    """The image files under the images folder (relative POSIX paths), indexed as `_resolve_image` reads them:
    by (stem, lower-case extension) and by lower-case path."""

    def __init__(self, files: list[str]):
        self.files = set(files)
        self.by_stem: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.by_lower: dict[str, list[str]] = defaultdict(list)
        for f in files:
            stem, ext = os.path.splitext(f)
            self.by_stem[(stem, ext.lower())].append(f)
            self.by_lower[f.lower()].append(f)


class RowReader:
    """Reads the data rows one at a time: each usable row becomes a `CsvRow`; each row with a problem, one
    line (grouped by kind). Repeats of an image are checked against its first row."""

    def __init__(
        self,
        name: str,
        cols: Columns,
        malignant_keys: dict[str, str],
        files: FileIndex,
        extensions: tuple[str, ...],
        images_dir: Path,
        test_fraction: float,
    ):
        self.name, self.cols, self.malignant_keys = name, cols, malignant_keys
        self.files, self.extensions, self.images_dir = files, extensions, images_dir
        self.test_fraction = test_fraction
        self.problems = Lines(name)
        self.warns = Lines(name)
        self.first_by_rel: dict[str, tuple[int, int, str, str | None]] = {}
        self.rows: list[CsvRow] = []
        self.own_group_lines: list[int] = []  # rows whose group cell is empty
        self.named: set[str] = set()  # every file a row names (not reported as having no row)
        self.diagnoses: Counter[str] = Counter()

    def read(self, line: int, cells: list[str]) -> None:
        cols, where, n_header = self.cols, f"{self.name} line {line}", self.cols.width
        if len(cells) > n_header:
            self.problems.add(
                "too many fields",
                line,
                f"{where}: {len(cells)} fields but the header has {n_header}; quote cells that contain commas "
                "or remove the extra fields",
            )
            return
        cells = cells + [""] * (n_header - len(cells))

        def cell(col: str) -> str:
            return cells[cols.index[col]].strip()

        value = cell(cols.image)
        files = self.files
        found = (
            _resolve_image(value, files.files, files.by_stem, files.by_lower, self.extensions)
            if value
            else (None, "", [])
        )
        rel, why, matched = found
        self.named.update(matched)
        bad = False
        for col in (cols.image, cols.label) + ((cols.split,) if cols.split else ()):
            if not cell(col):
                text = f"{where}: empty {col} cell; fill it in or remove the row"
                self.problems.add(f"empty {col}", line, text)
                bad = True
        if bad:
            return
        if rel is None:
            self.problems.add(
                "no image",
                line,
                f"{where}: {cols.image} {value!r}: {why} (images folder {self.images_dir}); fix the cell, add "
                "the file, or remove the row",
            )
            return
        label = self._label(line, where, cell)
        split = self._split(line, where, cell) if label is not None else None
        if split is None:
            return
        self._add(line, where, rel, label, split, cell)

    def _label(self, line: int, where: str, cell: Callable[[str], str]) -> int | None:
        """The row's label; None, with a problem, when its cell is not a label or the label columns
        disagree."""
        kind, col, check = self.cols.label_kind, self.cols.label, self.cols.check
        label = _parse_label(kind, cell(col), self.malignant_keys)
        if kind == "diagnosis":
            self.diagnoses[cell(col).lower()] += 1
        if label is None:
            accepted = {"target": "0 or 1", "benign_malignant": "benign or malignant"}[kind]
            self.problems.add(
                f"{col} value",
                line,
                f"{where}: {col} {cell(col)!r} is not {accepted}; fix the cell or remove the row "
                "(labels are never guessed)",
            )
            return None
        if check and cell(check):
            other = _parse_label("benign_malignant", cell(check), self.malignant_keys)
            if other is not None and other != label:
                self.problems.add(
                    "conflicting label columns",
                    line,
                    f"{where}: {col} {cell(col)} but {check} {cell(check)} (conflicting "
                    "labels for one image); fix the wrong cell",
                )
                return None
        return label

    def _split(self, line: int, where: str, cell: Callable[[str], str]) -> str | None:
        """The split column's value ("train" without the column: hashed later, in `_add`); None, with a
        problem, when it is neither train nor test."""
        col = self.cols.split
        if not col:
            return "train"
        split = cell(col).lower()
        if split not in SPLIT_VALUES:
            self.problems.add(
                f"{col} value",
                line,
                f"{where}: {col} {cell(col)!r} is not train or test; set it to train or test "
                "(validation images are drawn from train by each seed)",
            )
            return None
        return split

    def _add(
        self, line: int, where: str, rel: str, label: int, split: str, cell: Callable[[str], str]
    ) -> None:
        """Keep the row, unless its image is already on an earlier row (a problem or a warning)."""
        group_col = self.cols.group
        stem = os.path.splitext(rel)[0]
        group: str | None = None
        if group_col:
            group = cell(group_col)
            if not group:
                self.own_group_lines.append(line)
                group = f"(no {group_col}) {stem}"
        if not self.cols.split:
            key = (cell(group_col) or stem) if group_col else stem
            split = "test" if hashed_test_split(key, self.test_fraction) else "train"
        if rel in self.first_by_rel:
            self._repeated(line, where, rel, label, split, group)
            return
        self.first_by_rel[rel] = (line, label, split, group)
        self.rows.append(CsvRow(line, rel, split, label, group))

    def _repeated(self, line: int, where: str, rel: str, label: int, split: str, group: str | None) -> None:
        first_line, first_label, first_split, first_group = self.first_by_rel[rel]
        if first_label != label:
            self.problems.add(
                "conflicting labels",
                line,
                f"{where}: image {rel} is also on line {first_line} with label "
                f"{CLASSES[first_label]} vs {CLASSES[label]} here (conflicting labels for one image); keep "
                "the row with the right label, delete the other",
            )
        elif (first_split, first_group) != (split, group):
            self.problems.add(
                "repeated image",
                line,
                f"{where}: image {rel} is also on line {first_line} with another split or group; keep one "
                "row",
            )
        else:
            self.warns.add(
                "repeated row",
                line,
                f"{where}: repeats image {rel} of line {first_line} (same label, split and group); the image "
                "is used once — delete the repeated row",
            )


def _parse_label(kind: str, value: str, malignant: dict[str, str]) -> int | None:
    v = value.strip().lower()
    if kind == "target":
        return {"0": 0, "1": 1, "0.0": 0, "1.0": 1}.get(v)
    if kind == "benign_malignant":
        return {"benign": 0, "malignant": 1}.get(v)
    return int(v in malignant)  # diagnosis: the given classes are malignant, all others benign


def _resolve_image(
    value: str,
    files: set[str],
    by_stem: dict[tuple[str, str], list[str]],
    by_lower: dict[str, list[str]],
    extensions: tuple[str, ...],
) -> tuple[str | None, str, list[str]]:
    """(relative path of the image a cell names or None, why not, every file the cell matches)."""
    p = PurePosixPath(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value:
        return None, "not a path relative to the images folder (with / separators and no '..')", []
    ext = os.path.splitext(value)[1].lower()
    norm = str(p)
    if ext in extensions:
        if norm in files:
            return norm, "", [norm]
        candidates = by_stem.get((os.path.splitext(norm)[0], ext), [])
        tried = [norm]
    else:
        candidates = [f for e in extensions for f in by_stem.get((norm, e), [])]
        tried = [f"{norm}{e}" for e in extensions]
    if len(candidates) == 1:
        return candidates[0], "", candidates
    if len(candidates) > 1:
        return (
            None,
            f"ambiguous, several files match ({', '.join(candidates)}); name one of them in the cell",
            candidates,
        )
    near = [f for t in tried for f in by_lower.get(t.lower(), [])]
    hint = f" (a file differs only in capitalisation: {near[0]})" if near else ""
    return None, f"no image file {' or '.join(tried)}{hint}", []

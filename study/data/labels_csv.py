"""Labels-CSV datasets: read a CSV of image ids and labels and resolve every row to an image file.

`study.data.dataset` is the entry point (`DataSource`, `check_dataset`, `load_dataset`); this module only parses and
resolves the CSV, into rows (image path, split, label, group) plus problems and warnings, one line each
naming the CSV line and the fix. Decoding and every image check are `study.data.dataset`'s.

Columns are matched by name, in any capitalisation, with the conventions of public sets (ISIC 2020, the ISIC
archive, HAM10000):

- image (exactly one of): `image`, `image_id`, `image_name`, `isic_id`. A cell with an image extension is a
  path relative to the images folder; any other cell is an id, resolved to `<id>.jpg`, `.jpeg` or `.png`
  (extension in any capitalisation) there.
- label: with `malignant` classes given, the diagnosis column (`dx` or `diagnosis`): those classes are 1,
  every other class 0. Otherwise `target` (0/1, ISIC 2020), else `benign_malignant` (benign/malignant; also
  cross-checked against `target` when both exist); a diagnosis column alone is a problem that lists its
  classes — which diagnoses count as malignant is never guessed.
- group (optional): `lesion_id`, else `patient_id`. An empty group cell makes the image its own group.
- split (optional): `train` / `test`. Without it, the test split is made per group (per image without a
  group column) by hashing: sha256 of "melanoma-ssl-study/test-split/v1\\n" + the group id (or the image's
  path without extension), read as a fraction in [0, 1); below TEST_FRACTION (0.2) is test. It depends on
  nothing else (no seed, no row order, no other rows), so it never changes between studies and never splits
  a group.

The images folder: `images` if given (relative paths are relative to the CSV's folder), else
`<csv folder>/images` when it exists, else the CSV's own folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "BENIGN_MALIGNANT_COLUMN",
    "DIAGNOSIS_COLUMNS",
    "GROUP_COLUMNS",
    "IMAGE_COLUMNS",
    "SPLIT_COLUMN",
    "TARGET_COLUMN",
    "TEST_FRACTION",
    "CsvRow",
    "CsvTable",
    "default_images_dir",
    "hashed_test_split",
    "read_labels_csv",
]

IMAGE_COLUMNS = ("image", "image_id", "image_name", "isic_id")
TARGET_COLUMN = "target"
BENIGN_MALIGNANT_COLUMN = "benign_malignant"
DIAGNOSIS_COLUMNS = ("dx", "diagnosis")
GROUP_COLUMNS = ("lesion_id", "patient_id")  # the first present is used
SPLIT_COLUMN = "split"
SPLIT_VALUES = ("train", "test")
TEST_FRACTION = 0.2  # of groups (images without groups) hashed into test when the CSV has no split column
_SPLIT_SALT = "melanoma-ssl-study/test-split/v1\n"
_MAX_LINES_PER_KIND = 10  # row-level lines of one kind shown before one summary line
_MAX_LISTED = 20  # line numbers / file names listed in a summary line
_DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class CsvRow:
    """One usable row. line: 1-based line of the CSV file where the row starts (the header is line 1 or
    later); rel: the image, relative to the images folder (POSIX separators, on-disk name); split: "train" or
    "test"; label: 0 = benign, 1 = malignant; group: the group id (None when the CSV has no group column)."""

    line: int
    rel: str
    split: str
    label: int
    group: str | None


@dataclass
class CsvTable:
    """What `read_labels_csv` found. fatal: no row could be read (missing or unreadable file, unmatched
    columns, diagnoses without malignant classes); rows is then empty. columns: role -> column used (None
    when absent); split_rule: how test images were chosen, in words."""

    csv: Path
    images: Path | None
    rows: list[CsvRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    columns: dict[str, str | None] = field(default_factory=dict)
    split_rule: str = ""
    fatal: bool = False
    # Diagnosis column only: {class (lower case): (rows, "malignant" or "benign")}, shown by `study data check`
    # so that what the classes not named malignant became is never a surprise.
    classes: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def has_groups(self) -> bool:
        return self.columns.get("group") is not None

    def info(self) -> dict[str, Any]:
        """JSON-friendly description for the check report."""
        groups = {r.group for r in self.rows} if self.has_groups else set()
        return {
            "kind": "csv",
            "csv": str(self.csv),
            "images": str(self.images) if self.images is not None else None,
            "columns": dict(self.columns),
            "split": self.split_rule,
            "n_rows": len(self.rows),
            "n_groups": len(groups),
            "classes": {k: list(v) for k, v in self.classes.items()},
        }


def default_images_dir(csv_path: str | Path) -> Path:
    """`<csv folder>/images` when that folder exists, else the CSV's own folder."""
    parent = Path(csv_path).parent
    return parent / "images" if (parent / "images").is_dir() else parent


def hashed_test_split(key: str, test_fraction: float = TEST_FRACTION) -> bool:
    """True when the group (or image) id `key` falls in the hashed test split (see the module docstring)."""
    digest = hashlib.sha256((_SPLIT_SALT + key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction


class _Lines:
    """Row-level lines grouped by kind: the first few of each kind in full, the rest as one summary."""

    def __init__(self, name: str):
        self.name = name
        self.by_kind: dict[str, list[tuple[int, str]]] = defaultdict(list)

    def add(self, kind: str, line: int, text: str) -> None:
        self.by_kind[kind].append((line, text))

    def lines(self) -> list[str]:
        out = []
        for kind, items in self.by_kind.items():
            out += [text for _, text in items[:_MAX_LINES_PER_KIND]]
            rest = items[_MAX_LINES_PER_KIND:]
            if rest:
                shown = ", ".join(str(n) for n, _ in rest[:_MAX_LISTED])
                more = " ..." if len(rest) > _MAX_LISTED else ""
                out.append(
                    f"{self.name}: {len(rest)} more row(s) with the same problem ({kind}): lines {shown}{more}"
                )
        return out


def _listed(names: list[str]) -> str:
    return ", ".join(names[:_MAX_LISTED]) + (
        f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else ""
    )


def _list_images(folder: Path, extensions: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(image files under `folder`, relative POSIX paths, sorted; problems). Hidden files and folders are
    skipped; symlinked folders are not followed (no loops)."""
    problems: list[str] = []
    found = []

    def onerror(e: OSError) -> None:
        problems.append(
            f"{e.filename}: cannot list folder ({type(e).__name__}: {e.strerror}); fix with chmod a+rx"
        )

    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        for f in filenames:
            if f.startswith(".") or os.path.splitext(f)[1].lower() not in extensions:
                continue
            found.append(f if rel_dir == "." else f"{rel_dir}/{f}")
    return sorted(found), problems


def _read_records(path: Path, name: str, table: CsvTable) -> list[tuple[int, list[str]]] | None:
    """[(first line of the record, cells)] of a comma-separated UTF-8 file, blank lines skipped."""
    try:
        raw = path.read_bytes()
    except PermissionError:
        table.problems.append(f"{path}: cannot read the labels CSV (permission denied); fix with chmod a+r")
        return None
    except OSError as e:
        table.problems.append(f"{path}: cannot read the labels CSV ({type(e).__name__}: {e})")
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        table.problems.append(
            f"{name} line {line}: not UTF-8 text (byte {e.start}); save the CSV as UTF-8 (e.g. 'CSV UTF-8' in "
            "a spreadsheet)"
        )
        return None
    reader = csv.reader(io.StringIO(text, newline=""))
    records = []
    previous = 0
    try:
        for cells in reader:
            start, previous = previous + 1, reader.line_num
            if cells and any(c.strip() for c in cells):
                records.append((start, cells))
    except csv.Error as e:
        table.problems.append(f"{name} line {reader.line_num}: cannot parse the CSV ({e}); fix that line")
        return None
    return records


def read_labels_csv(
    csv_path: str | Path,
    images: str | Path | None = None,
    malignant: tuple[str, ...] = (),
    extensions: tuple[str, ...] = _DEFAULT_EXTENSIONS,
    test_fraction: float = TEST_FRACTION,
) -> CsvTable:
    """Parse the labels CSV at `csv_path` and resolve its rows to image files (see the module docstring).

    Never raises for bad input: each problem (unusable) or warning is one line naming the CSV line and the
    fix. Rows with a problem are left out of `rows`; repeated identical rows are kept once (a warning).
    """
    path = Path(csv_path)
    name = path.name
    table = CsvTable(csv=path, images=None)
    malignant_keys = {str(m).strip().lower(): str(m) for m in malignant}

    if images is not None:
        images_dir = Path(images).expanduser()
        if not images_dir.is_absolute():
            images_dir = path.parent / images_dir
        if not images_dir.is_dir():
            table.problems.append(
                f"{images}: images folder does not exist (relative paths are relative to the CSV's folder: "
                f"{images_dir}); pass the folder that holds the images (data_images)"
            )
            images_dir = None
    else:
        images_dir = default_images_dir(path)
    table.images = images_dir

    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        table.problems.append(f"{path}: labels CSV {what}; pass an existing .csv file or a dataset folder")
        table.fatal = True
        return table
    records = _read_records(path, name, table)
    if records is None:
        table.fatal = True
        return table
    if not records:
        table.problems.append(f"{name}: the labels CSV is empty; add a header line and one row per image")
        table.fatal = True
        return table

    header_line, header_cells = records[0]
    header = [h.strip().lower() for h in header_cells]
    found_text = ", ".join(repr(h.strip()) for h in header_cells)
    if len(header) == 1 and any(d in header_cells[0] for d in ";\t|"):
        sep = next(d for d in ";\t|" if d in header_cells[0])
        table.problems.append(
            f"{name} line {header_line}: the header is one column {header_cells[0]!r}; the file seems to be "
            f"separated by {sep!r}: save it comma-separated"
        )
        table.fatal = True
        return table
    doubled = sorted(h for h, n in Counter(header).items() if n > 1 and h)
    if doubled:
        table.problems.append(
            f"{name} line {header_line}: column(s) {', '.join(doubled)} appear more than once (names match in "
            "any capitalisation); rename or delete the extra copies"
        )
        table.fatal = True
        return table
    index = {h: i for i, h in enumerate(header)}

    def present(names: tuple[str, ...]) -> list[str]:
        return [n for n in names if n in index]

    image_cols = present(IMAGE_COLUMNS)
    if not image_cols:
        table.problems.append(
            f"{name} line {header_line}: no image column among the columns found ({found_text}); name the "
            f"column of image ids or file names one of {', '.join(IMAGE_COLUMNS)} (any capitalisation)"
        )
    elif len(image_cols) > 1:
        table.problems.append(
            f"{name} line {header_line}: columns {' and '.join(image_cols)} could both name the image; keep one "
            "of them (rename or delete the others)"
        )
    diagnosis_cols = present(DIAGNOSIS_COLUMNS)
    label_col = check_col = None
    label_kind = ""
    if malignant_keys:
        if len(diagnosis_cols) == 1:
            label_col, label_kind = diagnosis_cols[0], "diagnosis"
        elif not diagnosis_cols:
            table.problems.append(
                f"{name} line {header_line}: malignant classes were given ({', '.join(malignant_keys.values())}) "
                f"but there is no diagnosis column ({', '.join(DIAGNOSIS_COLUMNS)}) among the columns found "
                f"({found_text}); add that column, or give no malignant classes to use {TARGET_COLUMN} / "
                f"{BENIGN_MALIGNANT_COLUMN}"
            )
        else:
            table.problems.append(
                f"{name} line {header_line}: columns {' and '.join(diagnosis_cols)} could both be the "
                "diagnosis; keep one of them (rename or delete the other)"
            )
    elif TARGET_COLUMN in index:
        label_col, label_kind = TARGET_COLUMN, "target"
        if BENIGN_MALIGNANT_COLUMN in index:
            check_col = BENIGN_MALIGNANT_COLUMN
    elif BENIGN_MALIGNANT_COLUMN in index:
        label_col, label_kind = BENIGN_MALIGNANT_COLUMN, "benign_malignant"
    elif diagnosis_cols:
        label_col, label_kind = diagnosis_cols[0], "unmapped"
    else:
        table.problems.append(
            f"{name} line {header_line}: no label column among the columns found ({found_text}); accepted: "
            f"{TARGET_COLUMN} (0/1), {BENIGN_MALIGNANT_COLUMN} (benign/malignant), or a diagnosis column "
            f"({', '.join(DIAGNOSIS_COLUMNS)}) with the malignant classes given (data_malignant)"
        )
    group_cols = present(GROUP_COLUMNS)
    group_col = group_cols[0] if group_cols else None
    split_col = SPLIT_COLUMN if SPLIT_COLUMN in index else None
    image_col = image_cols[0] if len(image_cols) == 1 else None
    table.columns = {"image": image_col, "label": label_col, "group": group_col, "split": split_col}
    if split_col:
        table.split_rule = f"column {split_col}"
    else:
        by = f"{group_col} (images without one: the image)" if group_col else "image"
        table.split_rule = f"hashed by {by}, test fraction {test_fraction:g}"
    rows_data = records[1:]

    if label_kind == "unmapped":
        classes = Counter(
            cells[index[label_col]].strip() for _, cells in rows_data if len(cells) > index[label_col]
        )
        classes.pop("", None)
        table.problems.append(
            f"{name}: labels would come from the diagnosis column {label_col} (classes: "
            f"{_counter_text(classes)}), but no malignant classes were given; name them, e.g. data_malignant = "
            f'["{_example_class(classes)}"] in the study file or --malignant {_example_class(classes)} for '
            "study data check (which diagnoses count as malignant is never guessed)"
        )
    if image_col is None or label_col is None or label_kind == "unmapped" or images_dir is None:
        table.fatal = True
        return table

    if not rows_data:
        table.problems.append(f"{name}: the labels CSV has a header but no rows; add one row per image")
        return table

    files, list_problems = _list_images(images_dir, extensions)
    table.problems += list_problems
    file_set = set(files)
    by_stem: dict[tuple[str, str], list[str]] = defaultdict(list)
    by_lower: dict[str, list[str]] = defaultdict(list)
    for f in files:
        stem, ext = os.path.splitext(f)
        by_stem[(stem, ext.lower())].append(f)
        by_lower[f.lower()].append(f)

    problems = _Lines(name)
    warns = _Lines(name)
    n_header = len(header)
    first_by_rel: dict[str, tuple[int, int, str, str | None]] = {}
    rows: list[CsvRow] = []
    own_group_lines: list[int] = []
    named: set[str] = set()
    diagnoses: Counter[str] = Counter()

    for line, cells in rows_data:
        where = f"{name} line {line}"
        if len(cells) > n_header:
            problems.add(
                "too many fields",
                line,
                f"{where}: {len(cells)} fields but the header has {n_header}; quote cells that contain commas "
                "or remove the extra fields",
            )
            continue
        cells = cells + [""] * (n_header - len(cells))

        def cell(col: str) -> str:
            return cells[index[col]].strip()

        value = cell(image_col)
        found = _resolve_image(value, file_set, by_stem, by_lower, extensions) if value else (None, "", [])
        rel, why, matched = found
        named.update(matched)  # a file a row names is not reported as having no row
        bad = False
        for col in (image_col, label_col) + ((split_col,) if split_col else ()):
            if not cell(col):
                problems.add(f"empty {col}", line, f"{where}: empty {col} cell; fill it in or remove the row")
                bad = True
        if bad:
            continue
        if rel is None:
            problems.add(
                "no image",
                line,
                f"{where}: {image_col} {value!r}: {why} (images folder {images_dir}); fix the cell, add the "
                "file, or remove the row",
            )
            continue
        label = _parse_label(label_kind, cell(label_col), malignant_keys)
        if label_kind == "diagnosis":
            diagnoses[cell(label_col).lower()] += 1
        if label is None:
            accepted = {"target": "0 or 1", "benign_malignant": "benign or malignant"}[label_kind]
            problems.add(
                f"{label_col} value",
                line,
                f"{where}: {label_col} {cell(label_col)!r} is not {accepted}; fix the cell or remove the row "
                "(labels are never guessed)",
            )
            continue
        if check_col and cell(check_col):
            other = _parse_label("benign_malignant", cell(check_col), malignant_keys)
            if other is not None and other != label:
                problems.add(
                    "conflicting label columns",
                    line,
                    f"{where}: {label_col} {cell(label_col)} but {check_col} {cell(check_col)} (conflicting "
                    "labels for one image); fix the wrong cell",
                )
                continue
        split = "train"
        if split_col:
            split = cell(split_col).lower()
            if split not in SPLIT_VALUES:
                problems.add(
                    f"{split_col} value",
                    line,
                    f"{where}: {split_col} {cell(split_col)!r} is not train or test; set it to train or test "
                    "(validation images are drawn from train by each seed)",
                )
                continue
        stem = os.path.splitext(rel)[0]
        group: str | None = None
        if group_col:
            group = cell(group_col)
            if not group:
                own_group_lines.append(line)
                group = f"(no {group_col}) {stem}"
        if not split_col:
            key = (cell(group_col) or stem) if group_col else stem
            split = "test" if hashed_test_split(key, test_fraction) else "train"
        if rel in first_by_rel:
            first_line, first_label, first_split, first_group = first_by_rel[rel]
            if first_label != label:
                problems.add(
                    "conflicting labels",
                    line,
                    f"{where}: image {rel} is also on line {first_line} with label "
                    f"{_CLASSES[first_label]} vs {_CLASSES[label]} here (conflicting labels for one image); keep "
                    "the row with the right label, delete the other",
                )
            elif (first_split, first_group) != (split, group):
                problems.add(
                    "repeated image",
                    line,
                    f"{where}: image {rel} is also on line {first_line} with another split or group; keep one "
                    "row",
                )
            else:
                warns.add(
                    "repeated row",
                    line,
                    f"{where}: repeats image {rel} of line {first_line} (same label, split and group); the image "
                    "is used once — delete the repeated row",
                )
            continue
        first_by_rel[rel] = (line, label, split, group)
        rows.append(CsvRow(line, rel, split, label, group))

    table.problems += problems.lines()
    table.warnings += warns.lines()
    if label_kind == "diagnosis":
        table.classes = {
            k: (n, "malignant" if k in malignant_keys else "benign") for k, n in sorted(diagnoses.items())
        }
        for key, given in malignant_keys.items():
            if key not in diagnoses:
                table.problems.append(
                    f"{name}: malignant class {given!r} does not occur in column {label_col} (classes found: "
                    f"{_counter_text(diagnoses)}); fix data_malignant (classes match in any capitalisation)"
                )
    if own_group_lines:
        table.warnings.append(
            f"{name}: {len(own_group_lines)} row(s) have an empty {group_col} (lines "
            f"{_listed([str(n) for n in own_group_lines])}); each of those images is its own group — fill in "
            f"{group_col} where images share one"
        )
    if split_col and group_col:
        table.problems += _groups_across_splits(rows, name, group_col)
    unused = sorted(file_set - named)
    if unused:
        shown = ", ".join(unused[:5]) + (", ..." if len(unused) > 5 else "")
        table.warnings.append(
            f"{images_dir}: {len(unused)} image file(s) have no row in {name} and are not used, e.g. {shown}; "
            "add rows for them or move them out of the images folder"
        )
    if not table.problems:
        fix = f"change the {split_col} column" if split_col else f"add a {SPLIT_COLUMN} column"
        for split in SPLIT_VALUES:
            for label, cls in enumerate(_CLASSES):
                if not any(r.split == split and r.label == label for r in rows):
                    table.problems.append(
                        f"{name}: the {split} split has no {cls} images ({table.split_rule}); add rows or {fix}"
                    )
    table.rows = sorted(rows, key=lambda r: r.rel)
    return table


_CLASSES = ("benign", "malignant")


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


def _groups_across_splits(rows: list[CsvRow], name: str, group_col: str) -> list[str]:
    """One problem per group with rows in both train and test (test leakage)."""
    first: dict[str, dict[str, int]] = defaultdict(dict)
    for r in rows:
        if r.group is not None and not r.group.startswith(f"(no {group_col}) "):
            first[r.group].setdefault(r.split, r.line)
    lines = _Lines(name)
    for group, splits in first.items():
        if len(splits) > 1:
            a, b = splits["train"], splits["test"]
            lines.add(
                f"{group_col} in train and test",
                min(a, b),
                f"{name} lines {min(a, b)}, {max(a, b)}: {group_col} {group!r} has images in train (line {a}) and "
                f"test (line {b}) — test leakage: the model trains on the lesion it is tested on; put all rows "
                f"of {group_col} {group!r} in one split",
            )
    return lines.lines()


def _counter_text(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


def _example_class(classes: Counter[str]) -> str:
    for known in ("mel", "melanoma", "MEL"):
        if known in classes:
            return known
    return sorted(classes)[0] if classes else "mel"

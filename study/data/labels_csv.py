"""Labels-CSV datasets: read a CSV of image ids and labels and resolve every row to an image file.

`study.data` is the entry point (`DataSource`, `check_dataset`, `load_dataset`); this module only parses and
resolves the CSV, into rows (image path, split, label, group) plus problems and warnings, one line each
naming the CSV line and the fix. Decoding and every image check are `study.data.checks`'.

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
import io
import os
from collections import Counter, defaultdict
from pathlib import Path

from study.data.labels_rows import FileIndex, RowReader
from study.data.labels_table import (
    BENIGN_MALIGNANT_COLUMN,
    DIAGNOSIS_COLUMNS,
    GROUP_COLUMNS,
    IMAGE_COLUMNS,
    MAX_LISTED,
    SPLIT_COLUMN,
    SPLIT_VALUES,
    TARGET_COLUMN,
    TEST_FRACTION,
    Columns,
    CsvRow,
    CsvTable,
    Lines,
    default_images_dir,
)
from study.data.source import CLASSES, IMAGE_EXTENSIONS, counter_text

__all__ = ["read_labels_csv"]


def read_labels_csv(
    csv_path: str | Path,
    images: str | Path | None = None,
    malignant: tuple[str, ...] = (),
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
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
    table.images = _images_folder(path, images, table)
    records = _records(path, name, table)
    cols = _match_columns(name, records[0], malignant_keys, table) if records else None
    if cols is None:
        table.fatal = True
        return table
    table.columns = {"image": cols.image, "label": cols.label, "group": cols.group, "split": cols.split}
    if cols.split:
        table.split_rule = f"column {cols.split}"
    else:
        by = f"{cols.group} (images without one: the image)" if cols.group else "image"
        table.split_rule = f"hashed by {by}, test fraction {test_fraction:g}"
    rows_data = records[1:]
    if cols.label_kind == "unmapped":
        table.problems.append(_unmapped_diagnosis_problem(name, cols, rows_data))
    if cols.image is None or cols.label is None or cols.label_kind == "unmapped" or table.images is None:
        table.fatal = True
        return table
    if not rows_data:
        table.problems.append(f"{name}: the labels CSV has a header but no rows; add one row per image")
        return table
    files, list_problems = _list_images(table.images, extensions)
    table.problems += list_problems
    index = FileIndex(files)
    reader = RowReader(name, cols, malignant_keys, index, extensions, table.images, test_fraction)
    for line, cells in rows_data:
        reader.read(line, cells)
    _summarise(table, reader)
    return table


def _images_folder(path: Path, images: str | Path | None, table: CsvTable) -> Path | None:
    """The images folder (see the module docstring); None, with a problem, when a given folder is missing."""
    if images is None:
        return default_images_dir(path)
    images_dir = Path(images).expanduser()
    if not images_dir.is_absolute():
        images_dir = path.parent / images_dir
    if not images_dir.is_dir():
        table.problems.append(
            f"{images}: images folder does not exist (relative paths are relative to the CSV's folder: "
            f"{images_dir}); pass the folder that holds the images (data_images)"
        )
        return None
    return images_dir


def _records(path: Path, name: str, table: CsvTable) -> list[tuple[int, list[str]]] | None:
    """The CSV's records, header first; None, with a problem, when there is no file or no record in it."""
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        table.problems.append(f"{path}: labels CSV {what}; pass an existing .csv file or a dataset folder")
        return None
    target, folder = os.path.realpath(path), os.path.realpath(path.parent)
    if path.is_symlink() and not target.startswith(folder.rstrip(os.sep) + os.sep):
        # Not read: a problem quoting its header or cells would print a file that is not the user's data.
        table.problems.append(
            f"{path}: labels CSV is a symlink to a file outside its folder ({target}); not read, so nothing of "
            "it is printed: copy the CSV into the dataset folder"
        )
        return None
    records = _read_records(path, name, table)
    if records is None:
        return None
    if not records:
        table.problems.append(f"{name}: the labels CSV is empty; add a header line and one row per image")
        return None
    return records


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


def _listed(names: list[str]) -> str:
    return ", ".join(names[:MAX_LISTED]) + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")


def _match_columns(
    name: str, header: tuple[int, list[str]], malignant_keys: dict[str, str], table: CsvTable
) -> Columns | None:
    """Match the header's columns to roles; a column that cannot be matched is a problem. None when the header
    itself is unusable (one column of another separator, or doubled names)."""
    header_line, header_cells = header
    names = [h.strip().lower() for h in header_cells]
    if len(names) == 1 and any(d in header_cells[0] for d in ";\t|"):
        sep = next(d for d in ";\t|" if d in header_cells[0])
        table.problems.append(
            f"{name} line {header_line}: the header is one column {header_cells[0]!r}; the file seems to be "
            f"separated by {sep!r}: save it comma-separated"
        )
        return None
    doubled = sorted(h for h, n in Counter(names).items() if n > 1 and h)
    if doubled:
        table.problems.append(
            f"{name} line {header_line}: column(s) {', '.join(doubled)} appear more than once (names match in "
            "any capitalisation); rename or delete the extra copies"
        )
        return None
    cols = Columns(index={h: i for i, h in enumerate(names)}, line=header_line, width=len(names))
    found_text = ", ".join(repr(h.strip()) for h in header_cells)
    image_cols = cols.present(IMAGE_COLUMNS)
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
    table.problems += _match_label(name, cols, malignant_keys, found_text)
    group_cols = cols.present(GROUP_COLUMNS)
    cols.group = group_cols[0] if group_cols else None
    cols.split = SPLIT_COLUMN if SPLIT_COLUMN in cols.index else None
    cols.image = image_cols[0] if len(image_cols) == 1 else None
    return cols


def _match_label(name: str, cols: Columns, malignant_keys: dict[str, str], found_text: str) -> list[str]:
    """Set the label column, its kind and the cross-checked column on `cols`; returns the problems."""
    where = f"{name} line {cols.line}"
    diagnosis_cols = cols.present(DIAGNOSIS_COLUMNS)
    if malignant_keys:
        if len(diagnosis_cols) == 1:
            cols.label, cols.label_kind = diagnosis_cols[0], "diagnosis"
            return []
        if not diagnosis_cols:
            return [
                f"{where}: malignant classes were given ({', '.join(malignant_keys.values())}) "
                f"but there is no diagnosis column ({', '.join(DIAGNOSIS_COLUMNS)}) among the columns found "
                f"({found_text}); add that column, or give no malignant classes to use {TARGET_COLUMN} / "
                f"{BENIGN_MALIGNANT_COLUMN}"
            ]
        return [
            f"{where}: columns {' and '.join(diagnosis_cols)} could both be the "
            "diagnosis; keep one of them (rename or delete the other)"
        ]
    if TARGET_COLUMN in cols.index:
        cols.label, cols.label_kind = TARGET_COLUMN, "target"
        if BENIGN_MALIGNANT_COLUMN in cols.index:
            cols.check = BENIGN_MALIGNANT_COLUMN
    elif BENIGN_MALIGNANT_COLUMN in cols.index:
        cols.label, cols.label_kind = BENIGN_MALIGNANT_COLUMN, "benign_malignant"
    elif diagnosis_cols:
        cols.label, cols.label_kind = diagnosis_cols[0], "unmapped"
    else:
        return [
            f"{where}: no label column among the columns found ({found_text}); accepted: "
            f"{TARGET_COLUMN} (0/1), {BENIGN_MALIGNANT_COLUMN} (benign/malignant), or a diagnosis column "
            f"({', '.join(DIAGNOSIS_COLUMNS)}) with the malignant classes given (data_malignant)"
        ]
    return []


def _unmapped_diagnosis_problem(name: str, cols: Columns, rows_data: list[tuple[int, list[str]]]) -> str:
    """Labels would come from a diagnosis column but no class was named malignant: the problem lists the
    classes found."""
    col = cols.index[cols.label]
    classes = Counter(cells[col].strip() for _, cells in rows_data if len(cells) > col)
    classes.pop("", None)
    return (
        f"{name}: labels would come from the diagnosis column {cols.label} (classes: "
        f"{counter_text(classes)}), but no malignant classes were given; name them, e.g. data_malignant = "
        f'["{_example_class(classes)}"] in the study file or --malignant {_example_class(classes)} for '
        "study data check (which diagnoses count as malignant is never guessed)"
    )


def _example_class(classes: Counter[str]) -> str:
    for known in ("mel", "melanoma", "MEL"):
        if known in classes:
            return known
    return sorted(classes)[0] if classes else "mel"


def _summarise(table: CsvTable, reader: RowReader) -> None:
    """Fill `table` from the rows read: their lines, the checks over all rows, and the sorted rows."""
    name, cols, rows = reader.name, reader.cols, reader.rows
    table.problems += reader.problems.lines()
    table.warnings += reader.warns.lines()
    if cols.label_kind == "diagnosis":
        table.classes = {
            k: (n, "malignant" if k in reader.malignant_keys else "benign")
            for k, n in sorted(reader.diagnoses.items())
        }
        for key, given in reader.malignant_keys.items():
            if key not in reader.diagnoses:
                table.problems.append(
                    f"{name}: malignant class {given!r} does not occur in column {cols.label} (classes "
                    f"found: {counter_text(reader.diagnoses)}); fix data_malignant (classes match in any "
                    "capitalisation)"
                )
    if reader.own_group_lines:
        table.warnings.append(
            f"{name}: {len(reader.own_group_lines)} row(s) have an empty {cols.group} (lines "
            f"{_listed([str(n) for n in reader.own_group_lines])}); each of those images is its own group — "
            f"fill in {cols.group} where images share one"
        )
    if cols.split and cols.group:
        table.problems += _groups_across_splits(rows, name, cols.group)
    unused = sorted(reader.files.files - reader.named)
    if unused:
        shown = ", ".join(unused[:5]) + (", ..." if len(unused) > 5 else "")
        table.warnings.append(
            f"{reader.images_dir}: {len(unused)} image file(s) have no row in {name} and are not used, e.g. "
            f"{shown}; add rows for them or move them out of the images folder"
        )
    if not table.problems:
        fix = f"change the {cols.split} column" if cols.split else f"add a {SPLIT_COLUMN} column"
        for split in SPLIT_VALUES:
            for label, cls in enumerate(CLASSES):
                if not any(r.split == split and r.label == label for r in rows):
                    table.problems.append(
                        f"{name}: the {split} split has no {cls} images ({table.split_rule}); add rows or {fix}"
                    )
    table.rows = sorted(rows, key=lambda r: r.rel)


def _groups_across_splits(rows: list[CsvRow], name: str, group_col: str) -> list[str]:
    """One problem per group with rows in both train and test (test leakage)."""
    first: dict[str, dict[str, int]] = defaultdict(dict)
    for r in rows:
        if r.group is not None and not r.group.startswith(f"(no {group_col}) "):
            first[r.group].setdefault(r.split, r.line)
    lines = Lines(name)
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

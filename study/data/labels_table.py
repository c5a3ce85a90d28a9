"""What a labels CSV gives (see `study.data.labels_csv`): its column names, the usable rows (`CsvRow`) and the
table with its problems (`CsvTable`), the seed-independent hashed test split, and the matched columns."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BENIGN_MALIGNANT_COLUMN",
    "DIAGNOSIS_COLUMNS",
    "GROUP_COLUMNS",
    "IMAGE_COLUMNS",
    "MAX_LISTED",
    "SPLIT_COLUMN",
    "SPLIT_VALUES",
    "TARGET_COLUMN",
    "TEST_FRACTION",
    "Columns",
    "CsvRow",
    "CsvTable",
    "Lines",
    "default_images_dir",
    "hashed_test_split",
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
MAX_LISTED = 20  # line numbers / file names listed in a summary line


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


class Lines:
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
                shown = ", ".join(str(n) for n, _ in rest[:MAX_LISTED])
                more = " ..." if len(rest) > MAX_LISTED else ""
                out.append(
                    f"{self.name}: {len(rest)} more row(s) with the same problem ({kind}): lines {shown}{more}"
                )
        return out


@dataclass
class Columns:
    """The header's columns: index (lower-case name -> position), the column used for each role (None when
    absent or ambiguous), label_kind ("diagnosis", "target", "benign_malignant", "unmapped": a diagnosis
    column without malignant classes, or "" when no label column matched), check: `benign_malignant` when it
    is cross-checked against `target`; line: the header's line; width: its number of cells."""

    index: dict[str, int]
    line: int
    width: int
    image: str | None = None
    label: str | None = None
    label_kind: str = ""
    check: str | None = None
    group: str | None = None
    split: str | None = None

    def present(self, names: tuple[str, ...]) -> list[str]:
        return [n for n in names if n in self.index]

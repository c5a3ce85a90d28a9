"""What a dataset is: a folder or a labels CSV (`DataSource`), its split and class names, and `DataError`.

A dataset is given as a path (str/Path) or a `DataSource`, in one of two forms:

- a folder `ROOT/{train,test}/{benign,malignant}/*.{jpg,jpeg,png}`. Split and class folder names match in any
  capitalisation (`Train/`, `Benign/`); extensions are case-insensitive. Labels come only from the class
  folder name (0 = benign, 1 = malignant): a folder with any other name is a problem, never a guess. No
  groups.
- a labels CSV (`DataSource(path="labels.csv", images=..., malignant=...)`, or just the .csv path) with its
  images folder: columns, label rules, groups (`lesion_id`/`patient_id`) and the seed-independent hashed test
  split are described in `study.data.labels_csv`, which parses and resolves the CSV.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CLASSES",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "DataError",
    "DataSource",
    "as_source",
    "counter_text",
    "format_problems",
]

SPLITS = ("train", "test")
CLASSES = ("benign", "malignant")  # index = label
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class DataError(ValueError):
    """A dataset that cannot be used. `problems` holds one line per problem, each naming the file and the fix.

    Pass the list of problem lines (the message is built from them), or one ready-made message string."""

    def __init__(self, problems: list[str] | str, root: str | Path | None = None):
        if isinstance(problems, str):
            self.problems = [problems]
            super().__init__(problems)
            return
        self.problems = list(problems)
        where = f"dataset {root}" if root is not None else "dataset"
        n = len(self.problems)
        super().__init__(f"{where} is not usable ({n} problem(s)):\n{format_problems(self.problems)}")


def format_problems(lines: list[str]) -> str:
    """One line per problem (or warning), indented with a dash, for printing. Control characters (a newline
    in a file name, say) are escaped, so that one problem never prints as two lines."""
    return "\n".join(f"  - {_printable(line)}" for line in lines)


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


@dataclass(frozen=True)
class DataSource:
    """Where a dataset is. path: a dataset folder, or a labels `.csv` file. For a CSV only: images, the folder
    holding the images (relative: to the CSV's folder; default `<csv folder>/images` when it exists, else the
    CSV's folder), and malignant, the diagnosis classes counted as malignant when labels come from a `dx` /
    `diagnosis` column (e.g. ("mel",); matched in any capitalisation). See `study.data.labels_csv`.

    The trial config maps onto it: `DataSource(trial.data_path, trial.data_images, trial.data_malignant)`.
    Giving images or malignant with a folder is a problem (the class folders give the labels)."""

    path: str
    images: str | None = None
    malignant: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.fspath(self.path))
        if self.images is not None:
            object.__setattr__(self, "images", os.fspath(self.images))
        malignant = (self.malignant,) if isinstance(self.malignant, str) else tuple(self.malignant or ())
        object.__setattr__(self, "malignant", tuple(str(m) for m in malignant))

    @property
    def is_csv(self) -> bool:
        """A `.csv` path (any capitalisation) that is not a folder."""
        p = Path(self.path)
        return p.suffix.lower() == ".csv" and not p.is_dir()


def as_source(source: str | os.PathLike | DataSource) -> DataSource:
    """A path or a `DataSource`, as a `DataSource`; TypeError for anything else."""
    if isinstance(source, DataSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        return DataSource(source)
    raise TypeError(f"dataset: expected a path or a DataSource, got {type(source).__name__}")


def counter_text(counter: dict[str, int]) -> str:
    """`key count` pairs in key order, for report lines ("none" when empty)."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"

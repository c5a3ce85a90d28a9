"""What files a dataset holds, from directory listings (folder) or the parsed labels CSV: no image is read.

`resolve` gives every image's entry (path, split, label, group) plus the problems and warnings of the layout
itself, including whether the training images of each class can be split into training and validation.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.data.labels_csv import read_labels_csv
from study.data.labels_table import CsvTable
from study.data.source import CLASSES, IMAGE_EXTENSIONS, SPLITS, DataSource

__all__ = ["Entry", "Listing", "Resolved", "resolve"]


@dataclass(frozen=True)
class Entry:
    rel: str  # relative to root (a CSV's images folder), POSIX separators, on-disk names
    split: str  # canonical split name
    label: int
    group: str | None = None  # labels CSV with a group column only
    where: str = ""  # labels CSV: "labels.csv line N", shown after the path in every line about the file

    @property
    def name(self) -> str:
        """How lines about this file name it: the path, and for a CSV row its line."""
        return f"{self.rel} ({self.where})" if self.where else self.rel


@dataclass
class Listing:
    entries: list[Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _list_dir(path: Path, rel: str, listing: Listing) -> list[os.DirEntry] | None:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except PermissionError:
        listing.problems.append(f"{rel or '.'}/: cannot list folder (permission denied); fix with chmod a+rx")
    except OSError as e:
        listing.problems.append(f"{rel or '.'}/: cannot list folder ({type(e).__name__}: {e})")
    return None


def _kind(entry: os.DirEntry) -> str:
    """'dir', 'file', 'broken' (dangling or looping symlink) or 'other' (socket, fifo, ...)."""
    try:
        if entry.is_dir():
            return "dir"
        if entry.is_file():
            return "file"
    except OSError:
        return "broken"
    return "broken" if entry.is_symlink() else "other"


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _match_folders(
    entries: list[os.DirEntry],
    allowed: tuple[str, ...],
    parent_rel: str,
    level: str,
    listing: Listing,
    not_folders: set[str] | None = None,
) -> dict[str, str]:
    """Map canonical names in `allowed` to the folder names found; report unknown or doubled folders, and
    entries with an allowed name that are not folders (their canonical names are added to `not_folders`, so
    that the caller does not also call the folder missing)."""
    found: dict[str, list[str]] = defaultdict(list)
    for e in entries:
        if e.name.startswith("."):
            listing.ignored.append(_join(parent_rel, e.name))
            continue
        kind = _kind(e)
        rel = _join(parent_rel, e.name)
        if kind != "dir" and e.name.lower() in allowed:
            if not_folders is not None:
                not_folders.add(e.name.lower())
            if kind == "broken":
                listing.problems.append(
                    f"{rel}: broken or looping symlink where the {e.name.lower()}/ {level} folder goes; remove "
                    "it and create the folder, or point it at a real folder"
                )
                continue
            what = "a file" if kind == "file" else "a special file (socket, pipe or device)"
            create = (
                f"{rel}/benign/ and {rel}/malignant/ with their images"
                if level == "split"
                else f"the class folder {rel}/ with its images"
            )
            listing.problems.append(f"{rel}: is {what}, not a folder; move it away and create {create}")
        elif kind == "dir" and e.name.lower() in allowed:
            found[e.name.lower()].append(e.name)
        elif kind == "dir":
            allowed_text = ", ".join(f"{a}/" for a in allowed)
            hint = ""
            if level == "class":
                hint = (
                    " (labels are never guessed: if it holds melanoma images rename it malignant/, "
                    "otherwise benign/)"
                )
            listing.problems.append(
                f"{rel}/: unexpected folder at the {level} level; allowed names are {allowed_text} "
                f"(any capitalisation) — rename or move it{hint}"
            )
        elif kind == "broken":
            listing.problems.append(f"{rel}: broken or looping symlink; remove it or point it at a real file")
        elif kind == "file" and _is_image_name(e.name):
            where = "the dataset root" if level == "split" else "a split folder"
            listing.problems.append(
                f"{rel}: image file directly in {where} has no class label; move it into a "
                f"{'<split>/' if level == 'split' else ''}benign/ or malignant/ folder, or remove it"
            )
        elif kind == "file" and level == "split":
            listing.ignored.append(rel)  # README, licence, synth.json: not data
        else:
            listing.warnings.append(f"{rel}: ignored (not an image and not in a class folder)")
    out = {}
    for canonical, names in found.items():
        if len(names) > 1:
            variants = _join(parent_rel, "{" + ",".join(names) + "}")
            listing.problems.append(
                f"{variants}/: {len(names)} folders for '{canonical}' differ only in capitalisation; "
                "merge them"
            )
        out[canonical] = names[0]
    return out


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _discover(root: Path) -> Listing:
    listing = Listing()
    if not root.exists():
        listing.problems.append(
            f"{root}: dataset folder does not exist; pass the folder that holds train/ and test/, or a "
            "labels .csv file"
        )
        return listing
    if not root.is_dir():
        listing.problems.append(
            f"{root}: is not a folder; pass the folder that holds train/ and test/, or a labels .csv file"
        )
        return listing
    top = _list_dir(root, "", listing)
    if top is None:
        return listing
    split_files: set[str] = set()
    splits = _match_folders(top, SPLITS, "", "split", listing, split_files)
    for split in SPLITS:
        if split not in splits:
            if split in split_files:
                continue  # a file has its name: already a problem
            listing.problems.append(
                f"{split}/: missing split folder; create {root}/{split}/benign/ and {root}/{split}/malignant/"
            )
            continue
        split_rel = splits[split]
        children = _list_dir(root / split_rel, split_rel, listing)
        if children is None:
            continue
        class_files: set[str] = set()
        classes = _match_folders(children, CLASSES, split_rel, "class", listing, class_files)
        for label, cls in enumerate(CLASSES):
            if cls not in classes:
                if cls in class_files:
                    continue  # a file has its name: already a problem
                listing.problems.append(f"{split_rel}/{cls}/: missing class folder; create it and add images")
                continue
            class_rel = f"{split_rel}/{classes[cls]}"
            files = _list_dir(root / class_rel, class_rel, listing)
            if files is None:
                continue
            n_images = 0
            for e in files:
                rel = f"{class_rel}/{e.name}"
                if e.name.startswith("."):
                    listing.ignored.append(rel)  # .DS_Store, AppleDouble ._x.jpg: never image data
                    continue
                kind = _kind(e)
                if kind == "file" and _is_image_name(e.name):
                    listing.entries.append(Entry(rel, split, label))
                    n_images += 1
                elif kind == "file":
                    listing.warnings.append(
                        f"{rel}: ignored, extension is not one of {', '.join(IMAGE_EXTENSIONS)}; if it is an "
                        "image convert it to PNG, otherwise move it out of the class folder"
                    )
                elif kind == "dir":
                    # Not followed: nested folders (and symlink loops) are outside the layout.
                    listing.problems.append(
                        f"{rel}/: nested folder inside a class folder is not read; move its images up into "
                        f"{class_rel}/ or remove it"
                    )
                elif kind == "broken":
                    listing.problems.append(
                        f"{rel}: broken or looping symlink; remove it or point it at a real file"
                    )
                else:
                    listing.warnings.append(f"{rel}: ignored (not a regular file)")
            if n_images == 0:
                listing.problems.append(
                    f"{class_rel}/: class folder holds no {'/'.join(IMAGE_EXTENSIONS)} images; add images"
                )
    listing.entries.sort(key=lambda e: e.rel)
    listing.problems += _validation_split_problems(listing.entries)
    return listing


def _validation_split_problems(
    entries: list[Entry], csv: str = "", group_col: str | None = None
) -> list[str]:
    """A problem per class whose training images cannot be split into training and validation.

    `stratified_split` puts at least one image (group) of each class into validation and keeps at least one
    in training, which takes two images of the class in train (two groups when splits keep groups whole):
    with one, validation would silently hold no image of that class. csv: the labels CSV's name (empty for
    a folder); group_col: its group column (None: no groups)."""
    problems = []
    train = [e for e in entries if e.split == "train"]
    for label, cls in enumerate(CLASSES):
        own = [e for e in train if e.label == label]
        groups = sorted({str(e.group) for e in own}) if group_col else []
        why = (
            f"the validation split needs at least 2 (one to train on, one to validate), so validation would "
            f"hold no {cls} image"
        )
        if group_col and len(groups) == 1:
            problems.append(
                f"{csv}: every {cls} image in train ({len(own)}) has {group_col} {groups[0]}; the validation "
                f"split keeps each {group_col} whole and needs {cls} images of at least 2, so validation would "
                f"hold no {cls} image (or training none); add {cls} images of other {group_col}s to train"
            )
        elif not group_col and len(own) == 1:
            if csv:
                problems.append(
                    f"{csv}: train has only 1 {cls} image ({own[0].name}); {why}; add {cls} rows to train"
                )
            else:
                folder = own[0].rel.rsplit("/", 1)[0]
                problems.append(
                    f"{folder}/: only 1 {cls} image in train ({own[0].rel}); {why}; add {cls} images to "
                    f"{folder}/"
                )
    return problems


def _validation_split_warnings(entries: list[Entry], csv: str, group_col: str | None) -> list[str]:
    """Grouped data: `stratified_split` takes whole groups per stratum (a group's largest label): at least one
    of a stratum with 2 groups or more, none of a stratum with one. With fewer than 2 benign-only groups in
    train, validation's benign images come only from the mixed groups it draws from the malignant stratum;
    when that stratum also has groups without a benign image, some seeds draw only those and validation
    holds no benign image (validation AUC undefined). Said once; a class in one group only is a problem
    (`_validation_split_problems`)."""
    if not group_col:
        return []
    labels_of: dict[str, set[int]] = defaultdict(set)
    for e in entries:
        if e.split == "train":
            labels_of[str(e.group)].add(e.label)
    benign_groups = [g for g, labels in labels_of.items() if 0 in labels]
    benign_only = sorted(g for g in benign_groups if labels_of[g] == {0})
    malignant_only = [g for g, labels in labels_of.items() if labels == {1}]
    if len(benign_groups) < 2 or len(benign_only) >= 2 or not malignant_only:
        return []
    which = f" ({benign_only[0]})" if benign_only else ""
    return [
        f"{csv}: {len(benign_only)} {group_col} in train{which} with only benign images; the validation split "
        f"takes whole {group_col}s and none from a stratum with fewer than 2, so its benign images come only "
        f"from {group_col}s that also hold malignant images, and for some seeds there can be none (validation "
        f"AUC undefined); add benign-only {group_col}s to train"
    ]


@dataclass
class Resolved:
    """A source's listing: entries to read under `read_root`; for a CSV its parsed table."""

    source: DataSource
    listing: Listing
    read_root: Path
    table: CsvTable | None = None  # None: a folder dataset

    @property
    def has_groups(self) -> bool:
        return self.table is not None and self.table.has_groups

    def info(self) -> dict[str, Any]:
        return self.table.info() if self.table is not None else {"kind": "folder"}


def resolve(source: DataSource) -> Resolved:
    """Cheap: directory listings and, for a CSV, parsing it (no image is read)."""
    root = Path(source.path)
    if not source.is_csv:
        listing = _discover(root)
        if source.images is not None or source.malignant:
            given = ", ".join(
                n
                for n, v in (
                    ("images (data_images)", source.images),
                    ("malignant (data_malignant)", source.malignant),
                )
                if v
            )
            listing.problems.append(
                f"{root}: {given} apply only to a labels CSV, but this is a dataset folder whose class folders "
                "give the labels; remove them, or pass the labels .csv file"
            )
        return Resolved(source, listing, root)
    table = read_labels_csv(root, source.images, source.malignant, IMAGE_EXTENSIONS)
    where = table.csv.name
    entries = [Entry(r.rel, r.split, r.label, r.group, f"{where} line {r.line}") for r in table.rows]
    group_col = table.columns.get("group") if table.has_groups else None
    problems = list(table.problems)
    if not table.fatal:
        problems += _validation_split_problems(entries, where, group_col)
    warns = list(table.warnings) + _validation_split_warnings(entries, where, group_col)
    listing = Listing(entries=entries, problems=problems, warnings=warns)
    return Resolved(source, listing, table.images or root.parent, table)

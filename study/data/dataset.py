"""Datasets: discovery, checks, decode + resize once into a cache, fingerprint, stratified (grouped) splits.

A dataset is given as a path (str/Path) or a `DataSource`, in one of two forms:

- a folder `ROOT/{train,test}/{benign,malignant}/*.{jpg,jpeg,png}`. Split and class folder names match in any
  capitalisation (`Train/`, `Benign/`); extensions are case-insensitive. Labels come only from the class
  folder name (0 = benign, 1 = malignant): a folder with any other name is a problem, never a guess. No
  groups.
- a labels CSV (`DataSource(path="labels.csv", images=..., malignant=...)`, or just the .csv path) with its
  images folder: columns, label rules, groups (`lesion_id`/`patient_id`) and the seed-independent hashed test
  split are described in `study.data.labels_csv`, which parses and resolves the CSV; everything else is here.

`check_dataset` lists everything wrong with a dataset (problems make it unusable; warnings do not); the image
checks are the same for both forms. `load_dataset` runs the same checks, decodes every image once and caches
the arrays in an `.npz` keyed by the content fingerprint and image size; for a CSV the fingerprint also covers
every image's label, group and split. `stratified_split` (validation) and `label_subset` (label-efficiency)
take optional groups and then keep each group whole. No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from study.data import labels_csv

__all__ = [
    "CLASSES",
    "IMAGE_EXTENSIONS",
    "NEAR_DUPLICATE_MAX_DISTANCE",
    "SMALL_IMAGE_PX",
    "SPLITS",
    "CheckReport",
    "DataError",
    "DataSource",
    "DecodedData",
    "Split",
    "check_dataset",
    "default_cache_dir",
    "fingerprint",
    "format_problems",
    "label_subset",
    "load_dataset",
    "stratified_split",
]

SPLITS = ("train", "test")
CLASSES = ("benign", "malignant")  # index = label
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Perceptual hash: imagehash.phash with hash_size=16 (256 bits). Measured on the 1,398-image ISIC sample:
# re-encoded, recoloured or re-cropped copies of one photo lie at Hamming distance 2-34, the closest distinct
# lesions (sharing a dermoscope's frame) at 42 and above; synthetic lesions at 52 and above. The default
# 64-bit hash cannot separate these (a recoloured copy at 6, distinct synthetic lesions at 4). Pairs at
# distance <= 38 of 256 bits are reported as near-duplicates.
NEAR_DUPLICATE_HASH_SIZE = 16
NEAR_DUPLICATE_MAX_DISTANCE = 38
SMALL_IMAGE_PX = 32  # images with a side below this are upsampled a lot: warned about
MIN_IMAGE_SIZE = 16
# Bump when decoding or resizing changes, so stale caches are not reused.
LOADER_VERSION = 1
_MAX_EXAMPLES = 5  # example pairs shown per duplicate warning
_FORMAT_MAX_WARNINGS = 50  # format() shows at most this many warning lines
_RESAMPLING = Image.Resampling.LANCZOS
_FORMATS_BY_EXT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


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


def _as_source(source: str | os.PathLike | DataSource) -> DataSource:
    if isinstance(source, DataSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        return DataSource(source)
    raise TypeError(f"dataset: expected a path or a DataSource, got {type(source).__name__}")


@dataclass
class Split:
    """One split. images: uint8 (N, S, S, 3) RGB; labels: int64 (N,), 0 = benign, 1 = malignant;
    paths: N file paths relative to the dataset folder (for a labels CSV: to its images folder), POSIX
    separators, in sorted order; groups: str (N,) group ids (lesion or patient) of a labels CSV with a group
    column, else None (every image its own group)."""

    images: np.ndarray
    labels: np.ndarray
    paths: list[str]
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class DecodedData:
    """A decoded dataset. root: the dataset folder or labels CSV; notes: one line per conversion performed
    (mode, bit depth, crop, upsampling); warnings: every warning of the dataset check (conversions included)."""

    train: Split
    test: Split
    fingerprint: str
    root: str
    image_size: int
    notes: list[str]
    warnings: list[str] = field(default_factory=list)


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
                f"images); modes {_counter_text(s['modes'])}; formats {_counter_text(s['formats'])}"
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


def _counter_text(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


# ----------------------------------------------------------------------------------------------------------
# Discovery (cheap: directory listings only)


@dataclass(frozen=True)
class _Entry:
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
class _Listing:
    entries: list[_Entry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _list_dir(path: Path, rel: str, listing: _Listing) -> list[os.DirEntry] | None:
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
    listing: _Listing,
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


def _discover(root: Path) -> _Listing:
    listing = _Listing()
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
                    listing.entries.append(_Entry(rel, split, label))
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
    entries: list[_Entry], csv: str = "", group_col: str | None = None
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


def _validation_split_warnings(entries: list[_Entry], csv: str, group_col: str | None) -> list[str]:
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
class _Resolved:
    """A source's listing: entries to read under `read_root`; for a CSV its parsed table."""

    source: DataSource
    listing: _Listing
    read_root: Path
    table: labels_csv.CsvTable | None = None  # None: a folder dataset

    @property
    def has_groups(self) -> bool:
        return self.table is not None and self.table.has_groups

    def info(self) -> dict[str, Any]:
        return self.table.info() if self.table is not None else {"kind": "folder"}


def _resolve(source: DataSource) -> _Resolved:
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
        return _Resolved(source, listing, root)
    table = labels_csv.read_labels_csv(root, source.images, source.malignant, IMAGE_EXTENSIONS)
    where = table.csv.name
    entries = [_Entry(r.rel, r.split, r.label, r.group, f"{where} line {r.line}") for r in table.rows]
    group_col = table.columns.get("group") if table.has_groups else None
    problems = list(table.problems)
    if not table.fatal:
        problems += _validation_split_problems(entries, where, group_col)
    warns = list(table.warnings) + _validation_split_warnings(entries, where, group_col)
    listing = _Listing(entries=entries, problems=problems, warnings=warns)
    return _Resolved(source, listing, table.images or root.parent, table)


# ----------------------------------------------------------------------------------------------------------
# Fingerprint


def _file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex of the bytes); raises OSError when unreadable."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return path.stat().st_size, digest


_UNREADABLE = "unreadable"


def _fingerprint_of(records: list[tuple[str, int, str]]) -> str:
    h = hashlib.sha256()
    for rel, size, digest in sorted(records):
        h.update(f"{rel}\t{size}\t{digest}\n".encode())
    return h.hexdigest()[:16]


_CSV_FINGERPRINT_TAG = b"labels-csv v1\n"


def _fingerprint_csv(records: list[tuple[_Entry, int, str]]) -> str:
    """Over each image's path, size, bytes' sha256, split, label and group (not the CSV's other columns,
    its row order or its formatting)."""
    h = hashlib.sha256(_CSV_FINGERPRINT_TAG)
    for e, size, digest in sorted(records, key=lambda r: r[0].rel):
        h.update(json.dumps([e.rel, size, digest, e.split, e.label, e.group]).encode() + b"\n")
    return h.hexdigest()[:16]


def _fingerprint_records(res: _Resolved, records: list[tuple[_Entry, int, str]]) -> str:
    if (
        res.table is None
    ):  # folders: labels are implied by the paths (the value is unchanged from before CSVs)
        return _fingerprint_of([(e.rel, size, digest) for e, size, digest in records])
    return _fingerprint_csv(records)


def fingerprint(source: str | Path | DataSource) -> str:
    """16-hex-digit sha256 of a dataset's content, which keys the decoded and pretext caches.

    Folder: over the sorted relative paths, sizes and sha256 of the bytes of every image file the loader
    would read (other files do not count). Labels CSV: over every usable row's image path (relative to the
    images folder), size, sha256 of its bytes, split, label and group — relabelling, regrouping or moving a row
    to the other split changes it; the CSV's other columns and row order do not. Changes when any byte, name
    or file changes. Raises DataError when the folder or the CSV does not exist, or the CSV cannot be read
    (its columns cannot be matched)."""
    src = _as_source(source)
    root = Path(src.path)
    if not src.is_csv and not root.is_dir():
        raise DataError([f"{root}: dataset folder does not exist or is not a folder"], root)
    res = _resolve(src)
    if res.table is not None and res.table.fatal:
        raise DataError(res.table.problems, root)
    return _fingerprint_entries(res)


def _fingerprint_entries(res: _Resolved) -> str:
    records = []
    for e in res.listing.entries:
        try:
            records.append((e, *_file_digest(res.read_root / e.rel)))
        except OSError:
            records.append((e, -1, _UNREADABLE))
    return _fingerprint_records(res, records)


# ----------------------------------------------------------------------------------------------------------
# One file: read, verify, decode, convert, hash, resize


@dataclass
class _FileResult:
    entry: _Entry
    nbytes: int = -1  # -1: unreadable
    digest: str | None = None  # sha256 hex of the bytes; None when unreadable
    problem: str | None = None
    conversions: list[str] = field(default_factory=list)
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    phash: np.ndarray | None = None  # uint64 (NEAR_DUPLICATE_HASH_SIZE**2 / 64,) packed bits
    array: np.ndarray | None = None


def _content_kind(data: bytes) -> str:
    """What a file PIL cannot read holds, in words that reveal none of its content (the file may be a link
    to anything on the machine): a text file or bytes in no known format, and its size."""
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A character cut by the 512-byte window is still text; invalid bytes earlier are not.
        text = (
            head[: e.start].decode("utf-8")
            if e.start >= len(head) - 3 and e.reason.startswith("unexp")
            else ""
        )
    if text and all(c.isprintable() or c.isspace() for c in text):
        return f"a text file, {len(data)} bytes"
    return f"{len(data)} bytes in no image format PIL reads"


def _to_rgb(im: Image.Image, rel: str, bits16: bool) -> tuple[Image.Image, list[str]]:
    """Convert to 8-bit RGB. Returns (image, conversion notes); raises ValueError for modes not converted."""
    mode = im.mode
    if mode == "RGB":
        if bits16:
            return im, [f"{rel}: 16-bit RGB converted to 8-bit RGB (PIL keeps the high byte of each sample)"]
        return im, []
    if mode in ("1", "L"):
        note = f"{rel}: grayscale (mode {mode}) converted to RGB by repeating the channel"
        return im.convert("RGB"), [note]
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.int64)
        if a.min() < 0 or a.max() > 65535:
            raise ValueError(
                f"32-bit integer pixel values outside 0..65535 (mode {mode}); export it as 8-bit RGB"
            )
        gray = np.rint(a / 257.0).astype(np.uint8)  # 65535 -> 255: full 16-bit range onto 8 bits
        note = f"{rel}: 16-bit grayscale (mode {mode}) converted to 8-bit RGB (scaled 0..65535 -> 0..255)"
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2)), [note]
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        if (alpha == 1.0).all():
            how = "alpha channel fully opaque, dropped"
        else:
            how = f"composited on black ({float((alpha < 1.0).mean()):.0%} of pixels not fully opaque)"
        rgb = Image.fromarray(np.rint(rgba[..., :3] * alpha).astype(np.uint8))
        return rgb, [f"{rel}: mode {mode} with transparency converted to RGB: {how}"]
    if mode in ("P", "CMYK", "YCbCr"):
        what = {"P": "palette", "CMYK": "CMYK (no colour profile applied)", "YCbCr": "YCbCr"}[mode]
        return im.convert("RGB"), [f"{rel}: {what} image converted to RGB"]
    raise ValueError(f"unsupported colour mode {mode}; export it as 8-bit RGB JPEG or PNG")


def _inspect_file(root: Path, entry: _Entry, image_size: int | None) -> _FileResult:
    """Read, verify and decode one file; with image_size, also centre-crop to square and resize.

    Never raises for bad files: the reason goes to `problem`."""
    res = _FileResult(entry)
    rel = entry.name  # how messages name the file
    try:
        data = (root / entry.rel).read_bytes()
    except PermissionError:
        res.problem = f"{rel}: cannot read (permission denied); fix with chmod a+r"
        return res
    except OSError as e:
        res.problem = f"{rel}: cannot read ({type(e).__name__}: {e}); re-copy or remove it"
        return res
    res.nbytes = len(data)
    res.digest = hashlib.sha256(data).hexdigest()
    if not data:
        res.problem = f"{rel}: empty file (0 bytes); re-copy it or delete it"
        return res
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; both are refused here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()  # structure and checksums (PNG CRCs) without decoding
            im = Image.open(io.BytesIO(data))
            res.width, res.height = im.size
            res.mode, res.format = im.mode, im.format or "?"
            bits16 = any(";16" in str(t.args) for t in getattr(im, "tile", []) or [])
            n_frames = getattr(im, "n_frames", 1)
            im.load()  # decodes all data: raises on truncation (LOAD_TRUNCATED_IMAGES stays False)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        res.problem = (
            f"{rel}: image too large for PIL's decompression-bomb limit ({e}); downscale it (e.g. to at most "
            "4096 px a side) before use"
        )
        return res
    except UnidentifiedImageError:
        res.problem = f"{rel}: not an image PIL can read ({_content_kind(data)}); replace it with a JPEG/PNG or remove it"
        return res
    except Exception as e:  # noqa: BLE001 — any decoder failure is a per-file problem, not a crash
        res.problem = f"{rel}: corrupt or truncated image ({type(e).__name__}: {e}); re-copy it or remove it"
        return res

    notes = res.conversions
    ext = os.path.splitext(entry.rel)[1].lower()
    if res.format != _FORMATS_BY_EXT[ext]:
        notes.append(f"{rel}: holds {res.format} data despite its {ext} extension; decoded as {res.format}")
    if n_frames > 1:
        notes.append(f"{rel}: has {n_frames} frames; only the first is used")
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception as e:  # noqa: BLE001 — a damaged EXIF block should not make the pixels unusable
        orientation = 1
        notes.append(f"{rel}: EXIF block unreadable ({type(e).__name__}); orientation not applied")
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        notes.append(f"{rel}: EXIF orientation {orientation} applied (image rotated/flipped upright)")
    try:
        rgb, conv = _to_rgb(im, rel, bits16)
    except ValueError as e:
        res.problem = f"{rel}: {e}"
        return res
    notes.extend(conv)
    if min(rgb.size) < SMALL_IMAGE_PX:
        notes.append(
            f"{rel}: very small image ({res.width}x{res.height} < {SMALL_IMAGE_PX} px); upsampled when loaded"
        )
    bits = imagehash.phash(rgb, hash_size=NEAR_DUPLICATE_HASH_SIZE).hash.reshape(-1)
    res.phash = np.packbits(bits).view(">u8").astype(np.uint64)
    if image_size is not None:
        # Centre crop to the largest square, then Lanczos: keeps the lesion's shape (asymmetry is a feature).
        fitted = ImageOps.fit(rgb, (image_size, image_size), method=_RESAMPLING, centering=(0.5, 0.5))
        res.array = np.asarray(fitted, dtype=np.uint8)
    return res


# ----------------------------------------------------------------------------------------------------------
# Duplicates


def _hamming_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """All pairs (i < j, distance) of hashes uint64 (N, words) within max_distance bits, chunked so
    memory stays bounded for ~10k images."""
    out = []
    n, words = hashes.shape
    chunk = max(1, 2**22 // max(n * words, 1))
    for start in range(0, n, chunk):
        block = hashes[start : start + chunk, None, :] ^ hashes[None, :, :]
        dist = np.bitwise_count(block).sum(axis=2, dtype=np.int64)
        ii, jj = np.nonzero(dist <= max_distance)
        ii += start
        keep = ii < jj
        out.extend(zip(ii[keep].tolist(), jj[keep].tolist(), dist[ii[keep] - start, jj[keep]].tolist()))
    return sorted(out)


def _duplicate_findings(results: list[_FileResult]) -> tuple[list[str], list[str], dict[str, Any]]:
    """(problems, warnings, duplicates dict) from exact (sha256) and near (phash) duplicates."""
    problems: list[str] = []
    warns: list[str] = []
    by_digest: dict[str, list[_FileResult]] = defaultdict(list)
    for r in results:
        if r.digest is not None and r.nbytes > 0:
            by_digest[r.digest].append(r)
    exact_groups = []
    for group in by_digest.values():
        if len(group) < 2:
            continue
        exact_groups.append([r.entry.rel for r in group])
        first = group[0].entry
        split_first: dict[str, Any] = {}  # labels are compared within a split, leakage across splits
        for other in group:
            o = other.entry
            ref = split_first.setdefault(o.split, o)
            if o.split != first.split:
                test, train = (o, first) if o.split == "test" else (first, o)
                problems.append(
                    f"{test.name}: byte-identical to {train.name} (train/test leakage); remove it from test or "
                    "from train"
                )
            if ref is o:
                continue
            if o.label != ref.label:
                problems.append(
                    f"{o.name}: byte-identical to {ref.name} but labelled {CLASSES[o.label]} vs "
                    f"{CLASSES[ref.label]} (conflicting labels); keep the copy with the right label, "
                    "delete the other"
                )
            else:
                warns.append(
                    f"{o.name}: byte-identical to {ref.name} (same label, counted twice); delete one copy"
                )

    hashed = [r for r in results if r.phash is not None]
    words = NEAR_DUPLICATE_HASH_SIZE**2 // 64
    hashes = np.array([r.phash for r in hashed], dtype=np.uint64).reshape(len(hashed), words)
    near = []
    leak_pairs, conflict_pairs, same_pairs = [], [], []
    for i, j, d in _hamming_pairs(hashes, NEAR_DUPLICATE_MAX_DISTANCE):
        a, b = hashed[i], hashed[j]
        if a.digest == b.digest:
            continue  # already reported as exact
        near.append({"a": a.entry.rel, "b": b.entry.rel, "distance": d})
        if a.entry.split != b.entry.split:
            test, train = (a, b) if a.entry.split == "test" else (b, a)
            leak_pairs.append((test.entry.name, train.entry.name, d))
        elif a.entry.label != b.entry.label:
            conflict_pairs.append((a.entry.name, b.entry.name, d))
        elif a.entry.group is None or a.entry.group != b.entry.group:
            # Images of one group (a lesion photographed twice) are expected to look alike, and grouped
            # splits keep them together: not warned about.
            same_pairs.append((a.entry.name, b.entry.name, d))
    bits = NEAR_DUPLICATE_HASH_SIZE**2
    criterion = f"phash Hamming distance <= {NEAR_DUPLICATE_MAX_DISTANCE} of {bits} bits"
    if leak_pairs:
        n_test = len({p[0] for p in leak_pairs})
        warns.append(
            f"{n_test} test image(s) have a near-duplicate in train (possible leakage; {criterion}), "
            f"e.g. {_pairs_text(leak_pairs)}; inspect them and remove one copy of true duplicates"
        )
    if conflict_pairs:
        warns.append(
            f"{len(conflict_pairs)} near-duplicate pair(s) within a split carry different labels (possible "
            f"label noise; {criterion}), e.g. {_pairs_text(conflict_pairs)}; "
            "inspect them"
        )
    if same_pairs:
        warns.append(
            f"{len(same_pairs)} near-duplicate pair(s) within a split with the same label (in train, a "
            "validation split may hold one copy while training sees the other), e.g. "
            f"{_pairs_text(same_pairs)}; inspect them"
        )
    dup = {
        "exact": exact_groups,
        "near": near,
        "near_max_distance": NEAR_DUPLICATE_MAX_DISTANCE,
        "hash_bits": NEAR_DUPLICATE_HASH_SIZE**2,
    }
    return problems, warns, dup


def _pairs_text(pairs: list[tuple[str, str, int]]) -> str:
    shown = "; ".join(f"{a} ~ {b} (d={d})" for a, b, d in pairs[:_MAX_EXAMPLES])
    return shown + (f"; and {len(pairs) - _MAX_EXAMPLES} more" if len(pairs) > _MAX_EXAMPLES else "")


# ----------------------------------------------------------------------------------------------------------
# Check


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _outside_links(res: _Resolved) -> list[tuple[str, str, bool]]:
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


def _outside_link_warnings(res: _Resolved) -> list[str]:
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
    shown = "; ".join(f"{rel} -> {target}" for rel, target, _ in links[:_MAX_EXAMPLES])
    more = f"; and {len(links) - _MAX_EXAMPLES} more" if len(links) > _MAX_EXAMPLES else ""
    return [
        f"{len(links)} symlinks lead outside {where} and are read as data: {shown}{more}; copy their targets "
        f"into {where}, or remove the links that do not belong there"
    ]


def _scan(res: _Resolved, image_size: int | None) -> tuple[CheckReport, list[_FileResult]]:
    listing = res.listing
    results = [_inspect_file(res.read_root, e, image_size) for e in listing.entries]
    problems = list(listing.problems) + [r.problem for r in results if r.problem]
    conversions = [note for r in results if r.problem is None for note in r.conversions]
    dup_problems, dup_warnings, duplicates = _duplicate_findings(results)
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
    records = [(r.entry, r.nbytes, r.digest or _UNREADABLE) for r in results]
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
        fingerprint=_fingerprint_records(res, records),
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
    report, _ = _scan(_resolve(_as_source(source)), None)
    return report


# ----------------------------------------------------------------------------------------------------------
# Load with cache


def default_cache_dir() -> Path:
    """$STUDY_CACHE_DIR, else ~/.cache/melanoma-ssl-study."""
    env = os.environ.get("STUDY_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "melanoma-ssl-study"


def _cache_path(cache_dir: Path, fp: str, image_size: int) -> Path:
    return cache_dir / "decoded" / f"{fp}-{image_size}px-v{LOADER_VERSION}.npz"


def _split_from(results: list[_FileResult], split: str, image_size: int, grouped: bool) -> Split:
    rs = [r for r in results if r.entry.split == split]
    images = np.stack([r.array for r in rs]) if rs else np.zeros((0, image_size, image_size, 3), np.uint8)
    groups = np.array([r.entry.group for r in rs], dtype=str) if grouped else None
    labels = np.array([r.entry.label for r in rs], dtype=np.int64)
    return Split(images, labels, [r.entry.rel for r in rs], groups)


def _save_cache(path: Path, data: DecodedData) -> None:
    """Atomic: write a temp file in the same folder, then os.replace; racing writers write identical bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "notes": data.notes,
        "warnings": data.warnings,
        "fingerprint": data.fingerprint,
        "image_size": data.image_size,
        "loader_version": LOADER_VERSION,
    }
    arrays = {}
    for name, split in (("train", data.train), ("test", data.test)):
        arrays[f"{name}_images"] = split.images
        arrays[f"{name}_labels"] = split.labels
        arrays[f"{name}_paths"] = np.array(split.paths, dtype=str)
        if split.groups is not None:  # absent for folder data (caches written before groups stay valid)
            arrays[f"{name}_groups"] = np.asarray(split.groups, dtype=str)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load_cache(path: Path, root: str, fp: str, image_size: int) -> DecodedData:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        splits = {}
        for s in SPLITS:
            images, labels, paths = z[f"{s}_images"], z[f"{s}_labels"], [str(p) for p in z[f"{s}_paths"]]
            groups = z[f"{s}_groups"] if f"{s}_groups" in z.files else None
            consistent = len(images) == len(labels) == len(paths)
            if groups is not None:
                consistent = consistent and groups.shape == (len(paths),)
            if images.shape[1:] != (image_size, image_size, 3) or not consistent:
                raise ValueError(f"inconsistent arrays for split {s}")
            splits[s] = Split(images, labels.astype(np.int64), paths, groups)
    if meta.get("fingerprint") != fp or meta.get("image_size") != image_size:
        raise ValueError("cache metadata does not match its file name")
    return DecodedData(splits["train"], splits["test"], fp, root, image_size, meta["notes"], meta["warnings"])


def load_dataset(
    source: str | Path | DataSource, image_size: int, cache_dir: str | Path | None = None
) -> DecodedData:
    """Decode every image of a dataset (a folder, or a labels CSV: a path or a DataSource) once into uint8
    (N, image_size, image_size, 3) RGB arrays, cached on disk.

    Each image is converted to 8-bit RGB (see check_dataset), centre-cropped to its largest square (non-square
    images lose the ends of their long side; nothing is stretched) and resized with PIL's Lanczos filter
    (antialiased when shrinking). Images are ordered by sorted relative path within each split; a labels CSV
    with a group column also gives each split's `groups`.
    The arrays are cached in `cache_dir/decoded/<fingerprint>-<size>px-v<loader version>.npz` (default
    cache_dir: $STUDY_CACHE_DIR or ~/.cache/melanoma-ssl-study); a later call with unchanged files (and, for a
    CSV, unchanged labels, groups and splits) loads the cache without decoding. Raises DataError listing every
    problem when the dataset is unusable.
    """
    is_int = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if not is_int or image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"load_dataset: image_size must be an integer >= {MIN_IMAGE_SIZE} pixels, got {image_size!r}"
        )
    image_size = int(image_size)
    src = _as_source(source)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    res = _resolve(src)
    cache_note: list[str] = []
    # Structural problems (and a CSV's) are re-checked on every call (listings, parsing); everything decoding
    # finds is a function of the files' bytes, which the fingerprint in the cache key covers.
    if not res.listing.problems:
        fp = _fingerprint_entries(res)
        path = _cache_path(cache_dir, fp, image_size)
        if path.is_file():
            try:
                return _load_cache(path, src.path, fp, image_size)
            except Exception as e:  # noqa: BLE001 — a damaged cache is rebuilt, and the rebuild is noted
                cache_note.append(f"cache file {path} was unreadable ({type(e).__name__}: {e}); rebuilt it")
    report, results = _scan(res, image_size)
    if not report.ok:
        raise DataError(report.problems, src.path)
    return _store_decoded(report, results, res, image_size, cache_dir, cache_note)


def check_and_cache(
    source: str | Path | DataSource, image_size: int, cache_dir: str | Path | None = None
) -> CheckReport:
    """`check_dataset` and, when the data is usable, `load_dataset`'s decoded cache, from one decoding pass.

    The study driver calls this once, so that trials on this machine load arrays instead of decoding.
    """
    res = _resolve(_as_source(source))
    report, results = _scan(res, int(image_size))
    if report.ok:
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        _store_decoded(report, results, res, int(image_size), cache, [])
    return report


def _store_decoded(
    report: CheckReport,
    results: list[_FileResult],
    res: _Resolved,
    image_size: int,
    cache_dir: Path,
    cache_note: list[str],
) -> DecodedData:
    """The DecodedData of a clean scan, written to the cache (a failed write is noted, not raised)."""
    data = DecodedData(
        train=_split_from(results, "train", image_size, res.has_groups),
        test=_split_from(results, "test", image_size, res.has_groups),
        fingerprint=report.fingerprint,
        root=res.source.path,
        image_size=image_size,
        notes=list(report.conversions),
        warnings=report.warnings,
    )
    path = _cache_path(cache_dir, data.fingerprint, image_size)
    try:
        _save_cache(path, data)
        # Notes about this call's cache handling are not properties of the data: added after saving.
        data.notes[:0] = cache_note
    except OSError as e:
        data.notes.append(
            f"could not write cache {path} ({type(e).__name__}: {e}); set STUDY_CACHE_DIR to a writable "
            "folder"
        )
    return data


# ----------------------------------------------------------------------------------------------------------
# Splits

_STREAM_VAL_SPLIT = 0x5EED_0001  # distinct generator streams, so a seed's val split and label subset differ
_STREAM_LABEL_SUBSET = 0x5EED_0002


def _check_labels(labels: np.ndarray, fn: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{fn}: labels must be a 1-D integer array, got dtype {labels.dtype} shape {labels.shape}"
        )
    return labels


def _check_seed(seed: Any, fn: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{fn}: seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _group_strata(labels: np.ndarray, groups: Any, fn: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes int64 (N,): each image's group, 0..G-1 in sorted group-id order; sizes int64 (G,): images per
    group; group_labels (G,): the largest label in each group, its stratum)."""
    g = np.asarray(groups)
    if g.ndim != 1 or len(g) != len(labels):
        raise ValueError(
            f"{fn}: groups must be a 1-D array with one group id per label ({len(labels)}), got shape {g.shape}"
        )
    try:
        _, codes = np.unique(g, return_inverse=True)
    except TypeError as e:
        raise ValueError(f"{fn}: group ids must be comparable (strings or integers), got {e}") from None
    codes = codes.reshape(-1).astype(np.int64)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    sizes = np.bincount(codes, minlength=n_groups).astype(np.int64)
    group_labels = np.full(n_groups, labels.min() if len(labels) else 0, dtype=labels.dtype)
    np.maximum.at(group_labels, codes, labels)
    return codes, sizes, group_labels


def _closest_prefix(sizes: np.ndarray, target: float, lo: int, hi: int) -> int:
    """k in [lo, hi] whose prefix sum sizes[:k].sum() is closest to target; ties to the smaller k. For fixed
    sizes, k never decreases as target grows (so prefixes of one order nest)."""
    cum = np.concatenate([[0], np.cumsum(sizes)])
    ks = np.arange(lo, hi + 1)
    return int(ks[np.argmin(np.abs(cum[ks] - target))])


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train_idx, val_idx), each int64 sorted, disjoint, together covering 0..N-1.

    labels: int (N,). Without groups: per class with n_c images, round(val_fraction * n_c) go to validation,
    at least 1 when n_c >= 2 and at most n_c - 1 (each class keeps a training image).
    With groups (N,) (group ids, e.g. lesion ids): whole groups go to validation, so no group is in both.
    Each group's stratum is its largest label (a group with a malignant image counts as malignant); per
    stratum with n_c images in g_c groups, the groups are shuffled and the shortest-distance prefix to
    val_fraction * n_c images is taken, at least 1 and at most g_c - 1 groups when g_c >= 2 (none when 1).
    Deterministic for a seed; different seeds differ.
    """
    labels = _check_labels(labels, "stratified_split")
    seed = _check_seed(seed, "stratified_split")
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"stratified_split: val_fraction must be in (0, 1), got {val_fraction!r}")
    rng = np.random.default_rng([seed, _STREAM_VAL_SPLIT])
    if groups is not None:
        codes, sizes, group_labels = _group_strata(labels, groups, "stratified_split")
        val_groups = []
        for c in np.unique(group_labels):
            order = rng.permutation(np.flatnonzero(group_labels == c))
            n_g = len(order)
            lo, hi = (1, n_g - 1) if n_g >= 2 else (0, 0)
            target = _round_half_up(val_fraction * sizes[order].sum())
            val_groups.append(order[: _closest_prefix(sizes[order], target, lo, hi)])
        chosen = np.concatenate(val_groups) if val_groups else np.zeros(0, np.int64)
        val_idx = np.flatnonzero(np.isin(codes, chosen)).astype(np.int64)
        train_idx = np.flatnonzero(~np.isin(codes, chosen)).astype(np.int64)
        return train_idx, val_idx
    val = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = _round_half_up(val_fraction * len(idx))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        else:
            n_val = 0
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels), dtype=np.int64), val_idx)
    return train_idx, val_idx


def label_subset(
    labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """Sorted int64 indices of a stratified `fraction` of the labelled set (label-efficiency studies).

    labels: int (N,). Without groups: per class, max(1, round(fraction * n_c)) images are kept.
    With groups (N,): whole groups are kept; per stratum (a group's largest label) the groups are shuffled
    once per seed and the prefix whose image count is closest to max(1, round(fraction * n_c)) is kept (at
    least one group). Either way, for one seed the subsets nest: the subset at a smaller fraction is
    contained in the one at a larger fraction. fraction = 1 returns every index.
    """
    labels = _check_labels(labels, "label_subset")
    seed = _check_seed(seed, "label_subset")
    if not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_subset: fraction must be in (0, 1], got {fraction!r}")
    rng = np.random.default_rng([seed, _STREAM_LABEL_SUBSET])
    if groups is not None:
        codes, sizes, group_labels = _group_strata(labels, groups, "label_subset")
        kept = []
        for c in np.unique(group_labels):
            order = rng.permutation(np.flatnonzero(group_labels == c))
            target = max(1, _round_half_up(fraction * sizes[order].sum()))
            kept.append(order[: _closest_prefix(sizes[order], target, 1, len(order))])
        chosen = np.concatenate(kept) if kept else np.zeros(0, np.int64)
        return np.flatnonzero(np.isin(codes, chosen)).astype(np.int64)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx), max(1, _round_half_up(fraction * len(idx))))
        keep.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, np.int64)

"""Labels-CSV datasets (`study.data.labels_csv` through `study.data`): columns, labels, groups, splits, the
checks' lines, the fingerprint, and equality with the folder layout."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from study.data import (
    DataError,
    DataSource,
    check_and_cache,
    check_dataset,
    fingerprint,
    label_subset,
    load_dataset,
    stratified_split,
)
from study.data.labels_csv import read_labels_csv
from study.data.labels_table import TEST_FRACTION, hashed_test_split


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _image(path: Path, seed: int, mode: str = "RGB") -> Path:
    """A 32 px image with its own coarse random pattern (no two are near-duplicates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    im = Image.fromarray(np.kron(blocks, np.ones((4, 4, 1), np.uint8)))
    im.convert(mode).save(path)
    return path


def _lines_naming(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if name in line]


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    """labels.csv + images/ with 12 images (ids without extension), a split column, 2 per class and split
    at least: ok as it is."""
    images = tmp_path / "images"
    rows = []
    for i in range(12):
        ext = ".png" if i % 3 == 0 else ".jpg"
        _image(images / f"ISIC_{i:07d}{ext}", i)
        rows.append([f"ISIC_{i:07d}", i % 2, "test" if i >= 8 else "train"])
    return _write_csv(tmp_path / "labels.csv", ["image_name", "target", "split"], rows)


# ---------------------------------------------------------------------------------------------- the folder's twin


def test_csv_copy_of_a_folder_dataset_gives_the_same_images_labels_and_splits(
    tiny_dataset: Path, tmp_path: Path, cache_dir: Path
) -> None:
    folder = load_dataset(tiny_dataset, 24, cache_dir=cache_dir)
    rows = []
    for split in ("test", "train"):  # row order does not matter
        for path in sorted(getattr(folder, split).paths, reverse=True):
            rows.append([path, int(path.split("/")[1] == "malignant"), split])
    table = _write_csv(tmp_path / "meta" / "labels.csv", ["Image_ID", "TARGET", "Split"], rows)
    source = DataSource(table, images=str(tiny_dataset))  # an absolute images folder

    report = check_dataset(source)
    assert report.ok and report.problems == [] and report.warnings == [], report.format()
    assert report.counts == check_dataset(tiny_dataset).counts
    assert report.source["columns"] == {
        "image": "image_id",
        "label": "target",
        "group": None,
        "split": "split",
    }
    from_csv = load_dataset(source, 24, cache_dir=cache_dir)
    for split in ("train", "test"):
        a, b = getattr(folder, split), getattr(from_csv, split)
        assert a.paths == b.paths
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.images, b.images)
        assert a.groups is None and b.groups is None
    assert from_csv.root == str(table) and from_csv.notes == folder.notes
    # Labels are part of a CSV's fingerprint, so its cache entry is its own.
    assert from_csv.fingerprint == report.fingerprint == fingerprint(source) != folder.fingerprint
    assert len([p for p in (cache_dir / "decoded").iterdir() if p.is_dir()]) == 2


def test_paths_and_data_sources_are_accepted_everywhere(small_csv: Path, cache_dir: Path) -> None:
    for given in (small_csv, str(small_csv), DataSource(small_csv)):
        assert check_dataset(given).ok
        assert fingerprint(given) == fingerprint(small_csv)
    report = check_and_cache(small_csv, 16, cache_dir)
    assert report.ok
    d = load_dataset(DataSource(str(small_csv)), 16, cache_dir=cache_dir)
    assert d.fingerprint == report.fingerprint and len(d.train) == 8 and len(d.test) == 4
    with pytest.raises(TypeError, match="DataSource"):
        check_dataset(42)  # type: ignore[arg-type]


def test_data_source_normalises_its_fields() -> None:
    s = DataSource(Path("a/labels.csv"), Path("imgs"), ["mel", "bcc"])
    assert s == DataSource("a/labels.csv", "imgs", ("mel", "bcc")) and hash(s) == hash(
        DataSource("a/labels.csv", "imgs", ("mel", "bcc"))
    )
    assert DataSource("x.csv", malignant="mel").malignant == ("mel",)  # one class, not ('m', 'e', 'l')
    assert DataSource("x.CSV").is_csv and not DataSource("folder").is_csv
    with pytest.raises(AttributeError):
        s.path = "other"  # type: ignore[misc]


def test_csv_options_with_a_folder_are_a_problem(tiny_dataset: Path) -> None:
    report = check_dataset(DataSource(tiny_dataset, malignant=("mel",)))
    (line,) = _lines_naming(report.problems, "apply only to a labels CSV")
    assert "malignant" in line and not report.ok


# ---------------------------------------------------------------------------------------------- resolution


def test_ids_resolve_to_any_image_extension_under_the_default_images_folder(small_csv: Path) -> None:
    table = read_labels_csv(small_csv)
    assert table.images == small_csv.parent / "images" and not table.problems
    rels = {r.rel for r in table.rows}
    assert "ISIC_0000000.png" in rels and "ISIC_0000001.jpg" in rels
    (small_csv.parent / "images" / "ISIC_0000001.jpg").rename(
        small_csv.parent / "images" / "ISIC_0000001.JPG"
    )
    assert "ISIC_0000001.JPG" in {r.rel for r in read_labels_csv(small_csv).rows}


def test_images_default_to_the_csv_folder_and_relative_images_to_the_csvs_folder(tmp_path: Path) -> None:
    for i in range(2):
        _image(tmp_path / "pics" / f"a{i}.jpg", i)
    csv_path = _write_csv(tmp_path / "labels.csv", ["image", "target"], [["pics/a0.jpg", 0], ["pics/a1", 1]])
    assert read_labels_csv(csv_path).images == tmp_path  # no images/ folder: the CSV's own
    assert [r.rel for r in read_labels_csv(csv_path).rows] == ["pics/a0.jpg", "pics/a1.jpg"]
    table = read_labels_csv(csv_path, images="pics")
    assert table.images == tmp_path / "pics"
    (line,) = [p for p in table.problems if "a0.jpg" in p]
    assert "labels.csv line 2" in line and "no image file pics/a0.jpg" in line
    missing = read_labels_csv(csv_path, images="nowhere")
    assert any("images folder does not exist" in p for p in missing.problems) and missing.fatal


def test_unmatched_columns_list_the_columns_found_and_the_accepted_names(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "labels.csv", ["file", "Class"], [["a.jpg", "mel"]])
    report = check_dataset(path)
    assert not report.ok
    (image,) = _lines_naming(report.problems, "no image column")
    assert "'file', 'Class'" in image and "image_id" in image and "isic_id" in image
    (label,) = _lines_naming(report.problems, "no label column")
    assert "target" in label and "benign_malignant" in label and "dx" in label
    with pytest.raises(DataError, match="no image column"):
        fingerprint(path)
    with pytest.raises(DataError, match="no image column"):
        load_dataset(path, 16, cache_dir=tmp_path / "cache")
    two = _write_csv(tmp_path / "two.csv", ["image", "isic_id", "target"], [["a", "a", 0]])
    assert any("could both name the image" in p for p in check_dataset(two).problems)


def test_a_diagnosis_column_needs_the_malignant_classes(tmp_path: Path, cache_dir: Path) -> None:
    rows = []
    for i, dx in enumerate(["mel", "nv", "nv", "bkl", "mel", "nv", "nv", "mel"]):
        _image(tmp_path / "images" / f"ISIC_{i}.jpg", i)
        rows.append([f"L{i}", f"ISIC_{i}", dx, "test" if i >= 5 else "train"])
    path = _write_csv(tmp_path / "HAM.csv", ["lesion_id", "image_id", "dx", "split"], rows)
    report = check_dataset(path)
    (line,) = report.problems
    assert "bkl 1, mel 3, nv 4" in line and "no malignant classes" in line and "--malignant mel" in line
    assert "data_malignant" in line

    ok = check_dataset(DataSource(path, malignant=("MEL",)))  # any capitalisation
    assert ok.ok, ok.problems
    assert ok.counts == {"train": {"benign": 3, "malignant": 2}, "test": {"benign": 2, "malignant": 1}}
    # What each class became is shown, the ones counted as benign included.
    assert "diagnosis classes: mel (3) -> malignant; bkl (1), nv (4) -> benign" in ok.format()
    assert ok.source["classes"] == {"bkl": [1, "benign"], "mel": [3, "malignant"], "nv": [4, "benign"]}
    d = load_dataset(DataSource(path, malignant=("mel",)), 16, cache_dir=cache_dir)
    assert list(d.train.groups) == ["L0", "L1", "L2", "L3", "L4"]

    typo = check_dataset(DataSource(path, malignant=("mel", "melanoma")))
    (line,) = typo.problems
    assert "'melanoma' does not occur in column dx" in line and "nv 4" in line
    target = _write_csv(tmp_path / "t.csv", ["image_id", "target"], [["ISIC_0", 1]])
    assert any(
        "no diagnosis column" in p for p in check_dataset(DataSource(target, malignant=("mel",))).problems
    )


def test_isic_2020_style_columns(tmp_path: Path) -> None:
    """image_name, patient_id, diagnosis, benign_malignant, target: target is the label, cross-checked."""
    rows = []
    for i in range(10):
        _image(tmp_path / "train" / f"ISIC_{i:07d}.jpg", i)
        mal = int(i in (2, 6, 7, 11))
        bm = "malignant" if mal else "benign"
        rows.append([f"ISIC_{i:07d}", f"IP_{i // 2}", "melanoma" if mal else "nevus", bm, mal])
    rows[3][3] = "malignant"  # conflicts with target 0
    path = _write_csv(
        tmp_path / "train.csv", ["image_name", "patient_id", "diagnosis", "benign_malignant", "target"], rows
    )
    report = check_dataset(DataSource(path, images="train"))
    (line,) = _lines_naming(report.problems, "line 5")
    assert "conflicting labels" in line and "target 0 but benign_malignant malignant" in line
    assert report.source["columns"]["group"] == "patient_id" and report.source["columns"]["label"] == "target"
    assert "hashed by patient_id" in report.source["split"]


# ---------------------------------------------------------------------------------------------- row problems


def test_each_bad_row_gets_one_line_naming_its_csv_line(small_csv: Path) -> None:
    folder = small_csv.parent
    shutil.copy(
        folder / "images" / "ISIC_0000001.jpg", folder / "images" / "ISIC_0000001.png"
    )  # ambiguous id
    _image(folder / "images" / "stray.jpg", 99)
    rows = list(csv.reader(open(small_csv, encoding="utf-8")))
    rows += [
        ["ISIC_9999999", "0", "train"],  # line 14: no image
        ["", "1", "train"],  # 15: empty image cell
        [
            "ISIC_0000002",
            "2",
            "train",
        ],  # 16: label value... but also repeats line 4 — the label is checked first
        ["ISIC_0000004", "1", "validation"],  # 17: split value
        ["ISIC_0000002", "1", "train"],  # 18: conflicting labels with line 4 (label 0)
        ["ISIC_0000004.jpg", "0", "train"],  # 19: repeats line 6 (same file, label, split): warning
        ["ISIC_0000005", "1", "train", "extra"],  # 20: too many fields
        ["ISIC_0000006", "", "train"],  # 21: empty label
    ]
    with open(small_csv, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    report = check_dataset(small_csv)
    expected = {
        "labels.csv line 3:": "ambiguous",
        "labels.csv line 14:": "no image file ISIC_9999999.jpg or ISIC_9999999.jpeg or ISIC_9999999.png",
        "labels.csv line 15:": "empty image_name cell",
        "labels.csv line 16:": "target '2' is not 0 or 1",
        "labels.csv line 17:": "split 'validation' is not train or test",
        "labels.csv line 18:": "conflicting labels for one image",
        "labels.csv line 20:": "4 fields but the header has 3",
        "labels.csv line 21:": "empty target cell",
    }
    for where, says in expected.items():
        (line,) = _lines_naming(report.problems, where)
        assert says in line, line
    assert len(report.problems) == len(expected), report.problems
    (repeat,) = _lines_naming(report.warnings, "labels.csv line 19:")
    assert "repeats image ISIC_0000004.jpg of line 6" in repeat
    (stray,) = _lines_naming(report.warnings, "stray.jpg")
    assert "1 image file(s) have no row in labels.csv" in stray


def test_many_rows_of_one_kind_are_summarised(tmp_path: Path) -> None:
    rows = [[f"missing_{i}", 0] for i in range(25)]
    report = check_dataset(_write_csv(tmp_path / "labels.csv", ["image", "target"], rows))
    missing = [p for p in report.problems if p.startswith("labels.csv line ") and "no image file" in p]
    assert len(missing) == 10 and len(report.problems) == 11
    (summary,) = _lines_naming(report.problems, "15 more row(s) with the same problem")
    assert "lines 12, 13" in summary


def test_csv_format_problems(tmp_path: Path) -> None:
    semi = tmp_path / "semi.csv"
    semi.write_text("image;target\na.jpg;0\n")
    assert "separated by ';'" in check_dataset(semi).problems[0]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image,target\ncaf\xe9.jpg,0\n".encode("latin-1"))
    (line,) = check_dataset(latin).problems
    assert "latin.csv line 2: not UTF-8" in line
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert "empty" in check_dataset(empty).problems[0]
    assert "does not exist" in check_dataset(tmp_path / "none.csv").problems[0]
    with pytest.raises(DataError, match="does not exist"):
        fingerprint(tmp_path / "none.csv")


def test_line_numbers_count_quoted_newlines_and_blank_lines(tmp_path: Path) -> None:
    _image(tmp_path / "a.jpg", 0)
    path = tmp_path / "labels.csv"
    path.write_text('image,target,note\n\na.jpg,0,"two\nlines"\nb.jpg,1,x\n')
    (line,) = check_dataset(path).problems[:1]
    assert line.startswith("labels.csv line 5:") and "b.jpg" in line


def test_a_split_without_a_class_is_a_problem(small_csv: Path) -> None:
    rows = list(csv.reader(open(small_csv, encoding="utf-8")))
    rows = [r for r in rows if not (r[2] == "test" and r[1] == "1")]
    with open(small_csv, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    report = check_dataset(small_csv)
    (line,) = _lines_naming(report.problems, "the test split has no malignant images")
    assert "column split" in line


# ---------------------------------------------------------------------------------------------- image checks


def test_the_image_checks_apply_to_csv_images(small_csv: Path) -> None:
    images = small_csv.parent / "images"
    raw = (images / "ISIC_0000001.jpg").read_bytes()
    (images / "ISIC_0000001.jpg").write_bytes(raw[: len(raw) // 2])  # truncated, line 3
    _image(images / "ISIC_0000002.jpg", 2, mode="L")  # grayscale, line 4
    shutil.copy(images / "ISIC_0000004.jpg", images / "ISIC_0000010.jpg")  # line 12 (test) == line 6 (train)
    report = check_dataset(small_csv)
    (cut,) = _lines_naming(report.problems, "ISIC_0000001.jpg")
    assert cut.startswith("ISIC_0000001.jpg (labels.csv line 3): corrupt or truncated")
    (leak,) = _lines_naming(report.problems, "train/test leakage")
    assert "ISIC_0000010.jpg (labels.csv line 12)" in leak and "ISIC_0000004.jpg (labels.csv line 6)" in leak
    (gray,) = _lines_naming(report.warnings, "ISIC_0000002.jpg")
    assert "grayscale" in gray and "labels.csv line 4" in gray and gray in report.conversions
    assert report.size_stats["n_images"] == 11


# ---------------------------------------------------------------------------------------------- fingerprint


def test_fingerprint_covers_labels_groups_and_splits_but_not_other_columns(
    tmp_path: Path, cache_dir: Path
) -> None:
    for i in range(8):
        _image(tmp_path / "images" / f"im{i}.jpg", i)

    def fp(rows: list[list[object]], header=("image", "lesion_id", "target", "split")) -> str:
        return fingerprint(_write_csv(tmp_path / "labels.csv", list(header), rows))

    rows = [[f"im{i}", f"L{i // 2}", i % 2, "test" if i >= 6 else "train"] for i in range(8)]
    base = fp(rows)
    assert fp(rows[::-1]) == base  # row order
    assert (
        fp([r + ["a note"] for r in rows], header=("image", "lesion_id", "target", "split", "notes")) == base
    )
    assert fp([[r[0] + ".jpg", *r[1:]] for r in rows]) == base  # an id or its file name: the same image
    relabelled = [r[:] for r in rows]
    relabelled[0][2] = 1
    regrouped = [r[:] for r in rows]
    regrouped[0][1] = "L9"
    moved = [r[:] for r in rows]
    moved[5][3] = "test"
    changed = {
        fp(relabelled),
        fp(regrouped),
        fp(moved),
        fp([r[:1] + r[2:] for r in rows], ("image", "target", "split")),
    }
    assert base not in changed and len(changed) == 4

    d1 = load_dataset(tmp_path / "labels.csv", 16, cache_dir=cache_dir)  # the last CSV written: no groups
    fp(relabelled)
    d2 = load_dataset(tmp_path / "labels.csv", 16, cache_dir=cache_dir)
    assert d1.fingerprint != d2.fingerprint and d1.train.groups is None
    assert not np.array_equal(d1.train.labels, d2.train.labels)
    np.testing.assert_array_equal(d2.train.groups, [f"L{i // 2}" for i in range(6)])


# ---------------------------------------------------------------------------------------------- splits


def test_hashed_test_split_is_fixed_forever() -> None:
    """Pinned: changing the hash would move images between train and test of every existing study."""
    assert [i for i in range(40) if hashed_test_split(f"ISIC_{i:07d}")] == [
        6,
        7,
        11,
        13,
        14,
        18,
        20,
        22,
        31,
        33,
    ]
    share = np.mean([hashed_test_split(f"lesion-{i}") for i in range(5000)])
    assert abs(share - TEST_FRACTION) < 0.02
    assert hashed_test_split("ISIC_0000006", 0.2) and not hashed_test_split("ISIC_0000006", 0.1)


def test_groups_crossing_train_and_test_are_a_problem(tmp_path: Path) -> None:
    rows = []
    for i in range(8):
        _image(tmp_path / "images" / f"im{i}.jpg", i)
        rows.append(
            [f"im{i}", f"L{i // 2}", i % 2, "test" if i >= 5 else "train"]
        )  # L2 = im4 (train), im5 (test)
    rows[0][1] = ""  # no lesion id: its own group
    path = _write_csv(tmp_path / "labels.csv", ["image", "lesion_id", "target", "split"], rows)
    report = check_dataset(path)
    (line,) = report.problems
    assert line.startswith(
        "labels.csv lines 6, 7: lesion_id 'L2' has images in train (line 6) and test (line 7)"
    )
    assert "leakage" in line and "one split" in line
    (empty,) = _lines_naming(report.warnings, "empty lesion_id")
    assert "lines 2" in empty and "its own group" in empty


def _lesion_dataset(root: Path, n_lesions: int = 60) -> Path:
    """A labels CSV where each of n_lesions lesions has 1-6 images (about 1/3 of lesions malignant), no split
    column (hashed by lesion)."""
    rng = np.random.default_rng(5)
    rows, k = [], 0
    for lesion in range(n_lesions):
        malignant = int(rng.uniform() < 0.35)
        for _ in range(int(rng.integers(1, 7))):
            _image(root / "images" / f"img_{k:04d}.png", 1000 + k)
            rows.append([f"img_{k:04d}", f"lesion_{lesion:03d}", "malignant" if malignant else "benign"])
            k += 1
    return _write_csv(root / "labels.csv", ["isic_id", "lesion_id", "benign_malignant"], rows)


def test_lesion_grouped_splits_never_split_a_lesion(tmp_path: Path, cache_dir: Path) -> None:
    path = _lesion_dataset(tmp_path)
    report = check_and_cache(path, 16, cache_dir)
    assert report.ok, report.problems
    assert report.source["n_groups"] == 60 and "hashed by lesion_id" in report.source["split"]
    d = load_dataset(path, 16, cache_dir=cache_dir)  # from the cache: groups saved and loaded
    assert d.train.groups.dtype.kind == "U" and len(d.train.groups) == len(d.train)
    assert not set(d.train.groups) & set(d.test.groups)  # the hashed test split keeps lesions whole
    n = len(d.train) + len(d.test)
    assert 0.08 < len(d.test) / n < 0.35

    labels, groups = d.train.labels, d.train.groups
    for seed in range(5):
        train, val = stratified_split(labels, 0.25, seed, groups=groups)
        np.testing.assert_array_equal(np.union1d(train, val), np.arange(len(labels)))
        assert not set(groups[train]) & set(groups[val])
        assert abs(len(val) / len(labels) - 0.25) < 0.08
        # stratified by lesion: the validation share of malignant images is close to the training set's
        assert abs(labels[val].mean() - labels.mean()) < 0.12
        previous = np.zeros(0, np.int64)
        for frac in (0.1, 0.3, 0.6, 1.0):
            sub = label_subset(labels[train], frac, seed, groups=groups[train])
            assert np.isin(previous, sub).all()  # nested across fractions
            kept = set(groups[train][sub])
            assert np.isin(groups[train], list(kept)).sum() == len(sub)  # whole lesions only
            assert set(labels[train][sub]) == {0, 1}
            previous = sub
        np.testing.assert_array_equal(previous, np.arange(len(train)))


def test_near_duplicates_within_one_lesion_are_expected_not_warned(tmp_path: Path) -> None:
    rows = []
    for i in range(8):
        _image(tmp_path / "images" / f"im{i}.png", i)
        rows.append([f"im{i}", f"L{i}", i % 2, "test" if i >= 6 else "train"])
    with Image.open(tmp_path / "images" / "im0.png") as im:
        im.resize((40, 40), Image.Resampling.BICUBIC).save(tmp_path / "images" / "im0b.png")  # another photo
    header = ["image", "lesion_id", "target", "split"]
    same = check_dataset(_write_csv(tmp_path / "labels.csv", header, rows + [["im0b", "L0", 0, "train"]]))
    assert same.ok and same.duplicates["near"] and same.warnings == [], same.warnings
    other = check_dataset(_write_csv(tmp_path / "labels.csv", header, rows + [["im0b", "L9", 0, "train"]]))
    (line,) = other.warnings
    assert "im0b.png (labels.csv line 10)" in line and "same label" in line

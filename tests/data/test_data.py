"""Folder datasets: loading, cache, fingerprint, splits, and check_dataset on planted bad files."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from study.data import (
    CheckReport,
    DataError,
    check_and_cache,
    check_dataset,
    checks,
    duplicates,
    fingerprint,
    images,
    label_subset,
    load_dataset,
    stratified_split,
)
from study.data import cache as decode_cache


def _jpgs(root: Path, split: str, cls: str) -> list[Path]:
    return sorted((root / split / cls).glob("*.jpg"))


def _png16_rgb(arr: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one): arr uint16 (H, W, 3)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _lines_naming(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if name in line]


def _entries(cache_dir: Path) -> list[Path]:
    """The decode cache's entry folders (not their lock files, nor hidden temporary folders)."""
    folder = cache_dir / "decoded"
    return (
        sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if folder.exists()
        else []
    )


# ---------------------------------------------------------------------------------------------- loading


def test_load_synthetic_dataset(tiny_dataset: Path, tiny_counts: dict, cache_dir: Path) -> None:
    d = load_dataset(tiny_dataset, 24, cache_dir=cache_dir)
    assert d.image_size == 24 and d.root == str(tiny_dataset)
    for split in ("train", "test"):
        n = sum(tiny_counts[split].values())
        s = getattr(d, split)
        assert s.images.shape == (n, 24, 24, 3) and s.images.dtype == np.uint8
        assert s.labels.dtype == np.int64 and s.labels.shape == (n,)
        assert s.paths == sorted(s.paths) and len(s) == n
        for path, label in zip(s.paths, s.labels):
            assert path.split("/")[0] == split
            assert path.split("/")[1] == ("benign", "malignant")[label]
            assert (tiny_dataset / path).is_file()
        assert s.labels.sum() == tiny_counts[split]["malignant"]
    assert d.notes == [] and d.fingerprint == fingerprint(tiny_dataset)


def test_loaded_pixels_match_the_files(tiny_dataset: Path, cache_dir: Path) -> None:
    d = load_dataset(tiny_dataset, 32, cache_dir=cache_dir)  # native size: only the decode, no resampling
    with Image.open(tiny_dataset / d.test.paths[3]) as im:
        np.testing.assert_array_equal(d.test.images[3], np.asarray(im.convert("RGB")))


def test_capitalised_folders_and_other_extensions(
    tiny_dataset_copy: Path, tiny_counts: dict, cache_dir: Path
) -> None:
    root = tiny_dataset_copy
    # one .png, one .JPEG and one .Jpg per split, then capitalised folder names
    for split in ("train", "test"):
        files = _jpgs(root, split, "benign")
        with Image.open(files[0]) as im:
            im.save(files[0].with_suffix(".png"))
        files[0].unlink()
        files[1].rename(files[1].with_suffix(".JPEG"))
        files[2].rename(files[2].with_suffix(".Jpg"))
    (root / "train").rename(root / "Train")
    (root / "Train" / "benign").rename(root / "Train" / "Benign")
    (root / "test").rename(root / "Test")
    (root / "Test" / "malignant").rename(root / "Test" / "MALIGNANT")
    report = check_dataset(root)
    assert report.ok, report.format()
    assert report.counts == tiny_counts
    d = load_dataset(root, 16, cache_dir=cache_dir)
    assert len(d.train) == sum(tiny_counts["train"].values())
    assert len(d.test) == sum(tiny_counts["test"].values())
    assert any(p.startswith("Train/Benign/") and p.endswith(".png") for p in d.train.paths)
    assert all(label == 1 for p, label in zip(d.test.paths, d.test.labels) if "/MALIGNANT/" in p)


def test_cache_hit_does_not_decode(tiny_dataset: Path, cache_dir: Path, monkeypatch) -> None:
    first = load_dataset(tiny_dataset, 20, cache_dir=cache_dir)
    cached = _entries(cache_dir)
    assert len(cached) == 1 and first.fingerprint in cached[0].name and "20px" in cached[0].name

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although a cache exists")

    monkeypatch.setattr(checks, "inspect_file", no_decoding)
    second = load_dataset(tiny_dataset, 20, cache_dir=cache_dir)
    for split in ("train", "test"):
        a, b = getattr(first, split), getattr(second, split)
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.paths == b.paths and b.labels.dtype == np.int64
    assert second.fingerprint == first.fingerprint
    with pytest.raises(AssertionError, match="decoded"):
        load_dataset(tiny_dataset, 18, cache_dir=cache_dir)  # another size is another cache entry


def test_check_and_cache_fills_the_cache_in_the_same_pass(
    tiny_dataset: Path, cache_dir: Path, monkeypatch
) -> None:
    report = check_and_cache(tiny_dataset, 20, cache_dir=cache_dir)
    assert report.ok and report.to_dict() == check_dataset(tiny_dataset).to_dict()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the driver's check filled the cache")

    monkeypatch.setattr(checks, "inspect_file", no_decoding)
    loaded = load_dataset(tiny_dataset, 20, cache_dir=cache_dir)
    assert loaded.fingerprint == report.fingerprint and loaded.train.images.shape[1:] == (20, 20, 3)


def test_cache_follows_env_var(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "envcache"))
    load_dataset(tiny_dataset, 16)
    assert len(_entries(tmp_path / "envcache")) == 1


def test_damaged_cache_is_rebuilt_and_noted(tiny_dataset: Path, cache_dir: Path) -> None:
    # a copy: `first` maps the file truncated below (the cache itself never changes a file in place)
    first_images = np.array(load_dataset(tiny_dataset, 16, cache_dir=cache_dir).train.images)
    (entry,) = _entries(cache_dir)
    path = entry / "train_images.npy"
    path.write_bytes(path.read_bytes()[:-100])
    second = load_dataset(tiny_dataset, 16, cache_dir=cache_dir)
    np.testing.assert_array_equal(first_images, second.train.images)
    assert any("unreadable" in n and "rebuilt" in n for n in second.notes)
    third = load_dataset(tiny_dataset, 16, cache_dir=cache_dir)  # the rewritten cache is good again
    assert not any("rebuilt" in n for n in third.notes)


def test_concurrent_loads_share_one_cache_file(tiny_dataset: Path, cache_dir: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: load_dataset(tiny_dataset, 16, cache_dir=cache_dir), range(2))
    np.testing.assert_array_equal(a.train.images, b.train.images)
    (entry,) = _entries(cache_dir)
    # no temporary folder left: the entry and its lock file only
    assert sorted(p.name for p in (cache_dir / "decoded").iterdir()) == [entry.name, entry.name + ".lock"]


def test_load_rejects_bad_image_size(tiny_dataset: Path, cache_dir: Path) -> None:
    for bad in (8, 32.0, True):
        with pytest.raises(ValueError, match="image_size"):
            load_dataset(tiny_dataset, bad, cache_dir=cache_dir)


# ---------------------------------------------------------------------------------------------- fingerprint


def test_fingerprint_changes_with_bytes_not_with_metadata(tiny_dataset_copy: Path, tmp_path: Path) -> None:
    root = tiny_dataset_copy
    fp = fingerprint(root)
    assert len(fp) == 16 and int(fp, 16) >= 0
    target = _jpgs(root, "train", "benign")[0]
    os.utime(target, (1_000_000, 1_000_000))  # timestamps are not data
    (root / "README.md").write_text("notes")  # nor are files the loader does not read
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)  # nor is the location
    assert fingerprint(root) == fp == fingerprint(moved)

    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit, same size
    target.write_bytes(bytes(raw))
    changed = fingerprint(root)
    assert changed != fp
    target.rename(target.with_name("renamed.jpg"))
    assert fingerprint(root) not in (fp, changed)


def test_data_error_lists_problems_or_takes_a_message() -> None:
    err = DataError(["a.jpg: bad", "b.jpg: worse"], "/data")
    assert err.problems == ["a.jpg: bad", "b.jpg: worse"]
    lines = str(err).splitlines()
    assert lines == ["dataset /data is not usable (2 problem(s)):", "  - a.jpg: bad", "  - b.jpg: worse"]
    assert isinstance(err, ValueError)
    msg = DataError("dataset x is not usable:\n  - one")
    assert msg.problems == ["dataset x is not usable:\n  - one"] and str(msg) == msg.problems[0]


def test_fingerprint_of_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        fingerprint(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------- splits

labels_strategy = st.lists(st.integers(0, 1), min_size=2, max_size=200).map(lambda x: np.array(x, np.int64))


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, frac=st.floats(0.05, 0.95), seed=st.integers(0, 2**32 - 1))
def test_stratified_split_properties(labels: np.ndarray, frac: float, seed: int) -> None:
    train, val = stratified_split(labels, frac, seed)
    assert train.dtype == val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(len(labels)))
    for c in (0, 1):
        n_c = int((labels == c).sum())
        n_val = int((labels[val] == c).sum())
        if n_c >= 2:
            expected = min(max(int(np.floor(frac * n_c + 0.5)), 1), n_c - 1)
            assert n_val == expected
        else:
            assert n_val == 0
    again = stratified_split(labels, frac, seed)
    np.testing.assert_array_equal(again[1], val)


def test_stratified_split_depends_on_seed() -> None:
    labels = np.array([0] * 70 + [1] * 30)
    vals = {tuple(stratified_split(labels, 0.2, s)[1]) for s in range(10)}
    assert len(vals) == 10


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 2])
def test_stratified_split_rejects_bad_fraction(frac: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(np.array([0, 1, 0, 1]), frac, 0)


def test_split_rejects_bad_labels_and_seed() -> None:
    with pytest.raises(ValueError, match="labels"):
        stratified_split(np.array([0.0, 1.0]), 0.5, 0)
    with pytest.raises(ValueError, match="seed"):
        label_subset(np.array([0, 1]), 0.5, -3)


@settings(max_examples=40, deadline=None)
@given(labels=labels_strategy, seed=st.integers(0, 2**32 - 1))
def test_label_subset_stratified_and_nested(labels: np.ndarray, seed: int) -> None:
    previous = np.zeros(0, np.int64)
    for frac in (0.1, 0.25, 0.5, 1.0):
        idx = label_subset(labels, frac, seed)
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
        for c in np.unique(labels):
            n_c = int((labels == c).sum())
            assert int((labels[idx] == c).sum()) == min(n_c, max(1, int(np.floor(frac * n_c + 0.5))))
        assert np.isin(previous, idx).all()  # smaller label budgets are subsets of larger ones
        previous = idx
    np.testing.assert_array_equal(previous, np.arange(len(labels)))
    np.testing.assert_array_equal(label_subset(labels, 0.5, seed), label_subset(labels, 0.5, seed))


def test_label_subset_depends_on_seed_and_rejects_bad_fraction() -> None:
    labels = np.array([0] * 60 + [1] * 40)
    assert len({tuple(label_subset(labels, 0.3, s)) for s in range(8)}) == 8
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            label_subset(labels, bad, 0)


def test_splits_without_groups_are_unchanged() -> None:
    """Pinned to the values before groups existed: groups=None must stay bit-identical."""
    import hashlib

    labels = (np.random.default_rng(123).uniform(size=150) < 0.3).astype(np.int64)
    h = hashlib.sha256()
    for seed in (0, 1, 7, 2**31):
        for frac in (0.1, 0.2, 0.5):
            train, val = stratified_split(labels, frac, seed)
            np.testing.assert_array_equal(val, stratified_split(labels, frac, seed, groups=None)[1])
            h.update(val.tobytes())
        for frac in (0.05, 0.3, 1.0):
            h.update(label_subset(labels, frac, seed, groups=None).tobytes())
    assert h.hexdigest()[:16] == "d1a7318d3ea5b152"


grouped_strategy = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 30)), min_size=2, max_size=150)


def _grouped(pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([p[0] for p in pairs], np.int64)
    groups = np.array([f"lesion-{p[1]}" for p in pairs])
    return labels, groups


@settings(max_examples=60, deadline=None)
@given(pairs=grouped_strategy, frac=st.floats(0.05, 0.95), seed=st.integers(0, 2**32 - 1))
def test_grouped_stratified_split_keeps_groups_whole(pairs, frac: float, seed: int) -> None:
    labels, groups = _grouped(pairs)
    train, val = stratified_split(labels, frac, seed, groups=groups)
    assert train.dtype == val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(len(labels)))
    assert not set(groups[train]) & set(groups[val])
    # per stratum (a group's largest label): at least one validation group and one training group when the
    # stratum has two or more groups
    stratum = {g: labels[groups == g].max() for g in set(groups)}
    for c in (0, 1):
        gs = [g for g, s in stratum.items() if s == c]
        in_val = {g for g in gs if g in set(groups[val])}
        if len(gs) >= 2:
            assert 1 <= len(in_val) <= len(gs) - 1
        else:
            assert not in_val
    again = stratified_split(labels, frac, seed, groups=list(groups))  # any sequence of ids
    np.testing.assert_array_equal(again[1], val)


@settings(max_examples=40, deadline=None)
@given(pairs=grouped_strategy, seed=st.integers(0, 2**32 - 1))
def test_grouped_label_subset_nested_and_whole(pairs, seed: int) -> None:
    labels, groups = _grouped(pairs)
    previous = np.zeros(0, np.int64)
    for frac in (0.1, 0.25, 0.5, 1.0):
        idx = label_subset(labels, frac, seed, groups=groups)
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
        assert np.isin(groups, groups[idx]).sum() == len(idx)  # whole groups
        stratum = {g: labels[groups == g].max() for g in set(groups)}
        assert {stratum[g] for g in set(groups[idx])} == set(stratum.values())  # each stratum keeps a group
        assert np.isin(previous, idx).all()
        previous = idx
    np.testing.assert_array_equal(previous, np.arange(len(labels)))


def test_grouped_splits_depend_on_seed_and_reach_the_target_roughly() -> None:
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 7, 80)
    groups = np.repeat(np.arange(80), sizes)
    labels = np.repeat((rng.uniform(size=80) < 0.3).astype(np.int64), sizes)
    vals = [stratified_split(labels, 0.2, s, groups=groups)[1] for s in range(6)]
    assert len({tuple(v) for v in vals}) == 6
    for val in vals:
        assert abs(len(val) / len(labels) - 0.2) < 0.03
        assert abs(labels[val].mean() - labels.mean()) < 0.08
    sub = label_subset(labels, 0.3, 0, groups=groups)
    assert abs(len(sub) / len(labels) - 0.3) < 0.03
    for bad in (groups[:-1], groups.reshape(-1, 1)):
        with pytest.raises(ValueError, match="one group id per label"):
            stratified_split(labels, 0.2, 0, groups=bad)


def test_split_groups_round_trip_through_the_cache(tiny_dataset: Path, cache_dir: Path) -> None:
    d = load_dataset(tiny_dataset, 16, cache_dir=cache_dir)
    assert d.train.groups is None and d.test.groups is None  # folder data: no groups (old caches stay valid)
    d.train.groups = np.array([f"g{i // 3}" for i in range(len(d.train))])
    path = decode_cache._cache_path(cache_dir, d.fingerprint, 16)
    decode_cache._save_cache(path, d)
    again = decode_cache._load_cache(path, str(tiny_dataset), d.fingerprint, 16)
    np.testing.assert_array_equal(again.train.groups, d.train.groups)
    assert again.test.groups is None


# ---------------------------------------------------------------------------------------------- check


def test_clean_dataset_is_ok(tiny_dataset: Path, tiny_counts: dict) -> None:
    report = check_dataset(tiny_dataset)
    assert report.ok and report.problems == [] and report.warnings == []
    assert report.counts == tiny_counts
    assert report.size_stats["width"] == {"min": 32, "median": 32.0, "max": 32}
    assert report.ignored == ["synth.json"]
    json.dumps(report.to_dict())
    text = report.format()
    assert "OK" in text and all(str(n) in text for n in tiny_counts["train"].values())


@pytest.fixture
def planted(tiny_dataset_copy: Path) -> tuple[Path, dict[str, str]]:
    """A copy with one bad file or folder of each kind; returns (root, {kind: name that must be reported})."""
    root = tiny_dataset_copy
    tb, tm = root / "train" / "benign", root / "train" / "malignant"
    good = _jpgs(root, "train", "benign")[0]
    raw = good.read_bytes()
    (tb / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (tb / "empty.jpg").write_bytes(b"")
    (tm / "notes.jpg").write_text("these are my notes, not a picture\n")
    (root / "train" / "melanoma").mkdir()
    shutil.copy(_jpgs(root, "train", "malignant")[0], root / "train" / "melanoma" / "m.jpg")
    for f in _jpgs(root, "test", "malignant"):
        f.unlink()  # an empty class folder
    shutil.copy(good, root / "test" / "benign" / "leaked.jpg")
    with Image.open(_jpgs(root, "train", "benign")[1]) as im:
        buf = io.BytesIO()
        im.resize((36, 36), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=80)
    (root / "test" / "benign" / "nearcopy.jpg").write_bytes(buf.getvalue())
    _plant_convertible(root)
    problems = {
        "truncated": "train/benign/truncated.jpg",
        "zero-byte": "train/benign/empty.jpg",
        "text": "train/malignant/notes.jpg",
        "unexpected class": "train/melanoma/",
        "empty class": "test/malignant/",
        "leak": "test/benign/leaked.jpg",
    }
    return root, problems


def _plant_convertible(root: Path) -> dict[str, str]:
    """Usable but unusual files (warnings only); returns {kind: relative path}."""
    tb, tm = root / "train" / "benign", root / "train" / "malignant"
    rng = np.random.default_rng(0)
    # Each image gets its own coarse random pattern, so they are not near-duplicates of each other.
    pattern = lambda: np.kron(rng.uniform(size=(4, 4)), np.ones((8, 8)))  # noqa: E731  (32, 32) in [0, 1)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :16, 3] = 255  # left half opaque, right half fully transparent
    Image.fromarray(rgba, "RGBA").save(tb / "rgba.png")
    Image.fromarray((60 + 120 * pattern()).astype(np.uint8), "L").save(tm / "gray.jpg")
    deep = (30000 + 35535 * pattern()).astype(np.uint16)
    deep[0, 0] = 65535
    Image.fromarray(deep).save(tb / "deep16.png")
    half = (0x8000 * pattern()).astype(np.uint16)  # at most half of the 16-bit range
    (tm / "deep48.png").write_bytes(_png16_rgb(np.repeat(half[..., None], 3, axis=2)))
    Image.fromarray((255 * pattern()).astype(np.uint8)).convert("RGB").convert("P").save(tb / "palette.png")
    blocks = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(np.kron(blocks, np.ones((5, 5, 1), np.uint8))).save(tm / "tiny.jpg")  # 20 x 20 px
    return {
        "rgba": "train/benign/rgba.png",
        "gray": "train/malignant/gray.jpg",
        "16-bit gray": "train/benign/deep16.png",
        "16-bit rgb": "train/malignant/deep48.png",
        "palette": "train/benign/palette.png",
        "small": "train/malignant/tiny.jpg",
    }


def test_planted_problems_each_get_their_own_line(planted, tiny_counts: dict) -> None:
    root, expected = planted
    report = check_dataset(root)
    assert not report.ok
    for kind, name in expected.items():
        hits = _lines_naming(report.problems, name)
        assert len(hits) == 1, (kind, name, report.problems)
    assert "truncated" in _lines_naming(report.problems, "truncated.jpg")[0]
    assert "0 bytes" in _lines_naming(report.problems, "empty.jpg")[0]
    text_line = _lines_naming(report.problems, "notes.jpg")[0]
    assert "not an image" in text_line and "a text file, 34 bytes" in text_line
    assert "these are my notes" not in report.format()  # a file's content is never printed
    melanoma = _lines_naming(report.problems, "train/melanoma/")[0]
    assert "benign/" in melanoma and "malignant/" in melanoma  # names the allowed folders
    leak = _lines_naming(report.problems, "leaked.jpg")[0]
    assert "leakage" in leak and "train/benign/" in leak
    # the near-duplicate is a warning naming both files, not a problem
    near = _lines_naming(report.warnings, "test/benign/nearcopy.jpg")
    near = _lines_naming(near, "near-duplicate in train")
    assert len(near) == 1 and "train/benign/" in near[0]
    assert not _lines_naming(report.problems, "nearcopy.jpg")
    assert report.duplicates["exact"] and any(
        "nearcopy.jpg" in (p["a"] + p["b"]) for p in report.duplicates["near"]
    )
    # files in the unexpected folder are not counted under any label
    assert report.counts["test"]["malignant"] == 0
    planted_in_train_malignant = 4  # notes.jpg, gray.jpg, deep48.png, tiny.jpg
    expected = tiny_counts["train"]["malignant"] + planted_in_train_malignant
    assert report.counts["train"]["malignant"] == expected

    formatted = report.format()
    assert "NOT USABLE" in formatted
    assert all(p in formatted for p in report.problems)
    json.dumps(report.to_dict())


def test_planted_problems_make_load_raise_listing_them(planted, cache_dir: Path) -> None:
    root, expected = planted
    with pytest.raises(DataError) as info:
        load_dataset(root, 16, cache_dir=cache_dir)
    err = info.value
    assert err.problems == check_dataset(root).problems
    message = str(err)
    for name in expected.values():
        assert name in message
    assert message.count("\n  - ") == len(err.problems)
    assert not _entries(cache_dir)


def test_conversions_are_warnings_and_applied(tiny_dataset_copy: Path, cache_dir: Path) -> None:
    root = tiny_dataset_copy
    planted = _plant_convertible(root)
    report = check_dataset(root)
    assert report.ok, report.problems
    for kind, rel in planted.items():
        hits = _lines_naming(report.warnings, rel)
        assert len(hits) == 1, (kind, report.warnings)
        assert hits[0] in report.conversions
    assert "composited on black" in _lines_naming(report.warnings, "rgba.png")[0]
    assert "scaled 0..65535" in _lines_naming(report.warnings, "deep16.png")[0]
    assert "upsampled" in _lines_naming(report.warnings, "tiny.jpg")[0]

    d = load_dataset(root, 32, cache_dir=cache_dir)
    assert sorted(d.notes) == sorted(report.conversions)
    img = {p: im for p, im in zip(d.train.paths, d.train.images)}
    rgba = img[planted["rgba"]].astype(int)
    assert np.abs(rgba[:, :12] - 200).max() <= 2 and rgba[:, 20:].max() <= 2  # transparent -> black
    deep16 = img[planted["16-bit gray"]].astype(int)
    assert deep16.max() == 255 and deep16.min() >= 110  # scaled onto 8 bits, not clipped to white
    with Image.open(root / planted["16-bit gray"]) as im:
        expected = np.rint(np.asarray(im) / 257.0)
    np.testing.assert_array_equal(deep16[..., 0], expected)
    assert img[planted["16-bit rgb"]].max() <= 128 and img[planted["16-bit rgb"]].std() > 10
    gray = img[planted["gray"]]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert img[planted["small"]].shape == (32, 32, 3)


def test_non_square_exif_and_mismatched_format(tiny_dataset_copy: Path, cache_dir: Path) -> None:
    root = tiny_dataset_copy
    wide = np.zeros((30, 60, 3), np.uint8)
    wide[:, 15:45] = 255  # a white centre square between black side bands
    Image.fromarray(wide).save(root / "train" / "benign" / "wide.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    tall = np.zeros((40, 40, 3), np.uint8)
    tall[:, :5] = 255
    Image.fromarray(tall).save(root / "train" / "benign" / "rotated.jpg", exif=exif, quality=95)
    png_as_jpg = root / "train" / "malignant" / "really_png.jpg"
    Image.fromarray(np.full((32, 32, 3), 50, np.uint8)).save(png_as_jpg, "PNG")
    report = check_dataset(root)
    assert report.ok
    assert any("non-square" in w and "centre-cropped" in w for w in report.warnings)
    assert "EXIF orientation 6" in _lines_naming(report.warnings, "rotated.jpg")[0]
    assert "PNG data" in _lines_naming(report.warnings, "really_png.jpg")[0]
    d = load_dataset(root, 30, cache_dir=cache_dir)
    img = dict(zip(d.train.paths, d.train.images))
    assert img["train/benign/wide.png"].min() >= 250  # centre crop: the black bands are gone, not squashed in
    rotated = img["train/benign/rotated.jpg"].mean(axis=2)
    assert rotated[:3].mean() > 200 and rotated[:, :3].mean() < 120  # the white band moved to the top


def test_missing_test_split(tiny_dataset_copy: Path, cache_dir: Path) -> None:
    shutil.rmtree(tiny_dataset_copy / "test")
    report = check_dataset(tiny_dataset_copy)
    assert not report.ok
    (line,) = _lines_naming(report.problems, "test/")
    assert "missing split" in line
    with pytest.raises(DataError, match="missing split"):
        load_dataset(tiny_dataset_copy, 16, cache_dir=cache_dir)


def test_missing_root(tmp_path: Path) -> None:
    report = check_dataset(tmp_path / "nowhere")
    assert not report.ok and "does not exist" in report.problems[0]


def test_conflicting_labels_and_same_label_duplicates(tiny_dataset_copy: Path) -> None:
    root = tiny_dataset_copy
    src = _jpgs(root, "train", "benign")[0]
    shutil.copy(src, root / "train" / "malignant" / "conflict.jpg")
    shutil.copy(_jpgs(root, "train", "benign")[1], root / "train" / "benign" / "again.jpg")
    report = check_dataset(root)
    (conflict,) = _lines_naming(report.problems, "conflict.jpg")
    assert "conflicting labels" in conflict and src.name in conflict
    (again,) = _lines_naming(report.warnings, "again.jpg")
    assert "byte-identical" in again and not _lines_naming(report.problems, "again.jpg")


def test_stray_files_at_wrong_levels(tiny_dataset_copy: Path) -> None:
    root = tiny_dataset_copy
    (root / "README.md").write_text("about")
    (root / ".DS_Store").write_bytes(b"\0")
    shutil.copy(_jpgs(root, "train", "benign")[0], root / "train" / "unlabelled.jpg")
    shutil.copy(_jpgs(root, "train", "benign")[0], root / "orphan.png")
    (root / "train" / "benign" / "scan.tif").write_bytes(b"II*\0")
    (root / "validation").mkdir()
    report = check_dataset(root)
    assert "README.md" in report.ignored and ".DS_Store" in report.ignored
    assert "no class label" in _lines_naming(report.problems, "train/unlabelled.jpg")[0]
    assert "no class label" in _lines_naming(report.problems, "orphan.png")[0]
    assert "validation/" in "".join(report.problems)
    (tif,) = _lines_naming(report.warnings, "scan.tif")
    assert "ignored" in tif


def test_symlink_loops_do_not_hang(tiny_dataset_copy: Path) -> None:
    root = tiny_dataset_copy
    (root / "train" / "benign" / "loop").symlink_to(root / "train")
    (root / "train" / "benign" / "self.jpg").symlink_to(root / "train" / "benign" / "self.jpg")
    report = check_dataset(root)
    assert "nested folder" in _lines_naming(report.problems, "train/benign/loop/")[0]
    assert "symlink" in _lines_naming(report.problems, "self.jpg")[0]


def test_decompression_bomb_is_a_problem_not_a_crash(tiny_dataset_copy: Path, monkeypatch) -> None:
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tiny_dataset_copy / "train" / "benign" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # 32x32 images pass, 64x64 exceeds twice the limit
    report = check_dataset(tiny_dataset_copy)
    (line,) = _lines_naming(report.problems, "huge.png")
    assert "decompression-bomb" in line and "downscale" in line
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # between the limit and twice it: PIL only warns
    (line,) = _lines_naming(check_dataset(tiny_dataset_copy).problems, "huge.png")
    assert "decompression-bomb" in line


NOBODY = 65534


def run_as_nobody(fn):
    """`fn()`'s JSON-able result, computed in a forked child that runs as user nobody when this process is
    root (root reads files whatever their mode, so a permission test must drop privileges to mean anything).
    Modules are already loaded in the parent, so the child needs no access to the interpreter's files; what
    `fn` reads must be readable by nobody (use `world_readable_copy`)."""
    import select
    import traceback

    if os.geteuid() != 0:
        return fn()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run, send the result, never return into pytest
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            payload = {"result": fn()}
        except BaseException:  # noqa: BLE001 — reported to the parent
            payload = {"error": traceback.format_exc()}
        with os.fdopen(write_end, "w") as f:
            json.dump(payload, f)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        # Bounded: a child forked from a process with threads could deadlock on a lock held at the fork.
        if not select.select([f], [], [], 120)[0]:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the child running as nobody did not answer within 120 s")
        text = f.read()
    os.waitpid(pid, 0)
    assert text, "the child running as nobody died without an answer"
    payload = json.loads(text)
    assert "error" not in payload, payload.get("error")
    return payload["result"]


def world_readable_copy(src: Path) -> Path:
    """A copy of the dataset `src` under /tmp that user nobody can traverse and read (pytest's tmp_path is
    private to root). The caller removes it."""
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="study-nobody-"))
    top.chmod(0o755)
    dst = top / "data"
    shutil.copytree(src, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def test_unreadable_file(tiny_dataset: Path) -> None:
    """Also as root: the check runs as user nobody then (tests here run as root, for whom mode 000 does
    nothing)."""
    root = world_readable_copy(tiny_dataset)
    try:
        target = _jpgs(root, "train", "benign")[0]
        check_dataset(root)  # loads every module the check needs before the child drops privileges
        target.chmod(0)
        problems = run_as_nobody(lambda: check_dataset(root).problems)
        (line,) = _lines_naming(problems, target.name)
        assert "permission denied" in line and "chmod a+r" in line
    finally:
        shutil.rmtree(root.parent)


def test_check_report_round_trips_as_json(planted) -> None:
    root, _ = planted
    d = check_dataset(root).to_dict()
    assert CheckReport(**json.loads(json.dumps(d))).to_dict() == d


# ---------------------------------------------------------------------------------------------- hardening (issue 16)


def _pattern_png(path: Path, seed: int) -> Path:
    """A coarse random 32 px RGB image (not a near-duplicate of anything else)."""
    rng = np.random.default_rng(seed)
    pattern = np.kron(rng.uniform(size=(4, 4)), np.ones((8, 8)))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((255 * pattern).astype(np.uint8)).convert("RGB").save(path)
    return path


def test_files_that_are_not_images_are_described_never_quoted(
    tiny_dataset_copy: Path, tmp_path: Path
) -> None:
    root = tiny_dataset_copy
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN=hunter2 do not print me\n")
    (root / "train" / "benign" / "linked.png").symlink_to(secret)
    (root / "train" / "benign" / "blob.jpg").write_bytes(b"\x00\x01\x02 hunter2 \xff\xfe" * 10)
    (root / "train" / "malignant" / "cut-utf8.jpg").write_bytes(("a" + "é" * 256).encode())
    report = check_dataset(root)
    (linked,) = _lines_naming(report.problems, "train/benign/linked.png")
    assert "not an image PIL can read (a text file, 30 bytes)" in linked
    (blob,) = _lines_naming(report.problems, "blob.jpg")
    assert "(140 bytes in no image format PIL reads)" in blob
    (cut,) = _lines_naming(report.problems, "cut-utf8.jpg")
    assert "a text file, 513 bytes" in cut  # a character cut by the 512-byte window is still text
    text = report.format(all_warnings=True) + json.dumps(report.to_dict())
    assert "hunter2" not in text and "TOKEN" not in text


def test_symlinks_leaving_the_dataset_are_warned_about_and_inside_ones_are_not(
    tiny_dataset_copy: Path, tmp_path: Path
) -> None:
    root = tiny_dataset_copy
    store = root / ".store"  # inside the dataset folder (hidden, so not data itself)
    inside = _pattern_png(store / "inside.png", 1)
    (root / "train" / "benign" / "alias.png").symlink_to(inside)
    report = check_dataset(root)
    assert report.ok and not _lines_naming(report.warnings, "symlink"), report.warnings

    outside = _pattern_png(tmp_path / "elsewhere" / "lesion.png", 2)
    (root / "train" / "benign" / "linked.png").symlink_to(outside)
    report = check_dataset(root)
    assert report.ok  # a link farm into a shared image store is a real layout: a warning, not a problem
    (line,) = _lines_naming(report.warnings, "train/benign/linked.png")
    assert line.startswith("train/benign/linked.png: symlink to a file outside the dataset folder")
    assert str(outside) in line and "read as data" in line and "remove the link" in line

    # A symlinked class folder outside: one line for the folder link, not one per file inside it.
    moved = tmp_path / "elsewhere" / "malignant"
    shutil.move(root / "test" / "malignant", moved)
    (root / "test" / "malignant").symlink_to(moved, target_is_directory=True)
    report = check_dataset(root)
    assert report.ok
    (line,) = [w for w in report.warnings if "symlink" in w]
    assert line.startswith("2 symlinks lead outside the dataset folder and are read as data: ")
    assert f"test/malignant -> {moved}" in line and "train/benign/linked.png ->" in line
    assert "test/malignant/test_" not in line


@pytest.mark.parametrize("where", ["train/benign", "test"])
def test_a_layout_folder_that_is_a_file_is_called_a_file_not_missing(tiny_dataset_copy: Path, where) -> None:
    root = tiny_dataset_copy
    shutil.rmtree(root / where)
    (root / where).write_text("not a folder")
    problems = check_dataset(root).problems
    (line,) = _lines_naming(problems, where)
    assert line.startswith(f"{where}: is a file, not a folder; move it away and create ")
    assert not _lines_naming(problems, "missing")


def test_a_file_beside_the_real_folder_does_not_hide_it(tiny_dataset_copy: Path, tiny_counts: dict) -> None:
    root = tiny_dataset_copy
    (root / "train" / "benign").rename(root / "train" / "Benign")
    (root / "train" / "benign").write_text("stray")
    report = check_dataset(root)
    assert report.counts["train"]["benign"] == tiny_counts["train"]["benign"]
    (line,) = report.problems
    assert line.startswith("train/benign: is a file, not a folder")


def test_a_class_with_one_training_image_is_a_problem(tiny_dataset_copy: Path, cache_dir: Path) -> None:
    """stratified_split gives such a class no validation image (nothing to split): refused before training."""
    root = tiny_dataset_copy
    labels = np.array([0, 0, 0, 1])
    assert 3 not in stratified_split(labels, 0.2, 0)[1]  # why: the only image of class 1 stays in training
    keep, *rest = _jpgs(root, "train", "malignant")
    for f in rest:
        f.unlink()
    report = check_dataset(root)
    (line,) = _lines_naming(report.problems, "train/malignant/")
    assert line.startswith(f"train/malignant/: only 1 malignant image in train (train/malignant/{keep.name})")
    assert "validation would hold no malignant image" in line and "add malignant images" in line
    with pytest.raises(DataError, match="only 1 malignant image in train"):
        load_dataset(root, 16, cache_dir=cache_dir)
    _pattern_png(root / "train" / "malignant" / "second.png", 3)
    assert check_dataset(root).ok  # two are enough: one for training, one for validation


def _labels_csv(root: Path, rows: list[tuple[str, int, str, str]], group: bool) -> Path:
    """labels.csv (image, target, split[, lesion_id]) with a distinct image per row under root/images."""
    lines = ["image_name,target,split" + (",lesion_id" if group else "")]
    for i, (name, target, split, lesion) in enumerate(rows):
        _pattern_png(root / "images" / f"{name}.png", 100 + i)
        lines.append(f"{name},{target},{split}" + (f",{lesion}" if group else ""))
    path = root / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_class_with_one_training_image_or_lesion_is_a_problem(tmp_path: Path) -> None:
    test_rows = [("t0", 0, "test", "T0"), ("t1", 1, "test", "T1")]
    one = [("a", 0, "train", "A"), ("b", 0, "train", "B"), ("c", 1, "train", "C"), *test_rows]
    (line,) = check_dataset(_labels_csv(tmp_path / "plain", one, group=False)).problems
    assert line.startswith("labels.csv: train has only 1 malignant image (c.png (labels.csv line 4))")
    assert "validation would hold no malignant image" in line and "add malignant rows to train" in line

    # Two malignant images of one lesion: grouped splits keep the lesion whole, so still impossible.
    lesion = [*one, ("d", 1, "train", "C")]
    (line,) = check_dataset(_labels_csv(tmp_path / "grouped", lesion, group=True)).problems
    assert line.startswith("labels.csv: every malignant image in train (2) has lesion_id C;")
    assert "add malignant images of other lesion_ids to train" in line
    ok = [*lesion, ("e", 1, "train", "E")]
    report = check_dataset(_labels_csv(tmp_path / "ok", ok, group=True))
    assert report.ok, report.problems


def test_csv_with_few_benign_only_lesions_warns_that_validation_can_lack_benign(tmp_path: Path) -> None:
    rows = [
        ("b0", 0, "train", "B"),  # the one benign-only lesion: never in validation
        ("m0", 1, "train", "M"),  # a mixed lesion: its benign image is validation's only source of benign
        ("m1", 0, "train", "M"),
        ("p0", 1, "train", "P"),  # malignant-only lesions
        ("q0", 1, "train", "Q"),
        ("t0", 0, "test", "T0"),
        ("t1", 1, "test", "T1"),
    ]
    report = check_dataset(_labels_csv(tmp_path, rows, group=True))
    assert report.ok, report.problems
    (line,) = _lines_naming(report.warnings, "with only benign images")
    assert line.startswith("labels.csv: 1 lesion_id in train (B) with only benign images;")
    assert "for some seeds there can be none" in line and "add benign-only lesion_ids to train" in line
    # The warning is true: some seeds' validation split holds no benign image.
    labels = np.array([r[1] for r in rows[:5]])
    groups = np.array([r[3] for r in rows[:5]])
    no_benign = [s for s in range(20) if not (labels[stratified_split(labels, 0.2, s, groups)[1]] == 0).any()]
    assert no_benign
    # A second benign-only lesion in train: validation always gets one, no warning.
    rows.append(("b1", 0, "train", "B1"))
    report = check_dataset(_labels_csv(tmp_path / "more", rows, group=True))
    assert report.ok and not _lines_naming(report.warnings, "with only benign images"), report.warnings


def test_near_duplicate_pairs_are_counted_exactly(tiny_dataset_copy: Path) -> None:
    """Re-encoded, resized copies of distinct originals: one near-duplicate pair each, of every kind."""
    root = tiny_dataset_copy

    def near_copy(src: Path, dst: Path) -> None:
        with Image.open(src) as im:
            buf = io.BytesIO()
            im.resize((36, 36), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=80)
        dst.write_bytes(buf.getvalue())

    benign, malignant = _jpgs(root, "train", "benign"), _jpgs(root, "train", "malignant")
    near_copy(benign[0], root / "train" / "benign" / "same0.jpg")  # same split and label
    near_copy(benign[1], root / "train" / "benign" / "same1.jpg")
    near_copy(malignant[0], root / "train" / "malignant" / "same2.jpg")
    near_copy(benign[2], root / "train" / "malignant" / "conflict.jpg")  # across classes
    near_copy(benign[3], root / "test" / "benign" / "leak0.jpg")  # across train/test
    near_copy(malignant[1], root / "test" / "malignant" / "leak1.jpg")
    report = check_dataset(root)
    pairs = {frozenset((p["a"], p["b"])) for p in report.duplicates["near"]}
    expected = {
        frozenset((benign[0].relative_to(root).as_posix(), "train/benign/same0.jpg")),
        frozenset((benign[1].relative_to(root).as_posix(), "train/benign/same1.jpg")),
        frozenset((malignant[0].relative_to(root).as_posix(), "train/malignant/same2.jpg")),
        frozenset((benign[2].relative_to(root).as_posix(), "train/malignant/conflict.jpg")),
        frozenset((benign[3].relative_to(root).as_posix(), "test/benign/leak0.jpg")),
        frozenset((malignant[1].relative_to(root).as_posix(), "test/malignant/leak1.jpg")),
    }
    assert pairs == expected and len(report.duplicates["near"]) == 6
    assert "6 near-duplicate pair(s)" in report.format()
    assert _lines_naming(report.warnings, "3 near-duplicate pair(s) within a split with the same label")
    assert _lines_naming(report.warnings, "1 near-duplicate pair(s) within a split carry different labels")
    assert _lines_naming(report.warnings, "2 test image(s) have a near-duplicate in train")


def test_hamming_pairs_are_exact_across_chunks() -> None:
    """Over 1,024 hashes the pair search runs in chunks: every planted pair is found once, at its distance,
    also where a pair straddles a chunk boundary, and nothing else (random 256-bit hashes lie ~128 apart)."""
    rng = np.random.default_rng(0)
    n, words = 1100, images.NEAR_DUPLICATE_HASH_SIZE**2 // 64
    assert 2**22 // (n * words) < n  # really chunked
    hashes = rng.integers(0, 2**63, (n, words), dtype=np.uint64) | rng.integers(
        0, 2, (n, words), dtype=np.uint64
    ) << np.uint64(63)
    planted = {(3, 700): 0, (950, 960): 17, (5, 1099): 38, (900, 1000): 1}
    for (i, j), d in planted.items():
        bits = np.unpackbits(hashes[i].view(np.uint8))
        bits[rng.choice(bits.size, d, replace=False)] ^= 1
        hashes[j] = np.packbits(bits).view(np.uint64)
    hashes[20] = hashes[21] ^ np.array([2**39 - 1, 0, 0, 0], dtype=np.uint64)  # 39 bits apart: not a pair
    found = duplicates._hamming_pairs(hashes, images.NEAR_DUPLICATE_MAX_DISTANCE)
    assert found == sorted((i, j, d) for (i, j), d in planted.items())

"""The decode cache's on-disk entries (study.data.decoded_store): written whole or not at all, opened
memory-mapped and read-only, and refused (then rebuilt by load_dataset) when truncated, edited or planted."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from study.data import cache as decode_cache
from study.data import decoded_store, load_dataset
from study.io.files import UnsafeFileError


def _arrays(seed: int = 0, n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "images": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
        "labels": rng.integers(0, 2, n).astype(np.int64),
        "paths": np.array([f"train/benign/{seed}-{i}.jpg" for i in range(n)]),
        "empty": np.zeros((0, 8, 8, 3), np.uint8),
    }


def _is_mapped(a: np.ndarray) -> bool:
    """`a` is a view of a memory map (no data of its own), and read-only."""
    return isinstance(a.base, np.memmap) and not a.flags.owndata and not a.flags.writeable


@pytest.mark.parametrize("by_folder", [True, False], ids=["folder-descriptor", "by-path"])
def test_an_entry_round_trips_memory_mapped(tmp_path: Path, monkeypatch, by_folder: bool) -> None:
    """Also as on an OS without folder descriptors (Windows), where files are opened by path."""
    monkeypatch.setattr(decoded_store, "_BY_FOLDER", by_folder and decoded_store._BY_FOLDER)
    entry, arrays = tmp_path / "entry", _arrays()
    decoded_store.write_entry(entry, arrays, {"note": "x"})
    got, meta = decoded_store.open_entry(entry)
    assert meta == {"note": "x"} and set(got) == set(arrays)
    for name, a in arrays.items():
        np.testing.assert_array_equal(got[name], a)
        assert got[name].dtype == a.dtype and got[name].shape == a.shape
    assert _is_mapped(got["images"]) and _is_mapped(got["labels"])
    with pytest.raises(ValueError, match="read-only"):
        got["images"][0, 0, 0, 0] = 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # no temporary folder left
    (tmp_path / "linked").symlink_to(entry)
    with pytest.raises(UnsafeFileError, match="not a folder"):
        decoded_store.open_entry(tmp_path / "linked")


def test_load_dataset_gives_memory_mapped_images_decoded_or_cached(
    tiny_dataset: Path, cache_dir: Path
) -> None:
    decoded = load_dataset(tiny_dataset, 16, cache_dir=cache_dir)  # decoded, written, then opened mapped
    cached = load_dataset(tiny_dataset, 16, cache_dir=cache_dir)
    for d in (decoded, cached):
        assert _is_mapped(d.train.images) and _is_mapped(d.test.images)
        assert d.train.labels.dtype == np.int64 and isinstance(d.train.paths[0], str)
    np.testing.assert_array_equal(decoded.train.images, cached.train.images)
    assert decoded.notes == cached.notes and decoded.warnings == cached.warnings


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _header_says_int16(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"'descr': '|u1'", b"'descr': '<i2'", 1))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-5]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\0"), "were written"),
        (_flip_last_byte, "CRC-32"),
        (_header_says_int16, "the meta says"),
        (lambda p: p.write_bytes(b"PK\x03\x04 not an npy file"), "not a .npy"),
        (lambda p: p.unlink(), "missing"),
    ],
    ids=["truncated", "extended", "edited", "header", "not-npy", "deleted"],
)
def test_a_damaged_array_file_is_refused_by_name(tmp_path: Path, damage, message: str) -> None:
    entry = tmp_path / "entry"
    decoded_store.write_entry(entry, _arrays(), {})
    damage(entry / "images.npy")
    with pytest.raises(ValueError, match=message) as info:
        decoded_store.open_entry(entry)
    assert "images.npy" in str(info.value)


def test_a_missing_or_bad_meta_is_refused(tmp_path: Path) -> None:
    entry = tmp_path / "entry"
    decoded_store.write_entry(entry, _arrays(), {})
    meta = json.loads((entry / "meta.json").read_text())
    meta["arrays"]["images"]["shape"][0] += 1  # the meta edited, not the array
    (entry / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="the meta says"):
        decoded_store.open_entry(entry)
    (entry / "meta.json").write_text(json.dumps({"arrays": {"../x": {}}}))
    with pytest.raises(ValueError, match="no valid 'arrays'"):
        decoded_store.open_entry(entry)
    (entry / "meta.json").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        decoded_store.open_entry(entry)
    with pytest.raises(FileNotFoundError):
        decoded_store.open_entry(tmp_path / "none")


def test_links_and_special_files_are_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    decoded_store.write_entry(real, _arrays(), {})
    (tmp_path / "linked").symlink_to(real)
    with pytest.raises(UnsafeFileError, match="not a folder"):
        decoded_store.open_entry(tmp_path / "linked")
    other = tmp_path / "other"
    decoded_store.write_entry(other, _arrays(), {})
    (other / "labels.npy").unlink()
    (other / "labels.npy").symlink_to(real / "labels.npy")
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        decoded_store.open_entry(other)
    (other / "labels.npy").unlink()
    os.mkfifo(other / "labels.npy")  # never opened for reading in a way that waits for a writer
    with pytest.raises(UnsafeFileError, match="not a regular file"):
        decoded_store.open_entry(other)


def test_load_dataset_rebuilds_an_edited_or_linked_entry(
    tiny_dataset: Path, cache_dir: Path, tmp_path: Path
) -> None:
    expected = np.array(load_dataset(tiny_dataset, 16, cache_dir=cache_dir).test.images)
    entry = decode_cache._cache_path(
        cache_dir, load_dataset(tiny_dataset, 16, cache_dir=cache_dir).fingerprint, 16
    )
    _flip_last_byte(entry / "test_images.npy")
    rebuilt = load_dataset(tiny_dataset, 16, cache_dir=cache_dir)
    np.testing.assert_array_equal(rebuilt.test.images, expected)
    assert any("CRC-32" in n and "rebuilt" in n for n in rebuilt.notes)
    # an entry that is a symlink to someone else's folder: never read through, replaced by a real folder
    elsewhere = tmp_path / "elsewhere"
    os.replace(entry, elsewhere)
    entry.symlink_to(elsewhere)
    again = load_dataset(tiny_dataset, 16, cache_dir=cache_dir)
    assert any("not a folder" in n and "rebuilt" in n for n in again.notes)
    assert entry.is_dir() and not entry.is_symlink() and (elsewhere / "meta.json").is_file()
    np.testing.assert_array_equal(again.test.images, expected)


def test_readers_see_one_whole_entry_while_writers_replace_it(tmp_path: Path) -> None:
    """Two writers replace the entry with different arrays over and over (without the lock load_dataset's
    writers hold): every open gives one writer's arrays whole or says the entry is gone (the old folder
    removed while it was being opened; load_dataset then opens it again under the lock), never a mixture or
    a half-written file; afterwards the entry is whole."""
    entry = tmp_path / "entry"
    versions = {seed: _arrays(seed) for seed in (1, 2)}
    decoded_store.write_entry(entry, versions[1], {"seed": 1})
    stop, errors = threading.Event(), []

    def write(seed: int) -> None:
        try:
            while not stop.is_set():
                decoded_store.write_entry(entry, versions[seed], {"seed": seed})
                stop.wait(0.002)  # room for the reader to find an entry now and then
        except Exception as exc:  # noqa: BLE001 — reported by the test below
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(seed,)) for seed in versions]
    for w in writers:
        w.start()
    seen = set()
    try:
        for _ in range(300):
            try:
                arrays, meta = decoded_store.open_entry(entry)
            except FileNotFoundError:
                continue  # between a writer's two renames
            except ValueError as exc:
                assert "is missing" in str(exc)  # a file of the replaced folder, removed meanwhile
                continue
            for name, a in versions[meta["seed"]].items():
                np.testing.assert_array_equal(arrays[name], a)
            seen.add(meta["seed"])
    finally:
        stop.set()
        for w in writers:
            w.join()
    assert not errors and seen
    arrays, meta = decoded_store.open_entry(entry)
    np.testing.assert_array_equal(arrays["images"], versions[meta["seed"]]["images"])
    assert not [p for p in tmp_path.iterdir() if p.name != "entry"]  # every temporary folder removed


def _load_in_child(root: str, cache: str, log: str) -> None:
    """A second process's `load_dataset`, noting every decoding pass it makes in `log`."""
    scan = decode_cache.scan

    def logged_scan(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return scan(*args, **kwargs)

    decode_cache.scan = logged_scan
    load_dataset(root, 16, cache_dir=cache)


def test_concurrent_processes_decode_once_and_share_the_entry(
    tiny_dataset: Path, cache_dir: Path, tmp_path: Path
):
    log = tmp_path / "decodes.log"
    fork = multiprocessing.get_context("fork")
    children = [
        fork.Process(target=_load_in_child, args=(str(tiny_dataset), str(cache_dir), str(log)))
        for _ in range(3)
    ]
    for c in children:
        c.start()
    for c in children:
        c.join(60)
    assert [c.exitcode for c in children] == [0, 0, 0]
    assert len(log.read_text().split()) == 1  # the others waited on the lock, then opened the written entry
    d = load_dataset(tiny_dataset, 16, cache_dir=cache_dir)
    assert not any("rebuilt" in n for n in d.notes) and _is_mapped(d.train.images)

"""Reading a run's files as data (issue #27): regular files only (never through a symlink, never blocking on a
FIFO), bounded in size, JSON bounded in depth (never a RecursionError), and names from a run kept inside it."""

from __future__ import annotations

import os
import threading

import pytest

from study.io import files
from study.io.files import UnsafeFileError


def test_a_regular_file_is_read(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"a": [1, 2]}')
    assert files.read_regular(path) == b'{"a": [1, 2]}'
    assert files.read_json(path) == {"a": [1, 2]}


def test_a_fifo_is_refused_at_once_instead_of_blocking(tmp_path):
    fifo = tmp_path / "tuner.pkl"
    os.mkfifo(fifo)
    outcome = []

    def read():
        try:
            files.read_regular(fifo)
        except UnsafeFileError as exc:
            outcome.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "read_regular blocked on a FIFO"
    assert outcome and "not a regular file" in outcome[0] and str(fifo) in outcome[0]


def test_a_symlink_is_not_followed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the run")
    link = tmp_path / "run-file.json"
    link.symlink_to(secret)
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        files.read_regular(link)


def test_a_file_over_the_limit_is_refused(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 101)
    with pytest.raises(UnsafeFileError, match="101 bytes, more than the 100"):
        files.read_regular(path, limit=100)


@pytest.mark.parametrize("depth", [200_000, 900, 65])
def test_deeply_nested_json_is_one_error_not_a_recursion_error(tmp_path, depth):
    """200,000 levels overflow json's own recursion; 900 parse but would overflow what reads them next."""
    path = tmp_path / "deep.json"
    path.write_text("[" * depth + "]" * depth)
    with pytest.raises(UnsafeFileError, match="nested deeper than 64 levels"):
        files.read_json(path)


def test_json_that_is_not_utf8_or_not_json_is_one_error(tmp_path):
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"name": "Müller"}'.encode("latin-1"))
    with pytest.raises(UnsafeFileError, match="not UTF-8"):
        files.read_json(latin)
    with pytest.raises(UnsafeFileError, match="is not JSON"):
        files.parse_json("{not json", "x.json")


def test_json_depth_counts_containers_only():
    assert files.json_depth(3) == 0
    assert files.json_depth({"a": [1, {"b": 2}]}) == 3
    assert files.json_depth([[]] * 1000) == 2


@pytest.mark.parametrize("name", ["0/../../victim/x.npz", "..", ".", "", "a\\b", ".hidden", "a\0b", 3])
def test_a_name_from_a_run_that_leaves_its_folder_is_refused(tmp_path, name):
    with pytest.raises(UnsafeFileError, match="not a plain file name"):
        files.child_path(tmp_path, name)


def test_a_plain_name_stays_in_its_folder(tmp_path):
    assert files.child_path(tmp_path, "rotation_seed0.npz") == tmp_path / "rotation_seed0.npz"

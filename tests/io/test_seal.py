"""Seals on the folders a trial writes and reads back (`study.io.seal`): any file added, removed, renamed or
changed, and any entry that is not a regular file, is found and named; without a key nothing is sealed or
checked, and `trust` accepts what is there."""

from __future__ import annotations

import json
import os

import pytest

from study.io.files import UnsafeFileError
from study.io.seal import SEAL, RunSeal, seal_folder, seal_problems

KEY = b"k" * 32


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "checkpoint_000001"
    (d / "finetune").mkdir(parents=True)
    (d / "trial_state.json").write_text(json.dumps({"phase": "finetune", "epoch": 3}))
    (d / "finetune" / "weights.npz").write_bytes(b"\x00\x01" * 100)
    seal_folder(d, KEY)
    return d


def test_a_sealed_folder_as_written_has_no_problem(folder):
    assert (folder / SEAL).is_file()
    assert seal_problems(folder, KEY) == []
    RunSeal(KEY).check(folder, "checkpoint x")  # no error


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda d: (d / "trial_state.json").write_text(json.dumps({"phase": "finetune", "epoch": 9})),
            "trial_state.json: changed since it was sealed",
        ),
        (
            lambda d: (d / "finetune" / "planted.npz").write_bytes(b"x"),
            "finetune/planted.npz: not in the seal",
        ),
        (lambda d: (d / "finetune" / "weights.npz").unlink(), "finetune/weights.npz: sealed but missing"),
        (
            lambda d: (d / "finetune" / "weights.npz").rename(d / "weights.npz"),
            "weights.npz: not in the seal",
        ),
        (lambda d: (d / SEAL).unlink(), f"{SEAL}: missing"),
        (lambda d: (d / SEAL).write_text("[" * 100_000), f"{SEAL}: not a seal"),
        (lambda d: os.symlink("/etc/hostname", d / "link.json"), "link.json: not a regular file"),
        (lambda d: os.mkfifo(d / "finetune" / "state.json"), "finetune/state.json: not a regular file"),
    ],
    ids=["edited", "added", "removed", "renamed", "no-seal", "deep-seal", "symlink", "fifo"],
)
def test_every_change_is_found_and_named(folder, damage, expected):
    damage(folder)
    problems = seal_problems(folder, KEY)
    assert any(p.startswith(expected) for p in problems), problems
    with pytest.raises(UnsafeFileError) as err:
        RunSeal(KEY).check(folder, "checkpoint C")
    message = str(err.value)
    assert message.startswith("checkpoint C: ") and "\n" not in message and "--trust-run-dir" in message


def test_another_key_does_not_verify(folder):
    assert all("changed" in p for p in seal_problems(folder, b"o" * 32))


def test_a_swapped_file_with_the_same_bytes_elsewhere_does_not_verify(tmp_path):
    """The MAC covers the name: two files' contents swapped is a change of both."""
    d = tmp_path / "entry"
    d.mkdir()
    (d / "a.json").write_text("1")
    (d / "b.json").write_text("2")
    seal_folder(d, KEY)
    (d / "a.json").write_text("2")
    (d / "b.json").write_text("1")
    assert len(seal_problems(d, KEY)) == 2


def test_without_a_key_nothing_is_sealed_or_checked_and_trust_accepts(folder, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.json").write_text("{}")
    RunSeal().seal(plain)
    assert not (plain / SEAL).exists()
    RunSeal().check(plain, "x")
    (folder / "trial_state.json").write_text("{}")
    RunSeal(KEY, trust=True).check(folder, "x")  # --trust-run-dir: as it stands
    with pytest.raises(UnsafeFileError):
        RunSeal(KEY).check(folder, "x")


def test_a_folder_with_a_link_is_never_sealed(tmp_path):
    d = tmp_path / "entry"
    d.mkdir()
    os.symlink("/etc/hostname", d / "x")
    with pytest.raises(UnsafeFileError, match="not a regular file"):
        seal_folder(d, KEY)
